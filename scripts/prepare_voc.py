"""Download PASCAL VOC 2012 + SBD and build the ``train_aug`` split for DeepLab.

Usage::

    python scripts/prepare_voc.py [--root data] [--skip-sbd] [--keep-archives]

Thin wrapper so the script works from a checkout without installing the
package; the logic lives in :mod:`deeplab_cli.data.prepare.voc`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeplab_cli.data.prepare.voc import main

raise SystemExit(main())

"""Prepare cityscapes for deeplab-cli; see :mod:`deeplab_cli.data.prepare.cityscapes` (`--help` for the options).

Thin wrapper so the script works from a checkout without installing the package.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeplab_cli.data.prepare.cityscapes import main

raise SystemExit(main())

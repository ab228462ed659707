"""Peak memory and time of whole-image against sliding-window inference; see deeplab_cli/tools/benchmark_slide.py.

Thin wrapper so the script works from a checkout without installing the package.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeplab_cli.tools.benchmark_slide import main

raise SystemExit(main())

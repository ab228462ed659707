"""Throughput of a DeepLab preset against torchvision's DeepLab v3 (train, train with data, inference, memory).

Usage: ``python scripts/benchmark.py model=deeplabv3_resnet101 crop=129 batch=2 out=F.json`` (``help`` lists every key).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeplab_cli.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())

"""``deeplab-prepare voc|cityscapes|ade20k``: one command that builds each dataset tree the presets read.

The preparation code lives in the package (``data/prepare/``: ``voc.py``, ``cityscapes.py``,
``ade20k.py``) so that a wheel install can use it; ``scripts/prepare_*.py`` are
wrappers for a checkout. Every argument after the dataset name goes to that dataset's own
options (``deeplab-prepare cityscapes --help``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def _commands() -> dict[str, tuple[str, Callable[..., int]]]:
    """Imported on demand: ``deeplab-prepare --help`` should not pay for every module."""
    from ..data.prepare import ade20k, cityscapes
    from ..data.prepare import voc as prepare_voc

    return {
        "voc": ("download PASCAL VOC 2012 + SBD and build train_aug (3.4 GB)", prepare_voc.main),
        "cityscapes": ("unpack and check the Cityscapes zips you downloaded (login needed)", cityscapes.main),
        "ade20k": ("download and unpack ADEChallengeData2016 (923 MB)", ade20k.main),
    }


DATASETS = ("voc", "cityscapes", "ade20k")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="deeplab-prepare",
        description="Download (VOC, ADE20K) or unpack (Cityscapes) a dataset into the layout the presets read. "
        "Options after the dataset name are the dataset's own: deeplab-prepare DATASET --help.",
    )
    parser.add_argument("dataset", choices=DATASETS, help="which dataset to prepare")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in DATASETS:
        parser.parse_args(argv[:1])  # prints help, or the one-line usage error naming the choices
        return 2
    _, run = _commands()[argv[0]]
    return run(argv[1:], prog=f"deeplab-prepare {argv[0]}")


if __name__ == "__main__":
    raise SystemExit(main())

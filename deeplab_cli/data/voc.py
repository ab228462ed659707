"""What is particular to PASCAL VOC (and the synthetic set written in its layout): where the tree is.

The layout itself (``JPEGImages/<id>.jpg``, ``<mask_dir>/<id>.png``,
``ImageSets/Segmentation/<split>.txt``) is the default :class:`~.layout.Layout`;
class names and the palette live in :mod:`.palette`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .labels import LabelMapping
from .layout import DatasetError, Layout
from .segmentation import SegmentationDataset


def resolve_voc_dir(root: str | Path) -> Path:
    """Accept ``root`` as the VOC2012 folder itself or any parent of it.

    Users point ``dataset.root`` at whatever they downloaded: ``VOC2012``,
    ``VOCdevkit`` or the folder holding ``VOCdevkit``.
    """
    root = Path(root).expanduser()
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetError(
        f"dataset.root={str(root)!r} holds no PASCAL VOC tree (looked for JPEGImages/ in {root}, "
        f"{root / 'VOC2012'} and {root / 'VOCdevkit' / 'VOC2012'}). Run "
        f"'deeplab-prepare voc --root {root}' to download and prepare VOC 2012 + SBD, "
        "or set dataset.root to the folder that contains VOC2012/."
    )


def read_split(voc_dir: Path, split: str) -> list[str]:
    """Image ids of ``ImageSets/Segmentation/<split>.txt``; a missing or empty list is a DatasetError."""
    listing = Layout(Path(voc_dir)).listing(split)
    if not listing.stems:
        _, path, reason = listing.problems[0]
        raise DatasetError(f"split list {path}: {reason.rstrip('.')}.")
    return listing.stems


def voc_dataset(
    root: str | Path, split: str, mask_dir: str = "SegmentationClass", num_classes: int = 21, **kwargs: Any
) -> SegmentationDataset:
    """A split of a VOC-layout tree (``root`` may be any parent of ``VOC2012``), as ``dataset=voc`` builds it.

    ``kwargs`` go to :class:`SegmentationDataset` (``transforms``, ``subset``, ``on_error``...).
    """
    layout = Layout(resolve_voc_dir(root), mask_dir=mask_dir)
    return SegmentationDataset(layout, split, LabelMapping(num_classes), **kwargs)

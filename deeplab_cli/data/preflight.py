"""What makes a run's numbers wrong while every file is readable: found before the first step.

Two splits that share image files make every validation number a training-set number;
a class with no labelled training pixel is never learned, and with 0/255 binary masks
(255 = ignore by default) the foreground is silently dropped and the run reports
100% mIoU. :func:`overlap_problems` and :func:`absent_class_problems` turn both into
problems the trainer refuses and ``deeplab-check-data`` reports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .check import LabelStats, Problem
from .layout import Layout
from .segmentation import SampleError, read_raw_mask

_EXAMPLES = 3
_RAW_SAMPLE = 32  # masks whose stored values are read to recognise 0/255 binary masks


def _resolved_images(layout: Layout, split: str) -> dict[str, Path]:
    """realpath -> image path of every listed image of ``split`` (links to one file count as one)."""
    return {
        os.path.realpath(layout.image_path(split, s)): layout.image_path(split, s) for s in layout.listing(split).stems
    }


def overlap_problems(layout: Layout, train: str, others: Sequence[str]) -> list[Problem]:
    """One problem per split of ``others`` that shares image files with ``train``, with the count and examples.

    Only the training split's overlaps make a number wrong (validation and test may share files:
    VOC's test list is often its val list when no test images are at hand).
    """
    files = {split: _resolved_images(layout, split) for split in dict.fromkeys([train, *others])}
    problems = []
    for a, b in ((train, other) for other in files if other != train):
        shared = sorted(set(files[a]) & set(files[b]))
        if not shared:
            continue
        examples = ", ".join(str(files[a][f]) for f in shared[:_EXAMPLES])
        flat = (
            " The image folder has no split sub-folders and no split lists: keep dataset.holdout (e.g. 0.2) so a "
            "holdout split is cut from it;"
            if layout.is_flat
            else ""
        )
        reason = (
            f"splits {a!r} ({len(files[a])} images) and {b!r} ({len(files[b])} images) share {len(shared)} "
            f"image file(s), e.g. {examples}: validation on them measures the training set.{flat} give each split "
            "its own files (dataset.image_dir with {split}, or dataset.split_list), or pass "
            "dataset.allow_overlap=true if you mean it"
        )
        problems.append(Problem("overlap", str(files[a][shared[0]]), reason))
    return problems


def looks_binary(layout: Layout, split: str, stems: Sequence[str]) -> bool:
    """Whether the masks store only 0 and 255 (the export of most annotation tools), from a sample."""
    seen: set[int] = set()
    for stem in list(stems)[:_RAW_SAMPLE]:
        try:
            values = np.unique(read_raw_mask(layout.mask_path(split, stem), colours=False))
        except SampleError:
            continue
        seen.update(int(v) for v in values)
    return 255 in seen and seen <= {0, 255}


def absent_class_problems(
    layout: Layout, split: str, stats: LabelStats, names: Sequence[str], stems: Sequence[str], num_classes: int
) -> list[Problem]:
    """A problem naming every class with no labelled pixel in ``split``'s masks (after label mapping)."""
    absent = [i for i in range(num_classes) if stats.pixels[i] == 0]
    if not absent or not stats.masks:
        return []
    listed = ", ".join(f"{i} ({names[i]})" for i in absent[:8]) + (" ..." if len(absent) > 8 else "")
    reason = (
        f"class(es) {listed} have no labelled pixel in the {stats.masks} masks of split {split!r} after label "
        f"mapping ({int(stats.pixels[-1])} pixels are ignored): they can never be learned, and a validation "
        "without them reports a score that does not measure them."
    )
    if looks_binary(layout, split, stems):
        reason += (
            " The masks store 0 and 255, and 255 means 'ignore' by default: to train 255 as the foreground, add "
            f"'dataset.label_map={{0: 0, 255: {min(1, num_classes - 1)}}}'"
            + (" (and dataset.num_classes=2)" if num_classes != 2 else "")
            + "."
        )
    else:
        reason += " Check dataset.num_classes, dataset.label_map, dataset.ignore_values and reduce_zero_label."
    reason += " To train anyway, pass dataset.allow_absent_classes=true"
    return [Problem("absent_class", str(layout.mask_folder(split)), reason)]

"""A validation split cut from a flat folder of images and masks, the layout most users have.

``images/*.jpg`` + ``masks/*.png`` with no split sub-folders and no split lists would
otherwise make the training and validation splits the same files, and every validation
number a training-set number. The holdout is deterministic (the seed), stratified by class
presence with the k-fold code of :mod:`.folds` (so a rare class lands on both sides), and
keeps groups whole (frames of one video never straddle the cut). It is recorded in the
run directory, never written into the dataset.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .folds import group_images, stratified_folds
from .layout import DatasetError


@dataclass(frozen=True)
class Holdout:
    """``fraction`` of the images (rounded to 1/k: 0.2 -> 1/5) go to validation, the rest to training."""

    fraction: float
    seed: int = 0
    group: str | None = None

    @property
    def k(self) -> int:
        return max(2, round(1 / self.fraction))


def check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 0.5:
        raise DatasetError(
            f"dataset.holdout={fraction} must lie in (0, 0.5]: the share of a flat folder's images held out for "
            "validation (0.2 keeps one in five)."
        )


def split_holdout(stems: list[str], pixels: np.ndarray, spec: Holdout) -> tuple[list[str], list[str]]:
    """(training stems, validation stems) of one folder; ``pixels`` is (images, classes), as in
    :func:`.folds.stratified_folds`. Both keep the folder's order."""
    check_fraction(spec.fraction)
    if len(stems) < 2:
        raise DatasetError(
            f"a holdout split needs at least 2 images; the folder has {len(stems)}. Add images, or give the "
            "validation images their own folder or list."
        )
    groups = group_images(stems, spec.group)
    k = min(spec.k, len(groups.keys))
    if k < 2:
        raise DatasetError(
            f"dataset.holdout_group={spec.group!r} puts all {len(stems)} images into one group, so none can be held "
            "out; use a finer regex, or null."
        )
    fold = stratified_folds(pixels, groups, k, seed=spec.seed)
    val = fold == 0
    return [s for s, v in zip(stems, val, strict=True) if not v], [s for s, v in zip(stems, val, strict=True) if v]


def fingerprint(stems: list[str]) -> str:
    """sha256 of the sorted stems: compares two holdouts without storing every name."""
    return hashlib.sha256("\n".join(sorted(stems)).encode()).hexdigest()

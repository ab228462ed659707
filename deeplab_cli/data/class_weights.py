"""Class weights for imbalanced data, from label counts taken once over the training masks.

- ``median_frequency`` (Eigen & Fergus 2015, as SegNet trains CamVid): ``freq_c`` is the
  pixels of class c over the labelled pixels of the images that contain c, and
  ``w_c = median(freq) / freq_c``.
- ``inverse_frequency``: ``w_c = 1 / (share of class c among labelled pixels)``, scaled to
  mean 1 over the classes present.
Classes that never occur in the training masks get weight 0 (they are never a target).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from .check import LabelStats
from .labels import LabelMapping
from .layout import Layout
from .segmentation import load_mask

WEIGHTINGS = ("median_frequency", "inverse_frequency")


def count_labels(
    layout: Layout, split: str, labels: LabelMapping, workers: int = 4, progress: bool = False
) -> LabelStats:
    """Per-class pixel and image counts of a split's masks after label mapping (masks only, threaded)."""
    stems = layout.listing(split).stems
    stats = LabelStats(labels.num_classes)

    def one(stem: str) -> np.ndarray:
        return labels.counts(load_mask(layout.mask_path(split, stem), labels))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for counts in tqdm(pool.map(one, stems), total=len(stems), desc="counting labels", disable=not progress):
            stats.add(counts)
    return stats


def median_frequency(stats: LabelStats) -> list[float]:
    present = stats.present_pixels > 0
    freq = np.zeros(stats.num_classes)
    freq[present] = stats.pixels[: stats.num_classes][present] / stats.present_pixels[present]
    seen = present & (freq > 0)
    if not seen.any():
        return [1.0] * stats.num_classes
    median = float(np.median(freq[seen]))
    return [median / f if ok else 0.0 for f, ok in zip(freq, seen, strict=True)]


def inverse_frequency(stats: LabelStats) -> list[float]:
    pixels = stats.pixels[: stats.num_classes].astype(np.float64)
    seen = pixels > 0
    if not seen.any():
        return [1.0] * stats.num_classes
    inverse = np.zeros(stats.num_classes)
    inverse[seen] = pixels[seen].sum() / pixels[seen]
    inverse[seen] /= inverse[seen].mean()
    return inverse.tolist()


def weights_from_stats(stats: LabelStats, method: str) -> list[float]:
    """The weights of ``method`` (one of :data:`WEIGHTINGS`)."""
    if method == "median_frequency":
        return median_frequency(stats)
    if method == "inverse_frequency":
        return inverse_frequency(stats)
    raise ValueError(f"unknown weighting {method!r}; choose one of {', '.join(WEIGHTINGS)}")


def check_explicit(weights: Sequence[float], num_classes: int) -> list[float]:
    """``loss.class_weights=[w0, ...]``: one non-negative weight per class."""
    values = [float(w) for w in weights]
    if len(values) != num_classes or min(values) < 0:
        from ..errors import ConfigError

        raise ConfigError(
            f"loss.class_weights lists {len(values)} weights (min {min(values, default=0)}) but the dataset has "
            f"{num_classes} classes; give one non-negative weight per class, or median_frequency / inverse_frequency."
        )
    return values

"""Boundary ("trimap") accuracy: mIoU restricted to narrow bands around object boundaries.

DeepLab v1-v3+ report this to show how much CRF / decoder refinement sharpens object
edges, which whole-image mIoU barely reflects. A pixel belongs to the band of width
``w`` when its Euclidean distance to the nearest ground-truth boundary is ``<= w``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch import Tensor

from ...data.palette import IGNORE_INDEX
from ..runtime.distributed import all_reduce_sum_
from .metrics import ConfusionMatrix, compute_metrics


def boundary_distance(target: np.ndarray) -> np.ndarray:
    """Distance (float32, pixels) of every pixel to the nearest ground-truth boundary pixel.

    A boundary pixel has a 4-neighbour with a different label value; 255 counts as a
    value of its own, so the edges of VOC's void bands are boundaries (both sides of an
    edge are boundary pixels, at distance 0). A map without any boundary is all ``inf``.
    """
    t = np.asarray(target)
    if t.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {t.shape}")
    boundary = np.zeros(t.shape, dtype=bool)
    vertical = t[1:, :] != t[:-1, :]
    horizontal = t[:, 1:] != t[:, :-1]
    boundary[1:, :] |= vertical
    boundary[:-1, :] |= vertical
    boundary[:, 1:] |= horizontal
    boundary[:, :-1] |= horizontal
    if not boundary.any():
        return np.full(t.shape, np.inf, dtype=np.float32)
    # EDT measures the distance to the nearest zero, so boundary pixels must be the zeros.
    return distance_transform_edt(~boundary).astype(np.float32)


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """Validate ``eval.trimap`` early so a typo fails before a long evaluation."""
    widths = tuple(widths)
    if not widths:
        raise ValueError("eval.trimap must list at least one band width (pixels), got an empty list")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, numbers.Integral) or w <= 0:
            raise ValueError(f"eval.trimap band widths must be positive integers (pixels), got {w!r}")
    return tuple(sorted({int(w) for w in widths}))


class TrimapMeter:
    """One confusion matrix per band width, filled image by image.

    The distance map is computed once per image on the CPU and shared by all widths.
    Void pixels (255) are never counted. A width whose band received no pixels has an
    all-zero matrix, for which :func:`compute_metrics` (and so :meth:`result`) gives 0.0.
    """

    def __init__(self, widths: Sequence[int], num_classes: int, device: torch.device | str = "cpu") -> None:
        self.widths = _check_widths(widths)
        self.num_classes = num_classes
        self.device = torch.device(device)
        self._meters = {w: ConfusionMatrix(num_classes, self.device) for w in self.widths}
        self.band_pixels: dict[int, int] = {w: 0 for w in self.widths}

    @property
    def matrices(self) -> dict[int, Tensor]:
        """Width -> ``C x C`` int64 matrix (rows: ground truth, columns: prediction)."""
        return {w: m.matrix for w, m in self._meters.items()}

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one image's (H, W) prediction and ground truth (any device)."""
        if pred.ndim != 2 or pred.shape != target.shape:
            raise ValueError(
                f"trimap expects one image's (H, W) prediction and target, got {tuple(pred.shape)} "
                f"and {tuple(target.shape)}"
            )
        target_np = target.detach().cpu().numpy()
        dist = torch.from_numpy(boundary_distance(target_np))
        valid = torch.from_numpy(target_np != IGNORE_INDEX)
        pred, target = pred.to(self.device), target.to(self.device)
        for w in self.widths:
            band = (dist <= w) & valid
            self.band_pixels[w] += int(band.sum())
            band = band.to(self.device)
            self._meters[w].update(pred[band], target[band])

    def result(self, class_names: Sequence[str]) -> dict[int, float]:
        """Width -> mIoU (percent) over the pixels counted in that band."""
        return {w: float(compute_metrics(m.matrix, class_names)["mIoU"]) for w, m in self._meters.items()}

    def all_reduce(self) -> None:
        """Sum every band's counts over ranks (distributed evaluation)."""
        for m in self._meters.values():
            m.all_reduce()
        pixels = torch.tensor([self.band_pixels[w] for w in self.widths], dtype=torch.int64)
        all_reduce_sum_(pixels)
        self.band_pixels = dict(zip(self.widths, (int(v) for v in pixels), strict=True))

    def reset(self) -> None:
        for m in self._meters.values():
            m.reset()
        self.band_pixels = {w: 0 for w in self.widths}

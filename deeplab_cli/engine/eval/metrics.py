"""Confusion-matrix metrics for semantic segmentation (VOC protocol)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ...data.palette import IGNORE_INDEX
from ..runtime.distributed import all_reduce_max_, all_reduce_sum_


class ConfusionMatrix:
    """Accumulates a ``C x C`` matrix (rows: ground truth, columns: prediction); 255 is ignored.

    On the CPU (``sync_free=False``) out-of-range values raise at once. On a GPU
    (``sync_free=True``, the default there) ``update`` never waits for the device:
    counts go through ``scatter_add_`` and out-of-range values are remembered on the
    device and raised when the matrix is read, once per evaluation instead of per batch.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", sync_free: bool | None = None) -> None:
        self.num_classes = num_classes
        device = torch.device(device)
        self.sync_free = device.type != "cpu" if sync_free is None else sync_free
        self._counts = torch.zeros(num_classes * num_classes + 1, dtype=torch.int64, device=device)
        self._bad = torch.full((2,), -1, dtype=torch.int64, device=device)  # worst label, worst prediction

    @property
    def matrix(self) -> Tensor:
        if self.sync_free:
            bad_label, bad_pred = (int(v) for v in self._bad.tolist())
            self._raise_if_bad(bad_label, bad_pred)
        return self._counts[:-1].view(self.num_classes, self.num_classes)

    def _raise_if_bad(self, bad_label: int, bad_pred: int) -> None:
        if bad_label >= 0:
            raise ValueError(f"label value {bad_label} is outside 0..{self.num_classes - 1} and not 255")
        if bad_pred >= 0:
            raise ValueError(f"prediction value {bad_pred} is outside 0..{self.num_classes - 1}")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of predicted and true class maps of equal shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if self.sync_free:
            self._update_on_device(pred, target)
            return
        keep = target != IGNORE_INDEX
        t, p = target[keep].long(), pred[keep].long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_classes):
            self._raise_if_bad(int(t.max()) if int(t.max()) >= self.num_classes else int(t.min()), -1)
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= self.num_classes):
            self._raise_if_bad(-1, int(p.max()) if int(p.max()) >= self.num_classes else int(p.min()))
        idx = t * self.num_classes + p
        self._counts[:-1] += torch.bincount(idx, minlength=self.num_classes**2)

    def _update_on_device(self, pred: Tensor, target: Tensor) -> None:
        """Fixed-size ops only (no boolean indexing, no ``bincount``): nothing waits for the device."""
        c = self.num_classes
        t, p = target.reshape(-1).long(), pred.reshape(-1).long()
        keep = t != IGNORE_INDEX
        t_ok, p_ok = (t >= 0) & (t < c), (p >= 0) & (p < c)
        bad_t = torch.where(keep & ~t_ok, t.abs(), -1).max()
        bad_p = torch.where(keep & ~p_ok, p.abs(), -1).max()
        worst = torch.stack([bad_t, bad_p])
        torch.maximum(self._bad, worst, out=self._bad)
        idx = torch.where(keep & t_ok & p_ok, t * c + p, c * c)
        self._counts.scatter_add_(0, idx, torch.ones_like(idx))

    def all_reduce(self) -> None:
        """Sum the counts of every rank: in distributed evaluation each rank scored its own share of the images."""
        all_reduce_sum_(self._counts)
        all_reduce_max_(self._bad)

    def reset(self) -> None:
        self._counts.zero_()
        self._bad.fill_(-1)


def compute_metrics(matrix: Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """mIoU, pixel/mean accuracy, frequency-weighted IoU (percent) and per-class IoU.

    A class absent from both ground truth and prediction has an undefined IoU: it
    is reported as ``None`` and left out of the mean, as in the VOC devkit.
    """
    m = matrix.double().cpu()
    tp, gt, pr = m.diag(), m.sum(1), m.sum(0)
    union = gt + pr - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.nan)
    total = m.sum().clamp(min=1)
    has_gt = gt > 0
    acc = tp[has_gt] / gt[has_gt]
    freq = gt / total
    return {
        "mIoU": 100 * float(iou[present].mean()) if present.any() else 0.0,
        "pixel_accuracy": 100 * float(tp.sum() / total),
        "mean_accuracy": 100 * float(acc.mean()) if has_gt.any() else 0.0,
        "fw_iou": 100 * float((freq[present] * iou[present]).sum()),
        "per_class_iou": {
            name: (100 * float(v) if ok else None) for name, v, ok in zip(class_names, iou, present, strict=True)
        },
        # classes with ground-truth pixels in the evaluated images: a mean over fewer than two is no comparison
        "classes_present": int(has_gt.sum()),
        "num_classes": len(class_names),
    }

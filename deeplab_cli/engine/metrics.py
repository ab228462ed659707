"""Confusion-matrix metrics for semantic segmentation (VOC protocol)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..data.palette import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates a ``C x C`` matrix (rows: ground truth, columns: prediction).

    Accumulation stays on the tensors' device (one ``bincount`` per batch, no host
    sync), and pixels labelled 255 are ignored.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of predicted and true class maps of equal shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        keep = target != IGNORE_INDEX
        t, p = target[keep].long(), pred[keep].long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_classes):
            bad = int(t.max()) if int(t.max()) >= self.num_classes else int(t.min())
            raise ValueError(f"label value {bad} is outside 0..{self.num_classes - 1} and not 255")
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= self.num_classes):
            bad = int(p.max()) if int(p.max()) >= self.num_classes else int(p.min())
            raise ValueError(f"prediction value {bad} is outside 0..{self.num_classes - 1}")
        idx = t * self.num_classes + p
        self.matrix += torch.bincount(idx, minlength=self.num_classes**2).view(self.num_classes, -1)

    def reset(self) -> None:
        self.matrix.zero_()


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
    }

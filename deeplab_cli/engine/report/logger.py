"""TensorBoard output and the human-readable metrics table."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from ...data.palette import IGNORE_INDEX, voc_colormap

_CMAP = voc_colormap()


def colorize(mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Class-index map (H, W) -> colours (H, W, 3) uint8 from a (256, 3) palette (VOC's by default)."""
    return (_CMAP if palette is None else palette)[mask.astype(np.uint8)]


def panel(image: np.ndarray, target: np.ndarray, pred: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """image | ground truth | prediction side by side, (H, 3W, 3) uint8."""
    target = np.where(target == IGNORE_INDEX, IGNORE_INDEX, target)
    return np.concatenate([image, colorize(target, palette), colorize(pred, palette)], axis=1)


class TensorBoardLogger:
    """Thin wrapper so the loop logs scalars/panels without knowing TensorBoard's API."""

    def __init__(self, log_dir: str | Path, enabled: bool = True, palette: np.ndarray | None = None) -> None:
        self.writer = SummaryWriter(str(log_dir)) if enabled else None
        self.palette = palette

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def metrics(self, metrics: Mapping[str, Any], step: int, prefix: str = "val") -> None:
        """mIoU, accuracies and per-class IoU (classes absent from the split are skipped)."""
        self.scalars({f"{prefix}/{k}": metrics[k] for k in ("mIoU", "pixel_accuracy", "mean_accuracy", "fw_iou")}, step)
        per_class = {f"{prefix}_iou/{k}": v for k, v in metrics["per_class_iou"].items() if v is not None}
        self.scalars(per_class, step)

    def panel(self, tag: str, image: np.ndarray, target: Tensor, pred: Tensor, step: int) -> None:
        if self.writer:
            picture = panel(image, target.cpu().numpy(), pred.cpu().numpy(), self.palette)
            self.writer.add_image(tag, picture, step, dataformats="HWC")

    def image(self, tag: str, picture: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 picture, e.g. a rendered matplotlib figure."""
        if self.writer:
            self.writer.add_image(tag, picture, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def format_table(metrics: Mapping[str, Any]) -> str:
    """Per-class IoU and the summary numbers as an aligned text table."""
    rows = [f"{'class':<14}{'IoU %':>8}"]
    for name, iou in metrics["per_class_iou"].items():
        rows.append(f"{name:<14}{'-' if iou is None else f'{iou:.2f}':>8}")
    rows.append("-" * 22)
    for key in ("mIoU", "pixel_accuracy", "mean_accuracy", "fw_iou"):
        rows.append(f"{key:<14}{metrics[key]:>8.2f}")
    if "classes_present" in metrics:
        present, total = metrics["classes_present"], metrics.get("num_classes", len(metrics["per_class_iou"]))
        rows.append(f"classes present in the ground truth: {present} of {total}")
        if present < 2:
            rows.append(
                f"WARNING: the evaluated images hold {present} class(es): this mIoU compares nothing "
                "(a model predicting one class everywhere scores the same); evaluate on images with more classes"
            )
    return "\n".join(rows)

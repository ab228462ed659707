"""Pictures of an evaluation for the run dir and TensorBoard: confusion matrix, per-class IoU, trimap curve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from .logger import TensorBoardLogger
from .plots import (
    confusion_matrix_figure,
    figure_to_array,
    per_class_iou_figure,
    save_figure,
    trimap_series_figure,
)


def save_pictures(
    out_dir: Path | None,
    tb: TensorBoardLogger | None,
    step: int,
    matrix: Tensor,
    class_names: Sequence[str],
    metrics: Mapping[str, Any],
    trimap: Mapping[str, Mapping[int, float]] | None = None,
    trimap_plain: Mapping[str, float] | None = None,
    prefix: str = "",
) -> list[Path]:
    """Render the figures once; write PNGs to ``out_dir`` (if given) and images to ``tb`` (if given)."""
    figures = {
        "confusion_matrix": confusion_matrix_figure(matrix.cpu().numpy(), class_names),
        "per_class_iou": per_class_iou_figure(metrics["per_class_iou"], metrics["mIoU"]),
    }
    if trimap:
        figures["trimap"] = trimap_series_figure(trimap, trimap_plain or metrics["mIoU"])
    written = []
    for name, fig in figures.items():
        if out_dir is not None:
            written.append(save_figure(fig, out_dir / f"{prefix}{name}.png"))
        if tb is not None:
            tb.image(f"plots/{prefix}{name}", figure_to_array(fig), step)
    return written

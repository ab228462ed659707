"""Evaluation pictures for the run directory and TensorBoard.

Only matplotlib's object-oriented API is used (``Figure`` + ``FigureCanvasAgg``), never
``pyplot``: no global figure registry, no GUI backend, so it works headless and from
logger threads without leaking figures.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

if TYPE_CHECKING:  # torch is only duck-typed here, keeping this module light to import
    import torch

DPI = 100
MAX_ANNOTATED_CLASSES = 25


def _new_figure(width: float, height: float) -> Figure:
    """A figure already bound to an Agg canvas (so drawing never touches pyplot)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _row_normalise(matrix: np.ndarray) -> np.ndarray:
    """Each ground-truth row divided by its total; rows without pixels stay 0."""
    m = matrix.astype(np.float64)
    rows = m.sum(axis=1, keepdims=True)
    return np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)


def confusion_matrix_figure(matrix: np.ndarray | torch.Tensor, class_names: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix (the image holds fractions; colorbar and cell text show %)."""
    m = matrix.detach().cpu().numpy() if hasattr(matrix, "detach") else np.asarray(matrix)
    c = len(class_names)
    if m.shape != (c, c):
        raise ValueError(f"confusion matrix of shape {m.shape} does not match {c} class names")
    norm = _row_normalise(m)
    side = max(5.0, 0.38 * c + 2.5)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    cbar.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_xticks(range(c), labels=list(class_names), rotation=90)
    ax.set_yticks(range(c), labels=list(class_names))
    ax.set_xlabel("Predicted")
    ax.set_ylabel("Ground truth")
    ax.set_title("Confusion matrix (row-normalised, %)")
    if c <= MAX_ANNOTATED_CLASSES:
        size = 8 if c <= 12 else 6
        for i, j in zip(*np.nonzero(norm), strict=True):
            v = norm[i, j]
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=size,
                    color="white" if v > 0.5 else "black")  # fmt: skip
    return fig


def per_class_iou_figure(per_class_iou: Mapping[str, float | None], miou: float | None = None) -> Figure:
    """Horizontal bars of IoU % per class, top to bottom in class order; ``None`` -> no bar, "n/a"."""
    names = list(per_class_iou)
    fig = _new_figure(7.0, max(3.0, 0.3 * len(names) + 1.2))
    ax = fig.add_subplot()
    present = [(i, float(v)) for i, v in enumerate(per_class_iou.values()) if v is not None]
    if present:
        pos, vals = zip(*present, strict=True)
        ax.barh(pos, vals, color="tab:blue", height=0.7)
        for y, v in present:  # value at the bar's end; inside it (white) when the bar nearly fills the axis
            inside = v > 88.0
            ax.text(v - 1.0 if inside else v + 1.0, y, f"{v:.1f}", va="center", fontsize=8,
                    ha="right" if inside else "left", color="white" if inside else "black")  # fmt: skip
    for i, v in enumerate(per_class_iou.values()):
        if v is None:
            ax.text(1.0, i, "n/a", va="center", fontsize=8, color="gray")
    title = "Per-class IoU"
    if miou is not None:  # named in the title rather than a legend, which would hide bars
        ax.axvline(miou, color="tab:red", linestyle="--", label=f"mIoU {miou:.1f}")
        title += f" (dashed: mIoU {miou:.1f}%)"
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(0.0, 100.0)
    ax.set_xlabel("IoU (%)")
    ax.set_title(title)
    return fig


def trimap_series_figure(
    series: Mapping[str, Mapping[int, float]], plain: float | Mapping[str, float] | None = None
) -> Figure:
    """mIoU vs trimap band width, one line per series (e.g. "network" and "CRF").

    ``plain`` is the whole-image mIoU drawn as a dashed horizontal line: one number, or one
    per series label (drawn in that series' colour).
    """
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    colours: dict[str, str] = {}
    all_widths: set[int] = set()
    for label, curve in series.items():
        widths = sorted(curve)
        all_widths.update(widths)
        (line,) = ax.plot(widths, [curve[w] for w in widths], marker="o", label=label)
        colours[label] = line.get_color()
    plains = {"whole image": plain} if isinstance(plain, numbers.Real) else dict(plain or {})
    for label, value in plains.items():
        if value is None or not math.isfinite(value):
            continue
        name = label if label == "whole image" else f"{label} (whole image)"
        ax.axhline(value, linestyle="--", color=colours.get(label, "gray"), label=f"{name} {value:.1f}")
    if all_widths and min(all_widths) > 0 and max(all_widths) >= 8 * min(all_widths):
        ax.set_xscale("log", base=2)  # the papers' widths double: 1, 2, 4, ... 40 px
    if all_widths:
        ax.set_xticks(sorted(all_widths), [str(w) for w in sorted(all_widths)])
        ax.minorticks_off()
    if series or plains:
        ax.legend(loc="lower right")
    ax.set_xlabel("Trimap band width (pixels)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("Boundary accuracy (trimap)")
    ax.grid(True, alpha=0.3)
    return fig


def trimap_figure(trimap: Mapping[int, float], plain_miou: float | None = None, label: str = "network") -> Figure:
    """One trimap curve; see :func:`trimap_series_figure` for several."""
    return trimap_series_figure({label: trimap}, plain_miou)


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG of ``figsize * dpi`` pixels, creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def figure_to_array(fig: Figure) -> np.ndarray:
    """(H, W, 3) uint8 RGB rendering, for TensorBoard's ``add_image(..., dataformats="HWC")``."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()

"""Evaluation figures: saved sizes, labels, normalisation and plotted data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_cli.engine.report.plots import (
    confusion_matrix_figure,
    figure_to_array,
    per_class_iou_figure,
    save_figure,
    trimap_figure,
    trimap_series_figure,
)

NAMES = ("background", "cat", "dog", "person")
MATRIX = np.array([[50, 10, 0, 0], [5, 15, 0, 0], [0, 0, 0, 0], [1, 1, 1, 7]], dtype=np.int64)


def _expected_size(fig, dpi: int) -> tuple[int, int]:
    w, h = fig.get_size_inches()
    return round(w * dpi), round(h * dpi)


def _figures():
    return [
        confusion_matrix_figure(MATRIX, NAMES),
        per_class_iou_figure({"background": 90.0, "cat": None, "dog": 40.5}, miou=65.25),
        trimap_figure({2: 40.0, 4: 50.0}, plain_miou=70.0),
    ]


@pytest.mark.parametrize("dpi", [100, 40])
def test_figures_save_as_png_of_expected_size(tmp_path: Path, dpi: int) -> None:
    for i, fig in enumerate(_figures()):
        out = save_figure(fig, tmp_path / "nested" / "dir" / f"fig{i}.png", dpi=dpi)
        assert out == tmp_path / "nested" / "dir" / f"fig{i}.png"
        with Image.open(out) as img:
            assert img.format == "PNG"
            assert img.size == _expected_size(fig, dpi)


def test_confusion_matrix_labels_and_row_normalisation() -> None:
    fig = confusion_matrix_figure(torch.from_numpy(MATRIX), NAMES)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(NAMES)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(NAMES)
    assert all(t.get_rotation() == 90 for t in ax.get_xticklabels())
    assert ax.get_title() == "Confusion matrix (row-normalised, %)"
    data = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(data.sum(axis=1), [1.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(data[1], [0.25, 0.75, 0.0, 0.0])
    assert len(fig.axes) == 2  # image + colorbar
    texts = sorted(t.get_text() for t in ax.texts)
    assert len(texts) == int((MATRIX > 0).sum()) and "75" in texts and "70" in texts


def test_confusion_matrix_no_cell_text_for_many_classes() -> None:
    c = 30
    fig = confusion_matrix_figure(np.eye(c, dtype=np.int64) * 3 + 1, [f"c{i}" for i in range(c)])
    assert len(fig.axes[0].texts) == 0
    with pytest.raises(ValueError):
        confusion_matrix_figure(MATRIX, NAMES[:3])


def test_per_class_iou_bars() -> None:
    ious = {"background": 90.0, "cat": None, "dog": 40.5, "person": 0.0}
    fig = per_class_iou_figure(ious, miou=43.5)
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == 3  # "cat" has no value, so no bar
    assert sorted(b.get_width() for b in bars) == pytest.approx([0.0, 40.5, 90.0])
    assert [t.get_text() for t in ax.get_yticklabels()] == list(ious)
    assert "n/a" in [t.get_text() for t in ax.texts]
    assert ax.get_xlim() == (0.0, 100.0)
    (line,) = ax.lines
    assert list(line.get_xdata()) == [43.5, 43.5] and line.get_linestyle() == "--"


def test_per_class_iou_without_miou_has_no_line() -> None:
    ax = per_class_iou_figure({"a": 10.0, "b": 20.0}).axes[0]
    assert len(ax.lines) == 0 and len(ax.patches) == 2


def test_trimap_figure_line_data() -> None:
    fig = trimap_figure({8: 60.0, 2: 40.0, 4: 50.0}, plain_miou=72.5, label="net")
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.lines}
    curve = lines["net"]
    assert list(curve.get_xdata()) == [2, 4, 8]
    assert list(curve.get_ydata()) == [40.0, 50.0, 60.0]
    assert curve.get_marker() == "o"
    (plain,) = [ln for ln in ax.lines if ln is not curve]
    assert list(plain.get_ydata()) == [72.5, 72.5] and plain.get_linestyle() == "--"
    assert ax.get_xlabel() == "Trimap band width (pixels)"


def test_trimap_series_share_a_plot() -> None:
    series = {"network": {2: 40.0, 4: 50.0}, "crf": {2: 45.0, 4: 53.0}}
    fig = trimap_series_figure(series, plain={"network": 70.0, "crf": 72.0})
    ax = fig.axes[0]
    solid = {ln.get_label(): list(ln.get_ydata()) for ln in ax.lines if ln.get_linestyle() == "-"}
    assert solid == {"network": [40.0, 50.0], "crf": [45.0, 53.0]}
    dashed = sorted(ln.get_ydata()[0] for ln in ax.lines if ln.get_linestyle() == "--")
    assert dashed == [70.0, 72.0]


def test_figure_to_array_rgb_uint8() -> None:
    fig = trimap_figure({2: 40.0})
    arr = figure_to_array(fig)
    w, h = _expected_size(fig, int(fig.dpi))
    assert arr.dtype == np.uint8 and arr.shape == (h, w, 3)
    assert arr.min() < 128 < arr.max()  # something was drawn on the white background


def test_no_pyplot_needed() -> None:
    """The module must render headless without importing pyplot's global state."""
    code = (
        "import sys\n"
        "from deeplab_cli.engine.report import plots\n"
        "plots.figure_to_array(plots.confusion_matrix_figure([[1, 0], [0, 1]], ['a', 'b']))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

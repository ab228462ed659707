"""Trimap (boundary-band) mIoU: distances, band membership, void handling and real VOC masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from clitools import VOC_MASKS, needs_shared

from deeplab_cli.engine.eval.metrics import ConfusionMatrix, compute_metrics
from deeplab_cli.engine.eval.trimap import TrimapMeter, boundary_distance

MASKS = VOC_MASKS / "SegmentationClass"
NAMES3 = ("a", "b", "c")


def _t(a: list | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


def test_distance_vertical_boundary() -> None:
    target = np.array([[0, 0, 0, 1, 1, 1]] * 2, dtype=np.uint8)
    dist = boundary_distance(target)
    assert dist.dtype == np.float32
    np.testing.assert_array_equal(dist, [[2, 1, 0, 0, 1, 2]] * 2)


def test_distance_is_euclidean() -> None:
    target = np.zeros((5, 5), dtype=np.uint8)
    target[2, 2] = 1  # boundary: the centre and its four 4-neighbours
    dist = boundary_distance(target)
    assert dist[2, 2] == 0 and dist[1, 2] == 0 and dist[2, 3] == 0
    assert dist[1, 1] == pytest.approx(1.0)
    assert dist[0, 0] == pytest.approx(math.sqrt(5))
    assert dist[0, 2] == pytest.approx(1.0)


def test_void_edges_are_boundaries() -> None:
    dist = boundary_distance(np.array([[0, 0, 0, 255, 0, 0, 0]], dtype=np.uint8))
    np.testing.assert_array_equal(dist, [[2, 1, 0, 0, 0, 1, 2]])


def test_no_boundary_is_inf() -> None:
    assert np.isinf(boundary_distance(np.full((3, 4), 7, dtype=np.uint8))).all()
    assert np.isinf(boundary_distance(np.full((2, 2), 255, dtype=np.uint8))).all()


def test_hand_computed_bands_and_iou() -> None:
    target = _t([[0, 0, 0, 1, 1, 1]] * 2)
    pred = _t([[0, 0, 1, 1, 1, 1]] * 2)  # column 2 wrong
    meter = TrimapMeter([2, 1], num_classes=2)
    meter.update(pred, target)
    assert meter.widths == (1, 2)
    assert meter.band_pixels == {1: 8, 2: 12}  # width 1: columns 1..4
    # width 1: class 0 tp=2 union=4 -> 1/2; class 1 tp=4 union=6 -> 2/3
    np.testing.assert_array_equal(meter.matrices[1].numpy(), [[2, 2], [0, 4]])
    res = meter.result(("bg", "fg"))
    assert res[1] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    # width 2 = whole image: class 0 2/3, class 1 3/4
    assert res[2] == pytest.approx(100 * (2 / 3 + 3 / 4) / 2)


def test_void_never_counted() -> None:
    target = _t([[0, 0, 0, 255, 1, 1, 1]])
    pred = _t([[0, 0, 0, 2, 1, 1, 1]])  # the void pixel's (wrong) prediction must not count
    meter = TrimapMeter([1, 50], num_classes=3)
    meter.update(pred, target)
    assert meter.band_pixels == {1: 4, 50: 6}
    for w in (1, 50):
        m = meter.matrices[w]
        assert int(m.sum()) == meter.band_pixels[w]
        assert int(m[:, 2].sum()) == 0
    assert meter.result(NAMES3) == {1: 100.0, 50: 100.0}


def test_no_boundary_gives_empty_band_and_zero() -> None:
    meter = TrimapMeter([1, 3], num_classes=3)
    meter.update(_t(np.ones((4, 4))), _t(np.ones((4, 4))))
    assert meter.band_pixels == {1: 0, 3: 0}
    assert all(int(m.sum()) == 0 for m in meter.matrices.values())
    assert meter.result(NAMES3) == {1: 0.0, 3: 0.0}  # compute_metrics' value for an empty matrix


def test_wide_band_equals_plain_miou() -> None:
    rng = np.random.default_rng(0)
    meter = TrimapMeter([1, 10_000], num_classes=3)
    plain = ConfusionMatrix(3)
    for _ in range(2):
        target = np.zeros((12, 10), dtype=np.int64)
        target[3:9, 2:6] = 1
        target[:, 7:] = 2
        target[0, :3] = 255
        pred = np.where(rng.random(target.shape) < 0.2, rng.integers(0, 3, target.shape), target)
        pred[target == 255] = 0
        meter.update(_t(pred), _t(target))
        plain.update(_t(pred), _t(target))
    expected = compute_metrics(plain.matrix, NAMES3)["mIoU"]
    res = meter.result(NAMES3)
    assert 0 < expected < 100
    assert res[10_000] == pytest.approx(expected)
    assert torch.equal(meter.matrices[10_000], plain.matrix)
    assert meter.band_pixels[10_000] == 2 * (120 - 3)
    assert meter.band_pixels[1] < meter.band_pixels[10_000]
    meter.reset()
    assert meter.band_pixels == {1: 0, 10_000: 0} and int(meter.matrices[1].sum()) == 0


@pytest.mark.parametrize("widths", [[0], [-2], [2.5], [True], ["4"], []])
def test_widths_validation(widths: list) -> None:
    with pytest.raises(ValueError, match=r"eval\.trimap"):
        TrimapMeter(widths, num_classes=21)


def test_update_rejects_batches_and_mismatch() -> None:
    meter = TrimapMeter([1], num_classes=2)
    with pytest.raises(ValueError):
        meter.update(torch.zeros(1, 3, 3, dtype=torch.long), torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        meter.update(torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long))


@needs_shared(MASKS)
def test_real_voc_masks() -> None:
    from PIL import Image

    files = sorted(MASKS.glob("*.png"))[:3]
    assert len(files) == 3
    widths = [2, 4, 8, 16, 32]
    meter = TrimapMeter(widths, num_classes=21)
    non_void = 0
    for f in files:
        target = np.array(Image.open(f))
        assert target.ndim == 2
        non_void += int((target != 255).sum())
        t = torch.from_numpy(target.astype(np.int64))
        meter.update(t.clone(), t)
    counts = [meter.band_pixels[w] for w in widths]
    assert counts == sorted(counts) and counts[0] > 0
    assert counts[0] < 0.5 * non_void
    assert all(v == pytest.approx(100.0) for v in meter.result([str(i) for i in range(21)]).values())

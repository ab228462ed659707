"""Confusion matrix and VOC metrics, checked against hand-computed numbers and real masks."""

from __future__ import annotations

import clitools
import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_cli.data.palette import VOC_CLASSES
from deeplab_cli.engine.eval.metrics import ConfusionMatrix, compute_metrics
from deeplab_cli.engine.report.logger import format_table

VOC_MASKS = clitools.VOC_MASKS / "SegmentationClass"

NAMES = ("bg", "cat", "dog", "cow")  # 4 classes; "dog" is only predicted, "cow" never appears

# Rows: ground truth, columns: prediction; 255 marks void pixels.
TARGET = torch.tensor(
    [
        [0, 0, 0, 1],
        [0, 0, 0, 1],
        [255, 1, 1, 255],
    ]
)
PRED = torch.tensor(
    [
        [0, 0, 1, 1],
        [0, 2, 1, 1],
        [2, 1, 0, 0],
    ]
)
# Counted by hand over the 10 non-void pixels, (gt, pred):
#   row 0: (0,0) (0,0) (0,1) (1,1)
#   row 1: (0,0) (0,2) (0,1) (1,1)
#   row 2: void  (1,1) (1,0) void
EXPECTED_MATRIX = [
    [3, 2, 1, 0],  # gt bg : 3 right, 2 -> cat, 1 -> dog       (6 pixels)
    [1, 3, 0, 0],  # gt cat: 1 -> bg, 3 right                  (4 pixels)
    [0, 0, 0, 0],  # no dog in the ground truth
    [0, 0, 0, 0],  # no cow anywhere
]
# tp = [3, 3, 0, 0], gt = [6, 4, 0, 0], pred = [4, 5, 1, 0]
# union = gt + pred - tp = [7, 6, 1, 0]
# IoU: bg 3/7 = 42.857 %, cat 3/6 = 50 %, dog 0/1 = 0 % (predicted only), cow undefined
# mIoU = (3/7 + 1/2 + 0) / 3 = 13/42 = 30.952 %
# pixel accuracy = (3 + 3) / 10 = 60 %
# mean accuracy over classes with ground truth = (3/6 + 3/4) / 2 = 62.5 %
# fw IoU = 6/10 * 3/7 + 4/10 * 1/2 = 9/35 + 7/35 = 16/35 = 45.714 %


def _matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int = 4) -> ConfusionMatrix:
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, target)
    return cm


def test_hand_computed_confusion_matrix():
    cm = _matrix(PRED[None], TARGET[None])
    assert cm.matrix.dtype == torch.int64
    assert cm.matrix.tolist() == EXPECTED_MATRIX


def test_hand_computed_metrics():
    m = compute_metrics(_matrix(PRED, TARGET).matrix, NAMES)
    assert m["per_class_iou"]["bg"] == pytest.approx(100 * 3 / 7)
    assert m["per_class_iou"]["bg"] == pytest.approx(42.857142857)
    assert m["per_class_iou"]["cat"] == pytest.approx(50.0)
    assert m["per_class_iou"]["dog"] == 0.0  # only predicted: IoU 0, counted in the mean
    assert m["per_class_iou"]["cow"] is None  # absent from both: undefined, left out
    assert list(m["per_class_iou"]) == list(NAMES)
    assert m["mIoU"] == pytest.approx(100 * 13 / 42)
    assert m["mIoU"] == pytest.approx(30.952380952)
    assert m["pixel_accuracy"] == pytest.approx(60.0)
    assert m["mean_accuracy"] == pytest.approx(62.5)
    assert m["fw_iou"] == pytest.approx(100 * 16 / 35)
    assert m["fw_iou"] == pytest.approx(45.714285714)


def test_predicted_only_class_lowers_miou_and_absent_class_does_not():
    # Same pixels but predicting "dog" as "bg": the dog column vanishes, so dog becomes
    # undefined too and the mean is over bg and cat only.
    pred = torch.where(PRED == 2, 0, PRED)
    m = compute_metrics(_matrix(pred, TARGET).matrix, NAMES)
    # bg: tp 4, gt 6, pred 5 -> union 7 -> 4/7; cat: tp 3, gt 4, pred 5 -> 3/6
    # mIoU = (4/7 + 1/2) / 2 = 15/28 = 53.571 %  (was 30.952 % with the dog false positive)
    assert m["per_class_iou"]["dog"] is None
    assert m["per_class_iou"]["bg"] == pytest.approx(100 * 4 / 7)
    assert m["per_class_iou"]["cat"] == pytest.approx(50.0)
    assert m["mIoU"] == pytest.approx(53.571428571)


def test_void_pixels_are_ignored():
    void = TARGET == 255
    for value in (0, 1, 2, 3):
        pred = torch.where(void, value, PRED)
        assert _matrix(pred, TARGET).matrix.tolist() == EXPECTED_MATRIX
    # ... whereas changing a non-void prediction does change the matrix
    changed = PRED.clone()
    changed[0, 0] = 3
    assert _matrix(changed, TARGET).matrix.tolist() != EXPECTED_MATRIX


def test_update_accumulates_across_batches():
    cm = ConfusionMatrix(4)
    cm.update(PRED[:2], TARGET[:2])
    cm.update(PRED[2:], TARGET[2:])
    assert cm.matrix.tolist() == EXPECTED_MATRIX
    cm.update(PRED, TARGET)
    assert cm.matrix.tolist() == [[2 * v for v in row] for row in EXPECTED_MATRIX]
    cm.reset()
    assert int(cm.matrix.sum()) == 0


def test_label_outside_classes_raises_naming_value():
    target = TARGET.clone()
    target[0, 0] = 7
    with pytest.raises(ValueError, match=r"\b7\b"):
        _matrix(PRED, target)


def test_shape_mismatch_raises():
    cm = ConfusionMatrix(4)
    with pytest.raises(ValueError, match="shape"):
        cm.update(PRED[:, :3], TARGET)
    assert int(cm.matrix.sum()) == 0


def test_prediction_outside_classes_is_rejected():
    pred = PRED.clone()
    pred[0, 0] = 4  # gt 0, pred 4 == C -> would land in cell (1, 0)
    cm = ConfusionMatrix(4)
    with pytest.raises(ValueError, match=r"\b4\b"):
        cm.update(pred, TARGET)


def test_empty_matrix_reports_zeros():
    m = compute_metrics(torch.zeros(3, 3, dtype=torch.int64), ("a", "b", "c"))
    assert m["mIoU"] == 0.0 and m["pixel_accuracy"] == 0.0 and m["mean_accuracy"] == 0.0
    assert m["per_class_iou"] == {"a": None, "b": None, "c": None}


@clitools.needs_shared(VOC_MASKS)
def test_real_masks_as_their_own_prediction_score_100():
    paths = sorted(VOC_MASKS.glob("*.png"))[::140][:20]
    assert len(paths) == 20
    cm = ConfusionMatrix(21)
    counts = np.zeros(21, dtype=np.int64)
    for path in paths:
        mask = torch.from_numpy(np.array(Image.open(path), dtype=np.uint8)).long()
        assert (mask == 255).any()  # VOC's void band is there
        cm.update(mask[None], mask[None])
        valid = mask[mask != 255].numpy()
        counts += np.bincount(valid, minlength=21)
    m = compute_metrics(cm.matrix, VOC_CLASSES)
    assert np.array_equal(cm.matrix.diag().numpy(), counts)
    assert int(cm.matrix.sum()) == int(counts.sum())
    assert m["mIoU"] == pytest.approx(100.0)
    assert m["pixel_accuracy"] == pytest.approx(100.0)
    assert m["mean_accuracy"] == pytest.approx(100.0)
    assert m["fw_iou"] == pytest.approx(100.0)
    for name, count in zip(VOC_CLASSES, counts, strict=True):
        assert m["per_class_iou"][name] == (pytest.approx(100.0) if count else None)


def test_format_table_lists_classes_and_summary():
    m = compute_metrics(_matrix(PRED, TARGET).matrix, NAMES)
    table = format_table(m)
    lines = table.splitlines()
    for name in NAMES:
        assert any(line.split()[0] == name for line in lines), name
    assert "42.86" in table and "50.00" in table
    cow = next(line for line in lines if line.startswith("cow"))
    assert cow.split()[1] == "-"
    miou = next(line for line in lines if line.startswith("mIoU"))
    assert miou.split() == ["mIoU", "30.95"]
    for key, value in (("pixel_accuracy", "60.00"), ("mean_accuracy", "62.50"), ("fw_iou", "45.71")):
        assert next(line for line in lines if line.startswith(key)).split() == [key, value]


def test_sync_free_accumulation_equals_the_cpu_path():
    torch.manual_seed(0)
    eager, lazy = ConfusionMatrix(5), ConfusionMatrix(5, sync_free=True)
    for _ in range(3):
        target = torch.randint(0, 5, (2, 9, 7))
        target[:, :2] = 255
        pred = torch.randint(0, 5, (2, 9, 7))
        eager.update(pred, target)
        lazy.update(pred, target)
    assert torch.equal(eager.matrix, lazy.matrix) and int(lazy.matrix.sum()) == 3 * 2 * 7 * 7


def test_sync_free_reports_bad_values_when_read():
    cm = ConfusionMatrix(4, sync_free=True)
    cm.update(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 7], [255, 1]]))  # no error yet
    with pytest.raises(ValueError, match=r"label value 7 is outside 0..3"):
        _ = cm.matrix
    cm.reset()
    cm.update(torch.tensor([[9, 0]]), torch.tensor([[1, 1]]))
    with pytest.raises(ValueError, match=r"prediction value 9"):
        _ = cm.matrix

"""Imbalanced classes: class weights counted over the training masks after label mapping, and OHEM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clitools import CAMVID, needs_shared
from PIL import Image

from deeplab_cli.cli import train as train_mod
from deeplab_cli.config import datasets
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.data.class_weights import count_labels, weights_from_stats
from deeplab_cli.data.labels import LabelMapping
from deeplab_cli.data.layout import Layout
from deeplab_cli.engine.train.losses import LossSpec, ohem_mask, segmentation_loss
from deeplab_cli.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
needs_camvid = needs_shared(CAMVID)
QUICK = ["trainer.max_iters=2", "trainer.batch_size=2", "trainer.progress=false", "dataset.synthetic.num_train=4",
         "dataset.synthetic.num_val=2"]  # fmt: skip


@needs_camvid
def test_median_frequency_on_camvid_equals_a_hand_computation() -> None:
    layout = Layout(CAMVID, "{split}", "{split}annot", ".jpg", ".png", None)
    stats = count_labels(layout, "train", LabelMapping(11, ignore_values=(11,)), workers=2)
    pixels = np.zeros(11)
    present_total = np.zeros(11)
    for path in sorted((CAMVID / "trainannot").glob("*.png")):
        mask = np.array(Image.open(path)).ravel()
        labelled = mask[mask < 11]  # 11 = void
        for c in np.unique(labelled):
            pixels[c] += (labelled == c).sum()
            present_total[c] += labelled.size
    freq = pixels / present_total
    expected = np.median(freq) / freq
    assert stats.masks == 367
    np.testing.assert_allclose(weights_from_stats(stats, "median_frequency"), expected, rtol=1e-12)
    weights = weights_from_stats(stats, "median_frequency")
    names = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist"]
    assert weights[names.index("pole")] > 5 * weights[names.index("road")]  # rare thin classes weigh more


def test_inverse_frequency_is_mean_one_and_absent_classes_get_zero() -> None:
    from deeplab_cli.data.check import LabelStats

    stats = LabelStats(3)
    stats.add(np.array([30, 10, 0, 5]))
    weights = weights_from_stats(stats, "inverse_frequency")
    assert (
        weights[2] == 0.0 and weights[1] == pytest.approx(3 * weights[0]) and np.mean(weights[:2]) == pytest.approx(1)
    )


def test_weighted_loss_is_torch_weighted_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 4, 6, 7), torch.randint(0, 4, (2, 6, 7))
    labels[0, 0] = 255
    weights = (0.5, 2.0, 1.0, 3.0)
    got = segmentation_loss(logits, labels, "nearest", LossSpec(class_weights=weights))
    want = F.cross_entropy(logits, labels, weight=torch.tensor(weights), ignore_index=255)
    torch.testing.assert_close(got, want)
    all_pixels = LossSpec(class_weights=weights, ohem=True, ohem_thresh=1.0, ohem_min_kept=0)
    torch.testing.assert_close(segmentation_loss(logits, labels, "nearest", all_pixels), want)


def test_ohem_keeps_hard_pixels_and_at_least_min_kept() -> None:
    labels = torch.zeros(1, 4, 5, dtype=torch.long)
    labels[0, 0, 0] = 255
    logits = torch.zeros(1, 2, 4, 5)
    logits[:, 0] = torch.linspace(1, 5, 20).reshape(4, 5)  # every pixel confidently right: p(true) > 0.73
    assert int(ohem_mask(logits, labels, 0.7, 0).sum()) == 0
    kept = ohem_mask(logits, labels, 0.7, 6)
    assert int(kept.sum()) == 6 and not kept[0, 0, 0]
    assert kept[0, 0, 1:].all() and kept[0, 1, 0], "the six least confident labelled pixels"
    assert int(ohem_mask(logits, labels, 0.7, 1000).sum()) == 19  # never more than the labelled pixels
    logits[:, 0, 3] = -3.0  # a hard row: kept whatever min_kept says
    assert ohem_mask(logits, labels, 0.7, 0)[0, 3].all()


def test_training_counts_weights_once_into_the_run_dir(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "synthetic"
    args = [f"dataset.root={root}", *QUICK, "loss.class_weights=median_frequency", "loss.ohem=true",
            "loss.ohem_min_kept=64"]  # fmt: skip
    train_mod.run_train(compose_train(args, tmp_path / "run"))
    record = json.loads((tmp_path / "run" / "class_weights.json").read_text())
    assert len(record["weights"]) == 21 and record["masks"] == 4 and record["key"]["method"] == "median_frequency"
    assert record["per_class"]["background"]["pixels"] > 0

    def no_recount(*args, **kwargs):
        raise AssertionError("the cached weights are reused")

    monkeypatch.setattr("deeplab_cli.config.datasets.count_labels", no_recount)
    cfg = compose_train(args, tmp_path / "run")
    assert datasets.class_weights(cfg, tmp_path / "run") == record["weights"]


def test_bad_loss_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match="loss.class_weights lists 2 weights"):
        datasets.class_weights(compose_train(["loss.class_weights=[1,2]"]), Path("/nonexistent"))
    with pytest.raises(ConfigError, match="loss.class_weights='median'; choose null, median_frequency"):
        datasets.class_weights(compose_train(["loss.class_weights=median"]), Path("/nonexistent"))
    with pytest.raises(ConfigError, match="loss.ohem_thresh=1.5"):
        datasets.loss_spec(compose_train(["loss.ohem_thresh=1.5"]), None)


@pytest.mark.slow
def test_class_weights_and_ohem_under_torchrun(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    run = tmp_path / "run"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "deeplab_cli.cli.train", f"hydra.run.dir={run}",
           f"dataset.root={tmp_path / 'synthetic'}", *QUICK, "trainer.batch_size=4", "dataset.num_workers=0",
           "loss.class_weights=inverse_frequency", "loss.ohem=true", "loss.ohem_min_kept=100"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", **_env()})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "class_weights.json").read_text())["key"]["method"] == "inverse_frequency"
    assert "class weights (inverse_frequency)" in (run / "train.log").read_text()


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "HYDRA_FULL_ERROR": "0"}

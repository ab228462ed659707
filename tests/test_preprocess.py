"""Input normalisation belongs to the weights: it lives in ``model.preprocess``, travels in checkpoints,
comes from the importer for other projects' files, and no ``dataset=`` override changes it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import REFERENCE, VOC_SAMPLE, needs_shared, tree_digest
from PIL import Image

from deeplab_cli.cli import evaluate as eval_mod
from deeplab_cli.cli import train as train_mod
from deeplab_cli.config import checkpoints, datasets, models
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.config.migrate import migrate_stored_config
from deeplab_cli.data.synthetic import SyntheticSpec, ensure_synthetic_voc
from deeplab_cli.engine.runtime.checkpoint import atomic_save, load_checkpoint
from deeplab_cli.models.importers import CAFFE_BGR

pytestmark = pytest.mark.usefixtures("one_thread")
needs_voc = needs_shared(VOC_SAMPLE)
IMAGE_ID = "2007_000033"
MINUS_ONE_TO_ONE = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "bgr": False}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic_voc(root, SyntheticSpec(num_train=2, num_val=1))
    return root


@pytest.fixture(scope="module")
def xception_ckpt(tmp_path_factory, synthetic_root: Path) -> Path:
    """Our DeepLab v3+ Xception-65 after one iteration: its preset normalises inputs to [-1, 1]."""
    run = tmp_path_factory.mktemp("xception")
    cfg = compose_train(
        [
            "model=deeplabv3plus_xception65", "model.pretrained=false", f"dataset.root={synthetic_root}",
            "dataset.synthetic.num_train=2", "dataset.synthetic.num_val=1", "dataset.crop_size=33",
            "dataset.num_workers=0", "trainer.max_iters=1", "trainer.batch_size=2", "trainer.progress=false",
        ],
        run,
    )  # fmt: skip
    train_mod.run_train(cfg)
    return run / "checkpoints" / "last.pt"


def _eval_png(ckpt: Path, run: Path, *overrides: str) -> np.ndarray:
    """``deeplab-eval checkpoint=ckpt <overrides> save_predictions=true`` in-process; the prediction of IMAGE_ID."""
    args = [f"checkpoint={ckpt}", *overrides, "save_predictions=true", "eval.num_workers=0", "eval.progress=false"]
    eval_mod.run_eval(compose_train(args, run, config_name="eval"))
    return np.array(Image.open(run / "predictions" / f"{IMAGE_ID}.png"))


def _rgb(root: Path) -> np.ndarray:
    return np.array(Image.open(root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{IMAGE_ID}.jpg").convert("RGB"))


def test_dataset_presets_never_carry_normalisation() -> None:
    for dataset in ("synthetic", "voc", "voc_aug"):
        cfg = compose_train(["model=deeplabv3plus_xception65", f"dataset={dataset}"])
        assert "mean" not in cfg.dataset and "bgr" not in cfg.dataset
        assert datasets.normalisation(cfg) == ([0.5] * 3, [0.5] * 3, False)


def test_normalisation_follows_the_backbone_not_the_preset() -> None:
    """null mean/std is the backbone's own: a preset's backbone swapped keeps no stale normalisation."""
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], False)
    cases = {
        ("model=deeplabv3plus_xception65",): ([0.5] * 3, [0.5] * 3, False),
        ("model=deeplabv3plus_xception65", "backbone=resnet101"): imagenet,
        ("model=deeplabv3plus_resnet101", "backbone=xception65"): ([0.5] * 3, [0.5] * 3, False),
        ("model=deeplabv3plus_resnet101", "backbone=timm", "backbone.model=xception71"): ([0.5] * 3, [0.5] * 3, False),
        ("backbone=timm", "backbone.model=efficientnet_b0"): imagenet,
        ("backbone=timm", "backbone.model=xception71", "model.preprocess.mean=[0.1,0.2,0.3]"): (
            [0.1, 0.2, 0.3], [0.5] * 3, False,
        ),
    }  # fmt: skip
    for overrides, expected in cases.items():
        cfg = compose_train(list(overrides))
        assert cfg.model.preprocess.std is None
        assert datasets.normalisation(cfg) == expected, overrides
        datasets.resolve_preprocess(cfg)
        assert (list(cfg.model.preprocess.mean), list(cfg.model.preprocess.std)) == expected[:2], overrides


def test_our_checkpoint_stores_its_preprocessing(xception_ckpt: Path) -> None:
    assert load_checkpoint(xception_ckpt)["config"]["model"]["preprocess"] == MINUS_ONE_TO_ONE


@needs_voc
def test_our_xception_checkpoint_predicts_the_same_with_a_dataset_override(
    xception_ckpt: Path, voc_root: Path, tmp_path: Path
) -> None:
    before = tree_digest(voc_root)
    with_group = _eval_png(xception_ckpt, tmp_path / "a", "dataset=voc", f"dataset.root={voc_root}", "dataset.subset=1")
    other_group = _eval_png(
        xception_ckpt, tmp_path / "b", "dataset=voc_aug", f"dataset.root={voc_root}", "eval.split=val",
        "dataset.subset=1",
    )  # fmt: skip
    model = models.import_any_checkpoint(xception_ckpt).model
    x = torch.from_numpy(_rgb(voc_root)).float().permute(2, 0, 1)[None] / 255
    with torch.no_grad():
        logits = model((x - 0.5) / 0.5)["out"]  # [-1, 1], what the weights expect
        expected = torch.nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(with_group, other_group)
    assert (with_group == expected.argmax(1)[0].numpy()).mean() > 0.999
    assert tree_digest(voc_root) == before


@needs_voc
@needs_shared(REFERENCE)
def test_kazuto_checkpoint_keeps_caffe_bgr_under_dataset_override(voc_root: Path, tmp_path: Path) -> None:
    from test_importers import KAZUTO, kazuto_msc, random_state, read_keys

    state = random_state(read_keys(KAZUTO), seed=1)
    ckpt = tmp_path / "deeplabv2_resnet101_msc-vocaug-20000.pth"
    torch.save(state, ckpt)
    pred = _eval_png(ckpt, tmp_path / "eval", "dataset=voc", f"dataset.root={voc_root}", "dataset.subset=1")
    rgb = _rgb(voc_root)
    with torch.no_grad():
        logits = kazuto_msc(CAFFE_BGR(rgb)[None], state)  # the original project's own preprocessing
        expected = torch.nn.functional.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False)
    assert (pred == expected.argmax(1)[0].numpy()).mean() > 0.999


def test_group_overrides_keep_the_checkpoints_preprocessing(xception_ckpt: Path) -> None:
    stored = load_checkpoint(xception_ckpt)["config"]
    for overrides in (["dataset=voc"], ["dataset=voc_aug", "dataset.root=/x"], ["model=deeplabv3plus_xception65"]):
        cfg = compose_train(["checkpoint=x", *overrides], config_name="eval")
        merged = checkpoints.merge_overrides(stored, cfg, ["checkpoint=x", *overrides])
        assert merged.model.preprocess == MINUS_ONE_TO_ONE, overrides


def test_explicit_preprocess_override_is_used_and_logged(xception_ckpt: Path, caplog) -> None:
    stored = load_checkpoint(xception_ckpt)["config"]
    overrides = ["checkpoint=x", "dataset=voc", "model.preprocess.mean=[0.0,0.0,0.0]"]
    cfg = compose_train(overrides, config_name="eval")
    with caplog.at_level(logging.WARNING, logger="deeplab_cli"):
        merged = checkpoints.merge_overrides(stored, cfg, overrides)
    assert list(merged.model.preprocess.mean) == [0.0, 0.0, 0.0] and list(merged.model.preprocess.std) == [0.5] * 3
    assert "differs from the checkpoint's" in caplog.text and "0.5" in caplog.text


def test_explicit_preprocess_override_survives_a_later_group_override(xception_ckpt: Path) -> None:
    """Defect 4 of issue 22: with the key first and ``model=`` after it, the group override reset the
    preprocessing to the checkpoint's, silently dropping the value the user named. Both orders now agree."""
    stored = load_checkpoint(xception_ckpt)["config"]
    key, group = "model.preprocess.mean=[0.0,0.0,0.0]", "model=deeplabv3plus_xception65"
    for order in ([key, group], [group, key]):
        overrides = ["checkpoint=x", *order]
        merged = checkpoints.merge_overrides(stored, compose_train(overrides, config_name="eval"), overrides)
        assert list(merged.model.preprocess.mean) == [0.0, 0.0, 0.0], order
        assert list(merged.model.preprocess.std) == [0.5] * 3, order  # the rest stays the checkpoint's


def test_checkpoints_from_before_the_move_keep_their_normalisation(xception_ckpt: Path, tmp_path: Path) -> None:
    state = load_checkpoint(xception_ckpt)
    old = {**state["config"], "dataset": {**state["config"]["dataset"], **MINUS_ONE_TO_ONE}}
    old["model"] = {k: v for k, v in old["model"].items() if k != "preprocess"}
    assert migrate_stored_config(old)["model"]["preprocess"] == MINUS_ONE_TO_ONE
    assert "mean" not in migrate_stored_config(old)["dataset"]
    legacy = tmp_path / "legacy.pt"
    atomic_save({**state, "config": old}, legacy)
    imported = models.import_any_checkpoint(legacy).preprocess.as_config()
    assert imported["mean"] == pytest.approx([0.5] * 3) and imported["std"] == pytest.approx([0.5] * 3)
    cfg = compose_train(["checkpoint=x", "dataset=voc"], config_name="eval")
    merged = checkpoints.merge_overrides(old, cfg, ["checkpoint=x", "dataset=voc"])
    assert merged.model.preprocess == MINUS_ONE_TO_ONE
    assert datasets.normalisation(merged) == ([0.5] * 3, [0.5] * 3, False)


def test_init_from_our_checkpoint_carries_its_preprocessing(xception_ckpt: Path, synthetic_root: Path) -> None:
    cfg = compose_train([f"model.init_from={xception_ckpt}", "dataset=voc", f"dataset.root={synthetic_root}"])
    assert cfg.model.preprocess.mean is None  # the default model's (its backbone's), before the file is read
    checkpoints.init_from_checkpoint(cfg)
    assert cfg.model.preprocess == MINUS_ONE_TO_ONE and cfg.backbone.name == "xception65"

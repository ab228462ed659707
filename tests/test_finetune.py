"""``model.init_from=FILE`` onto another label set: every fitting tensor loaded exactly, classifiers re-initialised."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from clitools import cli

from deeplab_cli.cli import train as train_mod
from deeplab_cli.config import checkpoints
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.data.synthetic import SyntheticSpec, ensure_synthetic_voc
from deeplab_cli.engine.runtime.checkpoint import CheckpointError, load_checkpoint, load_matching

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = [
    "dataset.synthetic.num_train=4", "dataset.synthetic.num_val=2", "dataset.num_workers=0",
    "trainer.max_iters=2", "trainer.batch_size=2", "trainer.progress=false",
]  # fmt: skip
HEAD = ("head.fc8.weight", "head.fc8.bias")  # the quickstart's classifier (LargeFOV fc8)


@pytest.fixture(scope="module")
def root21(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data21")
    ensure_synthetic_voc(root, SyntheticSpec(num_train=4, num_val=2))
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory, root21: Path) -> Path:
    """A 21-class quickstart checkpoint."""
    run = tmp_path_factory.mktemp("src")
    train_mod.run_train(compose_train([f"dataset.root={root21}", *SMALL], run))
    return run / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def root11(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data11")
    ensure_synthetic_voc(root, SyntheticSpec(num_train=4, num_val=2, num_classes=11))
    return root


def test_new_label_set_loads_every_other_tensor_bit_identically(source: Path, root11: Path, caplog) -> None:
    cfg = compose_train([f"model.init_from={source}", f"dataset.root={root11}", "dataset.num_classes=11", *SMALL])
    imported, _ = checkpoints.init_from_checkpoint(cfg)
    assert cfg.model.num_classes == 11 and imported.num_classes == 21
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="deeplab_cli"):
        model = checkpoints.reheaded(cfg, imported)
    file_state = load_checkpoint(source)["model"]
    for key, value in model.state_dict().items():
        if key in HEAD:
            assert value.shape[0] == 11 and file_state[key].shape[0] == 21
        else:
            assert torch.equal(value, file_state[key]), key
    assert "loaded 95 tensors, re-initialised 2: head.fc8.weight, head.fc8.bias" in caplog.text


def test_finetune_21_to_11_classes_trains_and_evaluates(source: Path, root11: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = cli(
        "deeplab-train", f"hydra.run.dir={run}", f"model.init_from={source}", f"dataset.root={root11}",
        "dataset.num_classes=11", "model.num_classes=11", *SMALL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "re-initialised 2: head.fc8.weight, head.fc8.bias" in log
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["model"]["head.fc8.weight"].shape[0] == 11 and state["config"]["model"]["num_classes"] == 11
    assert len(json.loads((run / "metrics.json").read_text())["per_class_iou"]) == 11
    proc = cli("deeplab-eval", f"checkpoint={run / 'checkpoints' / 'last.pt'}", f"hydra.run.dir={tmp_path / 'e'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["num_images"] == 2


def test_same_label_set_still_loads_the_whole_file(source: Path, root21: Path) -> None:
    cfg = compose_train([f"model.init_from={source}", f"dataset.root={root21}", *SMALL])
    imported, _ = checkpoints.init_from_checkpoint(cfg)
    assert imported.num_classes == cfg.model.num_classes == 21
    file_state = load_checkpoint(source)["model"]
    assert all(torch.equal(v, file_state[k]) for k, v in imported.state_dict().items())


def test_another_architecture_is_refused_before_anything_is_copied(source: Path) -> None:
    from deeplab_cli.config import models

    cfg = compose_train(["model=deeplabv3plus_mobilenet_v2", "model.pretrained=false"])
    model = models.make_model(cfg, pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="(?s)another architecture.*missing: backbone"):
        load_matching(model, load_checkpoint(source)["model"], "model.init_from=x")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

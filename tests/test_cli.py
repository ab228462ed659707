"""End-to-end tests of the installed console scripts and of run_train/run_eval in-process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clitools import VOC_SAMPLE, needs_shared
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from deeplab_cli._paths import config_dir
from deeplab_cli.cli import train as train_mod
from deeplab_cli.config import checkpoints
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.data.synthetic import SyntheticSpec, ensure_synthetic_voc
from deeplab_cli.engine.runtime.checkpoint import load_checkpoint
from deeplab_cli.engine.train import trainer as trainer_mod

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# A tiny, fast version of the default (quickstart) run.
TINY = [
    "trainer.max_iters=4",
    "trainer.val_interval=2",
    "trainer.batch_size=2",
    "trainer.progress=false",
    "dataset.num_workers=0",
    "dataset.synthetic.num_train=6",
    "dataset.synthetic.num_val=3",
    "backbone.width_mult=0.125",
    "head.channels=16",
]


def cli(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic_voc(root, SyntheticSpec(num_train=6, num_val=3))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_root) -> Path:
    """One tiny training run through the installed console script."""
    run = tmp_path_factory.mktemp("train") / "run"
    proc = cli("deeplab-train", f"hydra.run.dir={run}", f"dataset.root={synthetic_root}", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_train_writes_contract_files(trained: Path) -> None:
    assert (trained / "checkpoints" / "last.pt").is_file()
    assert (trained / "checkpoints" / "best.pt").is_file()
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("mIoU", "pixel_accuracy", "mean_accuracy", "fw_iou", "per_class_iou", "num_images"):
        assert key in metrics
    assert metrics["num_images"] == 3
    assert len(metrics["per_class_iou"]) == 21
    assert list(trained.glob("tensorboard/events.out.tfevents.*"))
    state = load_checkpoint(trained / "checkpoints" / "last.pt")
    assert state["iteration"] == 4
    assert state["config"]["backbone"]["width_mult"] == 0.125
    assert {"model", "optimizer", "scheduler", "rng"} <= set(state)


def test_tensorboard_has_loss_lr_miou_and_panels(trained: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/mIoU", "val_iou/background"} <= scalars
    assert "val/panel_0" in acc.Tags()["images"]


def test_eval_reproduces_final_validation_and_saves_predictions(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = cli(
        "deeplab-eval",
        f"checkpoint={trained / 'checkpoints' / 'last.pt'}",
        f"hydra.run.dir={out}",
        "save_predictions=true",
        "eval.num_workers=0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    train_metrics = json.loads((trained / "metrics.json").read_text())
    eval_metrics = json.loads((out / "metrics.json").read_text())
    assert eval_metrics["mIoU"] == train_metrics["mIoU"]
    assert eval_metrics["per_class_iou"] == train_metrics["per_class_iou"]
    assert "mIoU" in proc.stdout and "background" in proc.stdout
    from PIL import Image

    from deeplab_cli.data.palette import voc_palette

    pngs = sorted((out / "predictions").glob("*.png"))
    assert len(pngs) == 3
    for png in pngs:
        img = Image.open(png)
        assert img.mode == "P" and img.getpalette()[:63] == voc_palette()[:63]


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.lrr=0.1", "optim.lrr"),
        ("trainer.max_iters=abc", "trainer.max_iters"),
        ("backbone.foo=1", "backbone.foo"),
    ],
)
def test_bad_config_fails_before_reading_data(tmp_path: Path, override: str, needle: str) -> None:
    data = tmp_path / "data"
    proc = cli("deeplab-train", f"hydra.run.dir={tmp_path / 'run'}", f"dataset.root={data}", override)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not data.exists(), "the synthetic set must not be generated before the config is checked"


def test_missing_voc_root_names_path_and_prepare_script(tmp_path: Path) -> None:
    proc = cli(
        "deeplab-train",
        f"hydra.run.dir={tmp_path / 'run'}",
        "dataset=voc",
        "dataset.root=/nonexistent",
        "model.pretrained=false",
    )
    assert proc.returncode == 1
    assert "/nonexistent" in proc.stderr and "deeplab-prepare voc --root /nonexistent" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_num_classes_mismatch_is_rejected(tmp_path: Path) -> None:
    proc = cli("deeplab-train", f"hydra.run.dir={tmp_path / 'run'}", "model.num_classes=5")
    assert proc.returncode == 1
    assert "model.num_classes=5" in proc.stderr and "dataset.num_classes=21" in proc.stderr


def test_multirun_sweep_leaves_one_run_dir_per_job(tmp_path: Path, synthetic_root: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = cli(
        "deeplab-train",
        "-m",
        "optim.lr=0.01,0.001",
        f"hydra.sweep.dir={sweep}",
        f"dataset.root={synthetic_root}",
        *[o.replace("max_iters=4", "max_iters=2") for o in TINY],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 2
    lrs = sorted(load_checkpoint(r / "checkpoints" / "last.pt")["config"]["optim"]["lr"] for r in runs)
    assert lrs == [0.001, 0.01]


def test_config_search_path_from_installed_script() -> None:
    proc = cli("deeplab-train", "--info", "searchpath", cwd=Path("/"))
    assert proc.returncode == 0
    assert str(config_dir()) in proc.stdout


# ----------------------------------------------------------------------------- in-process


def _compose(run_dir: Path, overrides: list[str]):
    return compose_train(overrides, run_dir)


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path: Path, synthetic_root: Path, monkeypatch) -> None:
    # dropout on: the resumed run must also restore the RNG that draws the dropout masks
    common = [
        f"dataset.root={synthetic_root}",
        *TINY,
        "trainer.max_iters=6",
        "trainer.val_interval=2",
        "head.dropout=0.5",
    ]
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    train_mod.run_train(_compose(full_dir, common))

    real_step, calls = trainer_mod.train_step, {"n": 0}

    def ctrl_c_during_step_4(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # Ctrl-C arrives in the middle of iteration 4
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_step", ctrl_c_during_step_4)
    before = signal.getsignal(signal.SIGINT)  # Python's Ctrl-C handler, or SIG_IGN under `nohup ... &`
    with pytest.raises(train_mod.TrainingInterrupted, match="resume=true") as info:
        train_mod.run_train(_compose(cut_dir, [*common, "trainer.val_interval=5"]))
    assert "iteration 4" in str(info.value)
    assert calls["n"] == 4, "the loop must stop after finishing the interrupted iteration"
    assert load_checkpoint(cut_dir / "checkpoints" / "last.pt")["iteration"] == 4
    assert signal.getsignal(signal.SIGINT) is before, "the run must restore the handler it found"
    monkeypatch.setattr(trainer_mod, "train_step", real_step)
    train_mod.run_train(_compose(cut_dir, [*common, "resume=true"]))

    # resuming a finished run trains nothing and reports the same validation
    again = train_mod.run_train(_compose(cut_dir, [*common, "resume=true"]))
    assert again["mIoU"] == json.loads((cut_dir / "metrics.json").read_text())["mIoU"]
    full = load_checkpoint(full_dir / "checkpoints" / "last.pt")["model"]
    resumed = load_checkpoint(cut_dir / "checkpoints" / "last.pt")["model"]
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0, msg=key)


def test_resume_true_without_checkpoint_is_an_error(tmp_path: Path, synthetic_root: Path) -> None:
    from deeplab_cli.engine.runtime.checkpoint import CheckpointError

    cfg = _compose(tmp_path / "run", [f"dataset.root={synthetic_root}", *TINY, "resume=true"])
    with pytest.raises(CheckpointError, match="last.pt"):
        train_mod.run_train(cfg)


def test_eval_override_on_stored_config(trained: Path) -> None:
    stored = load_checkpoint(trained / "checkpoints" / "last.pt")["config"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("eval", overrides=["checkpoint=x", "dataset.root=/elsewhere", "eval.num_workers=0"])
    merged = checkpoints.merge_overrides(stored, cfg, ["checkpoint=x", "dataset.root=/elsewhere"])
    assert merged.dataset.root == "/elsewhere"
    assert merged.backbone.width_mult == 0.125  # from the checkpoint, not eval.yaml's defaults
    assert merged.head.channels == 16


@needs_shared(VOC_SAMPLE)
def test_train_and_eval_on_real_voc_sample(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = cli(
        "deeplab-train",
        f"hydra.run.dir={run}",
        "dataset=voc",
        f"dataset.root={VOC_SAMPLE}",
        "dataset.allow_absent_classes=true",  # 4 training images: 8 of the 21 classes
        "dataset.crop_size=97",
        "trainer.max_iters=2",
        "trainer.val_interval=2",
        "trainer.batch_size=2",
        "trainer.progress=false",
        "dataset.num_workers=0",
        "backbone.width_mult=0.125",
        "head.channels=16",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["num_images"] == 8
    out = tmp_path / "eval"
    proc = cli(
        "deeplab-eval",
        f"checkpoint={run / 'checkpoints' / 'last.pt'}",
        f"hydra.run.dir={out}",
        "save_predictions=true",
        "eval.num_workers=0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from PIL import Image

    for png in (out / "predictions").glob("*.png"):
        image = Image.open(VOC_SAMPLE / "VOC2012" / "JPEGImages" / f"{png.stem}.jpg")
        assert Image.open(png).size == image.size
    assert len(list((out / "predictions").glob("*.png"))) == 8

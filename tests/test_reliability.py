"""Bad samples, non-finite losses, signals and crashes never cost a run its work."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_cli.cli import train as train_mod
from deeplab_cli.config import checkpoints
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.data.synthetic import SyntheticSpec, ensure_synthetic_voc
from deeplab_cli.data.voc import DatasetError
from deeplab_cli.engine.runtime.checkpoint import load_checkpoint
from deeplab_cli.engine.train import trainer as trainer_mod
from deeplab_cli.engine.train.loop import StepSettings, train_step
from deeplab_cli.engine.train.optim import poly_scheduler
from deeplab_cli.errors import ConfigError, user_message

BIN = Path(sys.executable).parent
TINY = [
    "trainer.batch_size=2",
    "trainer.progress=false",
    "trainer.val_interval=1000",
    "trainer.device=cpu",
    "backbone.width_mult=0.125",
    "head.channels=16",
    "dataset=voc",
    "dataset.crop_size=48",
    "dataset.num_workers=0",
    "dataset.allow_absent_classes=true",  # the 4 training images of the VOC sample hold 8 of the 21 classes
]

pytestmark = pytest.mark.usefixtures("one_thread")


def make_tree(root: Path, num_train: int = 6, num_val: int = 2) -> Path:
    """A small VOC-layout tree (synthetic images) that tests may damage."""
    ensure_synthetic_voc(root, SyntheticSpec(num_train=num_train, num_val=num_val))
    return root / "VOC2012"


def corrupt(voc: Path, with_mask: bool = True) -> tuple[Path, Path]:
    """Truncate the 2nd training JPEG and write label 42 into the 4th training mask."""
    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    jpeg = voc / "JPEGImages" / f"{ids[1]}.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    mask_path = voc / "SegmentationClass" / f"{ids[3]}.png"
    if not with_mask:
        return jpeg, mask_path
    with Image.open(mask_path) as img:
        palette = img.getpalette()
        mask = np.array(img)
    mask[5:9, 5:9] = 42
    out = Image.fromarray(mask, mode="P")
    out.putpalette(palette)
    out.save(mask_path)
    return jpeg, mask_path


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([str(BIN / "deeplab-train"), *args], capture_output=True, text=True, env=env, **kwargs)


# --- bad samples --------------------------------------------------------------------------------


def test_bad_samples_stop_training_naming_the_file(tmp_path: Path) -> None:
    voc = make_tree(tmp_path / "data")
    jpeg, _ = corrupt(voc, with_mask=False)
    run = tmp_path / "run"
    proc = cli(
        f"hydra.run.dir={run}",
        f"dataset.root={voc.parent}",
        *TINY,
        "dataset.num_workers=2",  # the error comes from a DataLoader worker process
        "trainer.max_iters=8",
        "trainer.checkpoint_interval=1",
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("Error: image ") and str(jpeg) in err and "truncated" in err
    assert "Traceback" not in proc.stderr and "dataset.on_error=skip" in err and "resume=true" in err
    assert "DataLoader worker process" in err
    # the batches before the bad one were trained and checkpointed; last.pt is intact
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert f"(iteration {state['iteration']}) is intact" in err


def test_bad_samples_are_skipped_counted_and_listed(tmp_path: Path) -> None:
    voc = make_tree(tmp_path / "data")
    jpeg, mask = corrupt(voc)
    common = [f"dataset.root={voc.parent}", *TINY, "trainer.max_iters=6"]
    with pytest.raises(DatasetError) as info:  # without skip: the first bad file met stops the run
        train_mod.run_train(compose_train(common, tmp_path / "raise"))
    assert str(jpeg) in str(info.value) or (str(mask) in str(info.value) and "value(s) 42 " in str(info.value))
    skip = [*common, "dataset.on_error=skip", "dataset.max_skipped=0.5"]  # 2 of 6 samples are bad here
    metrics = train_mod.run_train(compose_train(skip, tmp_path / "skip"))
    skipped = metrics["skipped_samples"]
    assert skipped["count"] == 2
    assert any(str(jpeg) in e and "cannot be read" in e for e in skipped["errors"])
    assert any(str(mask) in e and "value(s) 42 " in e for e in skipped["errors"])
    log = tmp_path / "skip" / "skipped_samples.jsonl"
    assert log.is_file() and json.loads((tmp_path / "skip" / "metrics.json").read_text())["skipped_samples"]
    assert load_checkpoint(tmp_path / "skip" / "checkpoints" / "last.pt")["iteration"] == 6


def test_worker_error_message_is_unwrapped() -> None:
    wrapped = DatasetError(
        "Caught DatasetError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 3, in f\n    raise X\ndeeplab_cli.data.voc.DatasetError: image /d/a.jpg cannot be read\n'
    )
    assert user_message(wrapped) == "image /d/a.jpg cannot be read (in DataLoader worker process 1)"
    assert user_message(DatasetError("plain")) == "plain"


# --- configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, needles",
    [
        ("dataset.crop_size=4", ["dataset.crop_size=4", "model.output_stride=8"]),
        ("trainer.on_nonfinite=ignore", ["trainer.on_nonfinite='ignore'", "stop, skip"]),
        ("dataset.on_error=ignore", ["dataset.on_error='ignore'", "raise, skip"]),
        ("trainer.grad_clip=0", ["trainer.grad_clip=0"]),
        ("trainer.checkpoint_interval=0", ["trainer.checkpoint_interval=0"]),
        ("model.output_stride=12", ["model.output_stride=12", "8, 16, 32"]),
    ],
)
def test_bad_configs_fail_before_weights_or_data(tmp_path: Path, override: str, needles: list[str]) -> None:
    # model.init_from names a file that does not exist: the config error must come first
    overrides = [f"dataset.root={tmp_path / 'nothing'}", *TINY, override, "model.init_from=/no/such.pt"]
    with pytest.raises(ConfigError) as info:
        train_mod.run_train(compose_train(overrides, tmp_path / "run"))
    for needle in needles:
        assert needle in str(info.value)
    assert not (tmp_path / "nothing").exists()


# --- numerics -----------------------------------------------------------------------------------


def _nan_on_call(n: int, monkeypatch) -> None:
    real, calls = trainer_mod.train_step, {"n": 0}

    def step(model, batch, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            batch = [(torch.full_like(images, math.nan), labels) for images, labels in batch]
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_step", step)


def test_nan_loss_stops_with_iteration_and_last_finite_loss(tmp_path: Path, monkeypatch) -> None:
    voc = make_tree(tmp_path / "data")
    _nan_on_call(3, monkeypatch)
    overrides = [f"dataset.root={voc.parent}", *TINY, "trainer.max_iters=6", "trainer.checkpoint_interval=1"]
    cfg = compose_train(overrides, tmp_path / "run")
    with pytest.raises(trainer_mod.NonFiniteLoss) as info:
        train_mod.run_train(cfg)
    message = str(info.value)
    assert message.startswith("iteration 3: loss nan (the last finite loss was ")
    assert "at iteration 2)" in message and "trainer.on_nonfinite=skip" in message
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["iteration"] == 2 and "(iteration 2) is intact" in message
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_loss_skipped_when_asked(tmp_path: Path, monkeypatch) -> None:
    voc = make_tree(tmp_path / "data")
    _nan_on_call(3, monkeypatch)
    overrides = [f"dataset.root={voc.parent}", *TINY, "trainer.max_iters=5", "trainer.on_nonfinite=skip"]
    cfg = compose_train(overrides, tmp_path / "run")
    metrics = train_mod.run_train(cfg)
    assert metrics["nonfinite_steps_skipped"] == 1
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["iteration"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}


def test_gradient_clipping_bounds_the_update() -> None:
    torch.manual_seed(0)
    model = ConvNet()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    batch = [(torch.randn(2, 3, 8, 8) * 100, torch.randint(0, 4, (2, 8, 8)))]
    scheduler = poly_scheduler(optimizer, 10)
    step = train_step(model, batch, optimizer, scheduler, torch.device("cpu"), StepSettings("upsample", grad_clip=0.5))
    assert step.finite and step.grad_norm > 0.5  # the raw norm, before clipping
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert float(moved) == pytest.approx(0.5, rel=1e-4)  # lr 1: the step is exactly the clipped gradient


# --- signals and crashes ------------------------------------------------------------------------


def _start(run: Path, voc: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    args = [str(BIN / "deeplab-train"), f"hydra.run.dir={run}", f"dataset.root={voc.parent}", *TINY, *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not path.is_file():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_finishes(tmp_path: Path) -> None:
    voc = make_tree(tmp_path / "data")
    run = tmp_path / "run"
    proc = _start(run, voc, "trainer.max_iters=150", "trainer.checkpoint_interval=1")
    _wait_for(run / "checkpoints" / "last.pt", proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")["iteration"]
    assert f"SIGTERM after iteration {stopped};" in err and "resume=true" in err
    assert 0 < stopped < 150
    done = cli(
        f"hydra.run.dir={run}", f"dataset.root={voc.parent}", *TINY, "trainer.max_iters=150", "resume=auto", timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 150
    assert f"resumed from {run / 'checkpoints' / 'last.pt'} at iteration {stopped}" in done.stderr + done.stdout


@pytest.mark.slow
def test_sigkill_while_checkpointing_never_corrupts_last_pt(tmp_path: Path) -> None:
    voc = make_tree(tmp_path / "data")
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    # enough iterations that the kills land mid-run on a fast CPU (60 were all done within 2.5 s)
    common = ["trainer.max_iters=400", "trainer.checkpoint_interval=1"]
    rng = random.Random(0)
    iterations = []
    for attempt in range(3):
        proc = _start(run, voc, *common, *(["resume=true"] if attempt else []))
        if attempt == 0:
            _wait_for(last, proc)
        time.sleep(1.5 + rng.random())  # a checkpoint is written every iteration: likely mid-write
        proc.kill()
        proc.communicate(timeout=60)
        state = load_checkpoint(last)  # never truncated: the rename is atomic
        iterations.append(state["iteration"])
    assert iterations == sorted(iterations) and iterations[-1] < 400
    done = cli(f"hydra.run.dir={run}", f"dataset.root={voc.parent}", *TINY, *common, "resume=true", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_checkpoint(last)["iteration"] == 400
    assert not list(last.parent.glob(".*.tmp")), "stale temporary files are removed on resume"


def test_training_checks_the_lists_before_it_starts(tmp_path: Path) -> None:
    voc = make_tree(tmp_path / "data")
    train_list = voc / "ImageSets" / "Segmentation" / "train.txt"
    ids = train_list.read_text().split()
    train_list.write_text("\n".join([*ids, ids[0], "no_such_image"]) + "\n")
    overrides = [f"dataset.root={voc.parent}", *TINY, "trainer.max_iters=2"]
    with pytest.raises(DatasetError) as info:
        train_mod.run_train(compose_train(overrides, tmp_path / "run"))
    message = str(info.value)
    assert "duplicate_id" in message and "missing_image" in message and "no_such_image.jpg" in message
    assert "deeplab-check-data dataset=voc" in message
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    # with on_error=skip the run goes on; the missing sample is skipped and listed (4 iterations see every id)
    skip = [*overrides, "dataset.on_error=skip", "trainer.max_iters=4", "dataset.max_skipped=0.5"]  # 1 of 6
    metrics = train_mod.run_train(compose_train(skip, tmp_path / "skip"))
    assert metrics["skipped_samples"]["count"] == 1 and "no_such_image.jpg" in metrics["skipped_samples"]["errors"][0]


def test_unwritable_run_dir_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = cli(f"hydra.run.dir={blocker / 'run'}", "trainer.max_iters=1", timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"Error: cannot write to the run directory (hydra.run.dir) {blocker / 'run'}: Not a directory [ENOTDIR]; "
        f"{blocker} is a file, not a folder. Choose a writable hydra.run.dir=... (a folder you can create files in, "
        "with free space)."
    )


def _tiny_checkpoint(tmp_path: Path, voc: Path) -> Path:
    overrides = [f"dataset.root={voc.parent}", *TINY, "trainer.max_iters=1"]
    train_mod.run_train(compose_train(overrides, tmp_path / "trained"))
    return tmp_path / "trained" / "checkpoints" / "last.pt"


def test_eval_bad_sample_raises_or_is_skipped(tmp_path: Path) -> None:
    from deeplab_cli.cli import evaluate as eval_mod

    voc = make_tree(tmp_path / "data", num_train=2, num_val=3)
    checkpoint = _tiny_checkpoint(tmp_path, voc)
    val_id = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[1]
    mask_path = voc / "SegmentationClass" / f"{val_id}.png"
    with Image.open(mask_path) as img:
        mask, palette = np.array(img), img.getpalette()
    mask[0, 0] = 42
    bad = Image.fromarray(mask, mode="P")
    bad.putpalette(palette)
    bad.save(mask_path)
    common = [f"checkpoint={checkpoint}", "eval.num_workers=0", "eval.progress=false", "eval.plots=false"]
    with pytest.raises(DatasetError, match=f"mask {mask_path} holds value"):
        eval_mod.run_eval(compose_train(common, tmp_path / "e1", config_name="eval"))
    metrics = eval_mod.run_eval(compose_train([*common, "dataset.on_error=skip"], tmp_path / "e2", config_name="eval"))
    assert metrics["num_images"] == 2 and metrics["skipped_samples"]["count"] == 1
    assert str(mask_path) in metrics["skipped_samples"]["errors"][0]


def test_checkpoint_that_disagrees_with_the_config_is_refused(tmp_path: Path) -> None:
    from deeplab_cli.engine.runtime.checkpoint import CheckpointError

    voc = make_tree(tmp_path / "data", num_train=2, num_val=2)
    checkpoint = _tiny_checkpoint(tmp_path, voc)
    cfg = compose_train([f"checkpoint={checkpoint}", "head.channels=32"], config_name="eval")
    with pytest.raises(CheckpointError) as info:
        checkpoints.load_for_eval(cfg, [f"checkpoint={checkpoint}", "head.channels=32"])
    assert str(checkpoint) in str(info.value) and "shape differs" in str(info.value)
    assert "nothing was loaded" in str(info.value)
    # resuming with a different architecture is refused the same way
    overrides = [f"dataset.root={voc.parent}", *TINY, "trainer.max_iters=2", "head.channels=32", "resume=true"]
    with pytest.raises(CheckpointError, match="shape differs"):
        train_mod.run_train(compose_train(overrides, tmp_path / "trained"))

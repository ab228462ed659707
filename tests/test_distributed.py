"""Data-parallel training with torchrun (gloo on CPU): same result as one process, one run dir, rank-0 files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch import nn

from deeplab_cli.config import datasets, runtime
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.engine.eval.metrics import ConfusionMatrix
from deeplab_cli.engine.eval.pipeline import EvalSettings
from deeplab_cli.engine.runtime import distributed
from deeplab_cli.engine.runtime.checkpoint import load_checkpoint
from deeplab_cli.engine.train.loop import StepSettings, train_step
from deeplab_cli.errors import ConfigError

BIN = Path(sys.executable).parent

# Every pixel is valid (no boundary band, no scaling, crop <= image) and nothing is
# random per process (no dropout, no BatchNorm): the mean loss of each rank's half of
# the batch then averages to the mean over the whole batch, as one process computes it.
EXACT = [
    "trainer.max_iters=4",
    "trainer.val_interval=4",
    "trainer.batch_size=4",
    "trainer.accumulate=2",
    "trainer.progress=false",
    "trainer.channels_last=false",  # the quick-start's NHWC kernels round differently at batch 2 and 4
    "dataset.num_workers=0",
    "dataset.synthetic.num_train=8",
    "dataset.synthetic.num_val=3",  # odd: rank 0 scores 2 images, rank 1 one
    "dataset.synthetic.boundary=0",
    "dataset.scale_range=[1.0,1.0]",
    "dataset.crop_size=48",
    "backbone.width_mult=0.125",
    "backbone.batch_norm=false",
    "head.channels=16",
    "head.dropout=0.0",
]


def _env() -> dict[str, str]:
    return {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}


def _torchrun(nproc: int, *args: str, module: str = "deeplab_cli.cli.train") -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "-m", module, *args]


def _succeeds(cmd: list[str], cwd: Path | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _run_dirs(cwd: Path) -> list[Path]:
    return sorted(p for p in (cwd / "outputs").glob("*/*") if p.is_dir())


@pytest.mark.slow
def test_two_processes_end_with_the_weights_of_one(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    single_dir = tmp_path / "single"
    _succeeds([str(BIN / "deeplab-train"), f"hydra.run.dir={single_dir}", f"dataset.root={root}", *EXACT])
    cwd = tmp_path / "ddp"
    cwd.mkdir()
    _succeeds(_torchrun(2, f"dataset.root={root}", *EXACT), cwd=cwd)

    # both ranks took rank 0's time stamp: one run dir, rank 0 alone wrote the shared files
    (run,) = _run_dirs(cwd)
    assert (run / ".hydra" / "config.yaml").is_file()
    assert len(list((run / "tensorboard").iterdir())) == 1
    assert (run / "train.log").read_text().count("final validation") == 1
    assert "INFO" not in (run / "train_rank1.log").read_text()

    a = load_checkpoint(single_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and not any(k.startswith("module.") for k in b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)

    # distributed evaluation: rank 0 scored images 0 and 2, rank 1 image 1; each counts once
    m1 = json.loads((single_dir / "metrics.json").read_text())
    m2 = json.loads((run / "metrics.json").read_text())
    masks = (root / "VOC2012" / "SegmentationClass").glob("*_val_*.png")
    valid = sum(int((np.array(Image.open(p)) != 255).sum()) for p in masks)
    assert m2["num_images"] == m1["num_images"] == 3
    assert m2["world_size"] == 2
    assert int(np.sum(m2["confusion_matrix"])) == int(np.sum(m1["confusion_matrix"])) == valid
    differing = np.abs(np.array(m2["confusion_matrix"]) - np.array(m1["confusion_matrix"])).sum()
    assert differing <= 0.002 * valid, "the two runs' predictions should agree up to float rounding"


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_once_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [
        f"hydra.run.dir={run}",
        f"dataset.root={tmp_path / 'synthetic'}",
        *EXACT,
        "trainer.max_iters=200",
        "trainer.val_interval=200",
        "trainer.checkpoint_interval=1",
    ]
    proc = subprocess.Popen(_torchrun(2, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)  # what scancel / a pre-empting scheduler does to the launcher
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    stopped_at = load_checkpoint(last)["iteration"]
    assert 0 < stopped_at < 200, err[-3000:]
    assert not list(last.parent.glob(".*.tmp"))

    _succeeds(_torchrun(2, *args, "resume=true"))
    assert f"resumed from {last} at iteration {stopped_at}" in (run / "train.log").read_text()
    assert load_checkpoint(last)["iteration"] == 200


# ---------------------------------------------------------------- collectives in a 2-process gloo group


def _collectives_worker(rank: int, store: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        info = distributed.current()
        assert (info.rank, info.world_size) == (rank, 2)
        assert distributed.any_rank(rank == 1) is True  # a signal that reached only rank 1 stops both
        assert distributed.any_rank(False) is False
        assert float(distributed.all_reduce_mean(torch.tensor(float(rank)))) == 0.5
        assert distributed.broadcast({"from": rank}) == {"from": 0}

        # every image scored once: each rank takes its shard, the counts are summed
        gen = torch.Generator().manual_seed(0)
        preds = [torch.randint(0, 3, (4, 5), generator=gen) for _ in range(5)]
        targets = [torch.randint(0, 3, (4, 5), generator=gen) for _ in range(5)]
        mine = EvalSettings(num_classes=3, shard=(rank, 2)).indices(5)
        assert mine == ([0, 2, 4] if rank == 0 else [1, 3])
        cm = ConfusionMatrix(3)
        for i in mine:
            cm.update(preds[i], targets[i])
        cm.all_reduce()
        torch.save(cm.matrix, Path(results, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_collectives_and_sharded_confusion_matrix(tmp_path: Path) -> None:
    mp.start_processes(
        _collectives_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="fork"
    )
    gen = torch.Generator().manual_seed(0)
    preds = [torch.randint(0, 3, (4, 5), generator=gen) for _ in range(5)]
    targets = [torch.randint(0, 3, (4, 5), generator=gen) for _ in range(5)]
    full = ConfusionMatrix(3)
    for p, t in zip(preds, targets, strict=True):
        full.update(p, t)
    for rank in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), full.matrix)
    assert int(full.matrix.sum()) == 5 * 20


def test_single_process_helpers_are_no_ops() -> None:
    assert distributed.current() == distributed.DistInfo()
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    value = torch.tensor(3.0)
    assert distributed.all_reduce_mean(value) is value
    model = nn.Conv2d(1, 1, 1)
    assert distributed.wrap(model, torch.device("cpu"), distributed.DistInfo(), sync_bn=False) is model
    assert distributed.hydra_overrides(distributed.DistInfo()) == []
    assert "hydra.output_subdir=null" in distributed.hydra_overrides(distributed.DistInfo(rank=1, world_size=2))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_index_once(world: int) -> None:
    shards = [distributed.shard(list(range(10)), r, world) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(10))


def test_from_env_reads_torchrun_variables(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = distributed.from_env()
    assert (info.rank, info.world_size, info.local_rank, info.enabled, info.is_main) == (3, 8, 1, True, False)


def test_batch_larger_than_the_split_names_the_key(tmp_path: Path) -> None:
    cfg = compose_train([f"dataset.root={tmp_path}", "dataset.synthetic.num_train=3", "trainer.batch_size=4"])
    with pytest.raises(ConfigError, match=r"trainer.batch_size=4 is larger than the training split 'train' \(3 images"):
        datasets.make_train_loader(cfg, 0)


def test_global_batch_must_split_between_processes() -> None:
    cfg = compose_train(["trainer.batch_size=10"])
    runtime.validate_distributed(cfg, 2, torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"trainer.batch_size=10 .* 4 processes.*multiple of 4"):
        runtime.validate_distributed(cfg, 4, torch.device("cpu"))


def test_sync_bn_on_cpu_is_a_clear_error() -> None:
    cfg = compose_train(["trainer.batch_size=4", "trainer.sync_bn=true"])
    runtime.validate_distributed(cfg, 1, torch.device("cpu"))  # one process: nothing to synchronise
    with pytest.raises(ConfigError, match="trainer.sync_bn=true needs one GPU per process"):
        runtime.validate_distributed(cfg, 2, torch.device("cpu"))


def test_sync_bn_keeps_parameters_and_state_dict_keys() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    keys = list(model.state_dict())
    converted = distributed.convert_sync_bn(model, distributed.DistInfo(rank=0, world_size=2))
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == 2
    assert list(converted.state_dict()) == keys
    assert distributed.convert_sync_bn(model, distributed.DistInfo()) is model


class _CountingNoSync(nn.Module):
    """A model with DDP's ``no_sync``: records which micro-batches deferred the gradient all-reduce."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.deferred: list[int] = []
        self.forwards = 0

    def forward(self, x):
        self.forwards += 1
        return {"out": self.conv(x)}

    def no_sync(self):
        import contextlib

        self.deferred.append(self.forwards)
        return contextlib.nullcontext()


def test_gradient_accumulation_defers_the_all_reduce_until_the_last_micro_batch() -> None:
    model = _CountingNoSync()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    batches = [(torch.randn(1, 3, 4, 4), torch.randint(0, 2, (1, 4, 4))) for _ in range(3)]
    seen = []
    step = train_step(model, batches, opt, sched, torch.device("cpu"), StepSettings("upsample"),
                      reduce_loss=lambda t: (seen.append(float(t)), t * 0 + 7.0)[1])  # fmt: skip
    assert model.deferred == [0, 1], "micro-batches 1 and 2 skip the all-reduce, the 3rd performs it"
    assert step.loss == 7.0 and len(seen) == 1, "the reported loss is the all-ranks mean"


class _TinySegmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.net(x)}


def _tiny_segmenter() -> nn.Module:
    torch.manual_seed(0)
    return _TinySegmenter()


def _sgd(model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # plain SGD: the step is lr x gradient, so scale shows
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _ddp_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 6, 6, generator=gen), torch.randint(0, 3, (4, 6, 6), generator=gen)


def _ddp_worker(rank: int, store: str, results: str, empty_rank: int) -> None:
    from datetime import timedelta

    # a short timeout: a rank that calls a different collective fails the test instead of hanging it
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=30))  # fmt: skip
    try:
        model = _tiny_segmenter()
        trained = distributed.wrap(model, torch.device("cpu"), distributed.current(), sync_bn=False)
        opt, sched = _sgd(model)
        images, labels = _ddp_batch()
        mine = [(images[2 * rank : 2 * rank + 2], labels[2 * rank : 2 * rank + 2])]
        steps = [train_step(trained, mine, opt, sched, torch.device("cpu"), StepSettings("upsample"),
                            reduce_loss=distributed.all_reduce_mean)]  # fmt: skip
        batches = [] if rank == empty_rank else mine  # this rank's samples were all skipped
        steps.append(train_step(trained, batches, opt, sched, torch.device("cpu"), StepSettings("upsample"),
                                reduce_loss=distributed.all_reduce_mean))  # fmt: skip
        torch.save({"state": model.state_dict(), "steps": steps}, Path(results, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_averages_gradients_with_sgd_and_an_empty_rank_skips_the_step_on_every_rank(tmp_path: Path) -> None:
    """Two ranks with half the batch each take the step one process takes on the whole batch, with plain
    SGD (AdamW would hide a gradient summed instead of averaged). Then rank 1's samples are all skipped
    (``dataset.on_error=skip``): before the fix it called the loss all-reduce while rank 0 sat in the
    gradient all-reduce; now both agree to skip, keep their weights, and report no loss (NaN, not 0.0)."""
    mp.start_processes(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path), 1), nprocs=2,
                       start_method="fork")  # fmt: skip
    single = _tiny_segmenter()
    opt, sched = _sgd(single)
    images, labels = _ddp_batch()
    one = train_step(single, [(images, labels)], opt, sched, torch.device("cpu"), StepSettings("upsample"))
    before = {k: v.clone() for k, v in _tiny_segmenter().state_dict().items()}
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        first, second = saved["steps"]
        assert first.loss == pytest.approx(one.loss, rel=1e-5) and not first.empty
        assert second.empty and np.isnan(second.loss)
        for key, value in single.state_dict().items():
            torch.testing.assert_close(saved["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
            assert not torch.equal(value, before[key]), f"{key}: the step changed nothing"


def test_a_step_without_samples_is_empty_not_a_zero_loss() -> None:
    model = _tiny_segmenter()
    opt, sched = _sgd(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = train_step(model, [], opt, sched, torch.device("cpu"), StepSettings("upsample"))
    assert step.empty and np.isnan(step.loss)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert sched.last_epoch == 1, "the iteration still counts for the LR schedule"


def test_bad_config_under_torchrun_fails_on_every_rank_with_the_message(tmp_path: Path) -> None:
    done = subprocess.run(
        _torchrun(2, f"hydra.run.dir={tmp_path / 'run'}", "trainer.batch_size=3", f"dataset.root={tmp_path / 'd'}"),
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    message = "trainer.batch_size=3 is the global batch and does not split evenly between 2 processes"
    assert f"[rank 1] Error: {message}" in done.stderr
    assert f"\nError: {message}" in done.stderr or done.stderr.startswith(f"Error: {message}")
    assert not (tmp_path / "d").exists(), "nothing is read or generated before the config is checked"


@pytest.mark.slow
def test_deeplab_eval_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    """Sharded evaluation with CRF, trimap and saved predictions: the same numbers and files as one process."""
    pytest.importorskip("pydensecrf")
    root, train_dir = tmp_path / "synthetic", tmp_path / "train"
    no_accumulate = [o for o in EXACT if not o.startswith("trainer.accumulate")]
    _succeeds([str(BIN / "deeplab-train"), f"hydra.run.dir={train_dir}", f"dataset.root={root}", *no_accumulate])
    common = [f"checkpoint={train_dir / 'checkpoints' / 'last.pt'}", "crf=deeplabv1_largefov", "crf.workers=1",
              "eval.trimap=[2,4]", "save_predictions=true", "eval.progress=false", "eval.num_workers=0"]  # fmt: skip
    one_dir = tmp_path / "eval1"
    _succeeds([str(BIN / "deeplab-eval"), f"hydra.run.dir={one_dir}", f"eval.cache_dir={tmp_path / 'cache1'}", *common])
    cwd = tmp_path / "ddp"
    cwd.mkdir()
    _succeeds(
        _torchrun(2, f"eval.cache_dir={tmp_path / 'cache2'}", *common, module="deeplab_cli.cli.evaluate"), cwd=cwd
    )
    (two_dir,) = _run_dirs(cwd)
    m1 = json.loads((one_dir / "metrics.json").read_text())
    m2 = json.loads((two_dir / "metrics.json").read_text())
    assert m2["world_size"] == 2 and m2["num_images"] == m1["num_images"] == 3
    assert m2["probabilities"]["network_images"] == 3
    for key in ("confusion_matrix", "mIoU", "mIoU_network", "trimap_miou", "trimap_miou_network"):
        assert m2[key] == m1[key], key
    assert m2["network"]["confusion_matrix"] == m1["network"]["confusion_matrix"]
    preds1 = sorted(p.name for p in (one_dir / "predictions").iterdir())
    assert preds1 == sorted(p.name for p in (two_dir / "predictions").iterdir()) and len(preds1) == 3
    for name in preds1:
        a = np.array(Image.open(one_dir / "predictions" / name))
        assert np.array_equal(a, np.array(Image.open(two_dir / "predictions" / name))), name
    assert (two_dir / "plots" / "confusion_matrix.png").is_file()
    assert (two_dir / "evaluate_rank1.log").is_file()

"""Cluster runs: SIGUSR1/SIGUSR2 write a checkpoint, SLURM jobs are requeued and resume; submitit sweeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deeplab_cli.cli import train as train_mod
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.data.synthetic import SyntheticSpec, ensure_synthetic_voc
from deeplab_cli.engine.runtime import slurm
from deeplab_cli.engine.runtime.checkpoint import load_checkpoint
from deeplab_cli.engine.runtime.signals import EXIT_CODES, StopOnSignals
from deeplab_cli.engine.train import trainer as trainer_mod

BIN = Path(sys.executable).parent
TINY = [
    "trainer.val_interval=100",
    "trainer.batch_size=2",
    "trainer.progress=false",
    "dataset.num_workers=0",
    "dataset.synthetic.num_train=6",
    "dataset.synthetic.num_val=2",
    "backbone.width_mult=0.125",
    "head.channels=16",
]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic_voc(root, SyntheticSpec(num_train=6, num_val=2))
    return root


def test_usr_signals_stop_and_hand_over_to_the_handler_they_replaced() -> None:
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with StopOnSignals() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.requested is signal.SIGUSR2
            assert stop.exit_code == EXIT_CODES[signal.SIGUSR2] == 140
        assert calls == [], "the earlier handler waits until the checkpoint is written"
        handoff = stop.handoff()
        assert handoff is not None
        handoff()
        assert calls == [signal.SIGUSR2]
        with StopOnSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.handoff() is None, "Python's own Ctrl-C handler is not a scheduler's"
    finally:
        signal.signal(signal.SIGUSR2, previous)


def _fake_scontrol(folder: Path, exit_code: int = 0) -> Path:
    """An ``scontrol`` that records its arguments."""
    folder.mkdir(exist_ok=True)
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{folder}/calls.txt"\necho "denied" >&2\nexit {exit_code}\n')
    script.chmod(0o755)
    return folder / "calls.txt"


def test_usr1_in_a_slurm_job_checkpoints_requeues_and_the_requeued_job_resumes(
    tmp_path: Path, synthetic_root: Path, monkeypatch
) -> None:
    calls = _fake_scontrol(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    run = tmp_path / "run"
    overrides = [f"dataset.root={synthetic_root}", *TINY, "trainer.max_iters=6"]
    real_step, seen = trainer_mod.train_step, {"n": 0}

    def time_limit_warning_at_3(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] == 3:  # sbatch --signal=USR1@120: two minutes left
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_step", time_limit_warning_at_3)
    with pytest.raises(train_mod.TrainingInterrupted, match="SLURM job 4242 is requeued") as info:
        train_mod.run_train(compose_train(overrides, run))
    assert info.value.exit_code == 138 and info.value.handoff is None
    assert calls.read_text().split() == ["requeue", "4242"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 3
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL

    # SLURM starts the job again with the same command (resume defaults to false)
    monkeypatch.setattr(trainer_mod, "train_step", real_step)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    train_mod.run_train(compose_train(overrides, run))
    assert seen["n"] == 3, "iterations 1-3 were not trained again"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 6


def test_failed_requeue_says_how_to_continue(tmp_path: Path, monkeypatch, caplog) -> None:
    calls = _fake_scontrol(tmp_path / "bin", exit_code=1)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert slurm.requeue("77") is False
    assert calls.read_text().split() == ["requeue", "77"]
    assert "denied" in caplog.text and "--requeue" in caplog.text
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert slurm.requeue("77") is False
    assert "scontrol is not on PATH" in caplog.text


def test_slurm_job_id_and_restart_count(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "100")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "90")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm.job_id() == "90_3"  # array tasks are requeued by their array id
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    assert slurm.job_id() == "100"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert slurm.restart_count() == 2
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    assert slurm.restart_count() == 0


def test_slurm_launcher_config_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from deeplab_cli._paths import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=deeplab_slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.signal_delay_s, launcher.max_num_timeout, launcher.tasks_per_node) == (120, 5, 1)


def _task_pids(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (submitit's task processes)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmd:
                pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_submitit_preemption_checkpoints_requeues_and_resumes(tmp_path: Path, synthetic_root: Path) -> None:
    """Hydra's submitit launcher (local executor): USR2 -> last.pt -> submitit requeues -> the job resumes."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    cmd = [
        str(BIN / "deeplab-train"), "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}",
        "hydra.launcher.timeout_min=10", "resume=auto", f"dataset.root={synthetic_root}", *TINY,
        "trainer.max_iters=150", "trainer.checkpoint_interval=1",
    ]  # fmt: skip
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    last = sweep / "0" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the job ended before it could be pre-empted"
    tasks = _task_pids("submitit.core._submit")
    assert tasks, "no submitit task process found"
    for pid in tasks:
        os.kill(pid, signal.SIGUSR2)  # what SLURM sends before the time limit (--signal=USR2@...)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    log = (sweep / "0" / "train.log").read_text()
    assert "resumed from" in log, log[-2000:]
    resumed_at = int(log.split("resumed from")[1].split("at iteration")[1].split()[0])
    assert 0 < resumed_at < 150
    assert load_checkpoint(last)["iteration"] == 150
    assert json.loads((sweep / "0" / "metrics.json").read_text())["iteration"] == 150
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in logs


@pytest.mark.slow
def test_submitit_job_with_two_tasks_trains_data_parallel(tmp_path: Path, synthetic_root: Path) -> None:
    """``hydra.launcher.tasks_per_node=2``: submitit's ranks become a 2-process DDP job in one run dir."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        [str(BIN / "deeplab-train"), "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
         f"hydra.sweep.dir={sweep}", f"dataset.root={synthetic_root}", *TINY, "trainer.max_iters=2"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["num_images"] == 2
    assert len(list((sweep / "0" / "tensorboard").iterdir())) == 1

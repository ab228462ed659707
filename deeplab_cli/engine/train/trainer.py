"""The training loop: iterations, logging, validation, checkpoints and stop signals. It never sees the config.

``deeplab-train`` (``cli/train.py``) turns the config into a :class:`TrainSettings`, builds
the model, optimiser and data, and hands this loop two callables for what needs the
config: ``validate`` (the validation split) and ``save`` (a checkpoint with the config in
it). What a step does is :func:`~.loop.train_step`'s; what happens between steps (when to
validate, keep ``best.pt``, stop on NaN, wind down on SIGTERM) is here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ...data.layout import DatasetError
from ...errors import DeepLabError, user_message
from ..report.logger import TensorBoardLogger
from ..report.progress import IntervalMeter
from ..runtime import distributed, slurm
from ..runtime.checkpoint import atomic_link
from ..runtime.signals import REQUEUE_SIGNALS, StopOnSignals
from .loop import StepResult, StepSettings, train_step

log = logging.getLogger(__name__)

NONFINITE_POLICIES = ("stop", "skip")
Batch = list[tuple[Tensor, Tensor]]


class TrainingInterrupted(DeepLabError):
    """A stop signal arrived; ``last.pt`` holds the last finished iteration.

    ``handoff`` is the signal handler ours replaced (submitit's requeue), to be called
    once the run has been wound down.
    """

    def __init__(self, message: str, exit_code: int = 130, handoff: Callable[[], None] | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.handoff = handoff


class NonFiniteLoss(DeepLabError):
    """The loss (or gradient norm) became NaN/inf; the weights of that step were not applied."""


@dataclass(frozen=True)
class TrainSettings:
    """``trainer.*`` as values: the schedule of steps, validations and checkpoints."""

    max_iters: int
    batch_size: int  # the global batch of one micro-batch (images/s counts batch_size x accumulate per step)
    accumulate: int
    val_interval: int
    log_interval: int
    checkpoint_interval: int | None
    step: StepSettings
    on_nonfinite: str = "stop"
    compile: bool = False
    sync_bn: bool = False
    progress: bool = True


@dataclass
class Progress:
    """What the loop reports when it stops: the best mIoU, what last.pt holds, the last finite loss."""

    best: float
    saved: int
    last_finite: tuple[int, float] | None = None
    nonfinite_steps: int = 0
    empty_steps: int = 0  # every sample of the step skipped (dataset.on_error=skip): no step, no loss


@dataclass
class Trainer:
    """Iterations ``start+1 .. max_iters`` of ``model`` with ``optimizer``.

    ``model`` is the eager module (validated and saved); the steps run its
    ``DistributedDataParallel`` wrapper under torchrun and its ``torch.compile`` version
    with ``compile``; all of them share its parameters. ``validate(iteration, final)``
    returns the validation metrics; ``save(path, iteration, best_miou)`` writes a checkpoint
    (called on rank 0 only).
    """

    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    settings: TrainSettings
    run_dir: Path
    tb: TensorBoardLogger
    validate: Callable[[int, bool], dict[str, Any]]
    save: Callable[[Path, int, float], None]

    @property
    def last(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def run(self, batches: Iterator[Batch], start: int, best: float) -> dict[str, Any]:
        """Train from iteration ``start`` (whose best validation mIoU was ``best``); the last validation's metrics
        (empty when ``start`` is already ``max_iters``), with the skip counts and the training speed."""
        s, info = self.settings, distributed.current()
        trained = distributed.wrap(self.model, self.device, info, s.sync_bn)
        trained = torch.compile(trained) if s.compile else trained
        progress = Progress(best=best, saved=start)
        reduce_loss = distributed.all_reduce_mean if info.enabled else None
        metrics: dict[str, Any] = {}
        seconds = 0.0  # loading + steps, without validation and checkpoints: images/s of the sweep summary
        bar = tqdm(total=s.max_iters, initial=start, desc="train", disable=not (s.progress and info.is_main),
                   dynamic_ncols=True)  # fmt: skip
        meter = IntervalMeter(s.batch_size * s.accumulate)
        with StopOnSignals() as stop, bar, logging_redirect_tqdm():  # log lines print above the bar
            for it in range(start + 1, s.max_iters + 1):
                tick = time.perf_counter()
                batch = self._next_batch(batches, it, progress)
                loaded = time.perf_counter()
                step = train_step(trained, batch, self.optimizer, self.scheduler, self.device, s.step,
                                  scaler=self.scaler, reduce_loss=reduce_loss)  # fmt: skip
                seconds += time.perf_counter() - tick
                meter.add(loaded - tick, time.perf_counter() - loaded, step.loss, step.terms,
                          counted=step.finite and not step.empty)  # fmt: skip
                bar.update(1)
                self._check_finite(step, it, progress)
                if it % s.log_interval == 0 or it == s.max_iters:
                    meter = self._log_progress(it, step, meter, seconds / (it - start))
                    if not step.empty:
                        bar.set_postfix(loss=f"{step.loss:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                metrics = self._after_step(it, progress) or metrics
                if distributed.any_rank(stop.requested is not None) and it < s.max_iters:
                    self._save("last.pt", it, progress)
                    distributed.barrier()  # no rank exits (and makes torchrun stop the others) before last.pt is whole
                    raise self._interrupted(stop, it)
        return self._summary(metrics, progress, start, seconds)

    def _log_progress(self, it: int, step: StepResult, meter: IntervalMeter, per_iteration: float) -> IntervalMeter:
        """The interval's line in ``train.log`` (and the bar's postfix and TensorBoard); a fresh meter."""
        lr = self.optimizer.param_groups[0]["lr"]
        if not step.empty:
            self.tb.scalars({"train/loss": step.loss, "train/lr": lr}, it)
            self.tb.scalars({f"train/loss_{name}": value for name, value in step.terms.items() if name != "out"}, it)
        if distributed.current().is_main:
            log.info(meter.line(it, self.settings.max_iters, lr, per_iteration, self.device))
        return IntervalMeter(meter.images_per_iteration)

    def _after_step(self, it: int, progress: Progress) -> dict[str, Any] | None:
        """Validate (and keep ``best.pt``) or checkpoint when the schedule says so; the metrics if validated."""
        s = self.settings
        if it % s.val_interval == 0 or it == s.max_iters:
            metrics = self.validate(it, it == s.max_iters)
            log.info("iteration %d: val mIoU %.2f", it, metrics["mIoU"])
            improved = metrics["mIoU"] > progress.best
            progress.best = max(progress.best, metrics["mIoU"])
            self._save("last.pt", it, progress)
            if improved and distributed.current().is_main:
                atomic_link(self.last, self.last.parent / "best.pt")  # the same bytes: no second write
            return metrics
        if it % (s.checkpoint_interval or s.val_interval) == 0:
            self._save("last.pt", it, progress)
        return None

    def _save(self, name: str, it: int, progress: Progress) -> None:
        if distributed.current().is_main:
            self.save(self.last.parent / name, it, progress.best)
        if name == "last.pt":
            progress.saved = it

    def _summary(self, metrics: dict[str, Any], progress: Progress, start: int, seconds: float) -> dict[str, Any]:
        s = self.settings
        if progress.nonfinite_steps:
            metrics["nonfinite_steps_skipped"] = progress.nonfinite_steps
        if progress.empty_steps:
            metrics["empty_steps_skipped"] = progress.empty_steps
        if metrics and s.max_iters > start and seconds > 0:
            metrics["train_images_per_s"] = (s.max_iters - start) * s.batch_size * s.accumulate / seconds
        return metrics

    def _interrupted(self, stop: StopOnSignals, it: int) -> TrainingInterrupted:
        """The error that ends an interrupted run; on SLURM, USR1/USR2 also requeue the job.

        Under submitit its own handler requeues (``handoff``); in a plain ``sbatch --requeue``
        job rank 0 calls ``scontrol requeue`` and the job resumes when it starts again.
        """
        name = stop.requested.name if stop.requested is not None else "a signal to another rank"
        handoff = stop.handoff()
        how = f"Continue with deeplab-train hydra.run.dir={self.run_dir} resume=true (and the same overrides)."
        job = slurm.job_id()
        main_rank = distributed.current().is_main
        if handoff is None and stop.requested in REQUEUE_SIGNALS and job and main_rank and slurm.requeue(job):
            how = f"SLURM job {job} is requeued and resumes from it."
        elif handoff is not None:
            how = "The scheduler's handler (submitit) requeues the job, which resumes from it."
        message = f"{name} after iteration {it}; {self.last} holds it. {how}"
        return TrainingInterrupted(message, stop.exit_code or 143, handoff)

    def _next_batch(self, batches: Iterator[Batch], it: int, progress: Progress) -> Batch:
        """The next accumulated batch; a bad sample stops the run with where its work is kept."""
        try:
            return next(batches)
        except DatasetError as exc:
            raise DatasetError(
                f"{user_message(exc)} Training stopped at iteration {it}; {self._kept(progress)} Fix or remove the "
                "file (deeplab-check-data lists every problem) or set dataset.on_error=skip, then "
                f"{self._again(progress)}"
            ) from None

    def _kept(self, progress: Progress) -> str:
        """What survives a stop: the checkpoint if one exists (never a file that is not there)."""
        if self.last.is_file():
            return f"{self.last} (iteration {progress.saved}) is intact."
        return "no checkpoint was written yet (nothing is lost but these iterations)."

    def _again(self, progress: Progress) -> str:
        if self.last.is_file():
            return f"continue with resume=true and the same hydra.run.dir ({self.run_dir})."
        return "run the same command again."

    def _check_finite(self, step: StepResult, it: int, progress: Progress) -> None:
        """``on_nonfinite``: stop with the iteration and the last finite loss, or count and go on."""
        if step.empty:
            progress.empty_steps += 1
            self.tb.scalars({"train/empty_steps_skipped": progress.empty_steps}, it)
            log.warning(
                "iteration %d: every sample of the batch was skipped (dataset.on_error=skip); no step taken", it
            )
            return
        if step.finite:
            progress.last_finite = (it, step.loss)
            return
        what = f"loss {step.loss}" if not math.isfinite(step.loss) else f"gradient norm {step.grad_norm}"
        if self.settings.on_nonfinite == "skip":
            progress.nonfinite_steps += 1
            self.tb.scalars({"train/nonfinite_steps_skipped": progress.nonfinite_steps}, it)
            log.warning("iteration %d: %s; step skipped (%d so far)", it, what, progress.nonfinite_steps)
            return
        before = (
            f"the last finite loss was {progress.last_finite[1]:.4f} at iteration {progress.last_finite[0]}"
            if progress.last_finite
            else "no finite loss was seen in this run"
        )
        raise NonFiniteLoss(
            f"iteration {it}: {what} ({before}). The step was not applied; {self._kept(progress)} Lower optim.lr, "
            "set trainer.grad_clip (e.g. 10), check the data, or set trainer.on_nonfinite=skip; then "
            f"{self._again(progress)}"
        )

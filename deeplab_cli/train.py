"""``deeplab-train``: a thin Hydra wrapper around :func:`run_train`."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from . import entry, factory
from ._paths import config_dir
from .config import register_configs
from .data.layout import DatasetError
from .data.segmentation import skipped_samples
from .engine import distributed, slurm
from .engine.checkpoint import (
    CheckpointError,
    atomic_link,
    atomic_save,
    check_writable,
    load_checkpoint,
    load_matching,
    load_weights,
    rng_state,
    set_rng_state,
)
from .engine.logger import TensorBoardLogger, format_table
from .engine.loop import StepResult, freeze_batchnorm, group_micro_batches, train_step
from .engine.losses import LossSpec
from .engine.optim import build_optimizer, param_groups, poly_scheduler
from .engine.precision import grad_scaler, to_memory_format
from .engine.signals import REQUEUE_SIGNALS, StopOnSignals
from .errors import DeepLabError, user_message
from .models.weights.provenance import Provenance, checkpoint_provenance, init_from_provenance
from .report import save_pictures

log = logging.getLogger("deeplab_cli.train")
register_configs()

#: One JSON line per skipped sample (``dataset.on_error=skip``), in the run dir.
SKIP_LOG = "skipped_samples.jsonl"


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


@dataclass
class _Progress:
    """What the loop reports when it stops: the best mIoU, what last.pt holds, the last finite loss."""

    best: float
    saved: int
    last_finite: tuple[int, float] | None = None
    nonfinite_steps: int = 0
    empty_steps: int = 0  # every sample of the step skipped (dataset.on_error=skip): no step, no loss


def _resume_from(run_dir: Path, resume: str) -> Path | None:
    for stale in (run_dir / "checkpoints").glob(".*.tmp"):  # a write cut short by SIGKILL or a crash
        stale.unlink(missing_ok=True)
    last = run_dir / "checkpoints" / "last.pt"
    if resume == "true" and not last.is_file():
        raise CheckpointError(f"resume=true but {last} does not exist; pass the run's hydra.run.dir=...")
    return last if resume in ("true", "auto") and last.is_file() else None


def _save(
    path: Path, model, optimizer, scheduler, iteration: int, cfg: DictConfig, best: float, scaler=None, init=None
) -> None:
    extra = {"scaler": scaler.state_dict()} if scaler is not None and scaler.is_enabled() else {}
    if init is not None:
        extra["init_weights"] = init
    atomic_save(
        {
            **extra,
            "format": "deeplab-cli",
            "version": 1,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "iteration": iteration,
            "best_miou": best,
            "rng": rng_state(),
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
        path,
    )


def validate_model(
    model, cfg: DictConfig, device, tb: TensorBoardLogger, step: int, run_dir: Path, final: bool = False
) -> dict[str, Any]:
    """Evaluate on ``dataset.val_split``; log metrics, a few image panels and the pictures.

    The confusion matrix and per-class IoU go to TensorBoard at every validation
    and, for the final one, to ``plots_dir`` as PNGs.
    """
    dataset = factory.make_eval_dataset(cfg, skip_log=run_dir / SKIP_LOG)
    main_rank = distributed.current().is_main
    plots_dir = run_dir / "plots" if final and main_rank else None
    n_vis = cfg.trainer.num_vis_images if main_rank else 0
    shown: list[int] = []  # under torchrun rank 0 scores every N-th image: show the first n_vis it gets

    def show(index: int, pred, target, stage: str) -> None:
        if len(shown) < n_vis:
            shown.append(index)
            tb.panel(f"val/panel_{len(shown) - 1}", dataset.load_rgb(index), target, pred, step)

    metrics = factory.evaluate_split(model, cfg, dataset, device, cfg.dataset.num_workers, show)
    tb.metrics(metrics, step)
    if main_rank:
        matrix = torch.tensor(metrics["confusion_matrix"])
        save_pictures(plots_dir, tb, step, matrix, factory.class_names(cfg), metrics)
    return metrics


def init_from_checkpoint(cfg: DictConfig) -> tuple[torch.nn.Module, Provenance]:
    """Start from any checkpoint ``factory.import_any_checkpoint`` knows (ours, torchvision, kazuto, VainF).

    The file decides the architecture and the input normalisation (``model.preprocess``);
    ``cfg`` is updated in place so that this run's own checkpoints rebuild the same
    model. The class count stays this run's (``model.num_classes``, by default the
    dataset's): when it differs from the file's, :func:`reheaded` puts the file's
    weights into a model with the new classifier(s).
    """
    try:
        state = load_checkpoint(cfg.model.init_from)
        imported = factory.import_any_checkpoint(state)
    except CheckpointError as exc:
        raise CheckpointError(f"model.init_from={cfg.model.init_from}: {exc}") from exc
    provenance = init_from_provenance(Path(cfg.model.init_from), state, imported.layout)
    init_from, num_classes = cfg.model.init_from, int(cfg.model.num_classes)
    for node, values in imported.config_overrides.items():
        # backbone/head are typed per option (replace the node); model/scales share one schema (merge)
        cfg[node] = OmegaConf.create(values) if node in ("backbone", "head") else OmegaConf.merge(cfg[node], values)
    file_classes = int(cfg.model.num_classes)
    cfg.model.init_from, cfg.model.pretrained, cfg.model.num_classes = init_from, False, num_classes
    for note in imported.notes:
        log.info("%s: %s", imported.layout, note)
    log.info("initialised from %s (%s, %d classes)", init_from, imported.layout, file_classes)
    return imported.model, provenance


def reheaded(cfg: DictConfig, source: torch.nn.Module) -> torch.nn.Module:
    """The architecture of ``cfg`` with every tensor of ``source`` whose name and shape fit.

    Fine-tuning onto another label set: the classifier(s) of ``source`` have the
    file's class count, so they are left freshly initialised (seeded by
    ``trainer.seed``), and their names are logged; everything else is copied exactly.
    """
    model = factory.make_model(cfg, pretrained=False)
    skipped = load_matching(model, source.state_dict(), f"model.init_from={cfg.model.init_from}")
    log.info(
        "model.init_from: new label set (%d classes): loaded %d tensors, re-initialised %d: %s",
        cfg.model.num_classes, len(model.state_dict()) - len(skipped), len(skipped), ", ".join(skipped),
    )  # fmt: skip
    return model


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.trainer.max_iters`` iterations; returns the final validation metrics.

    Under ``torchrun`` every rank runs this; rank 0 alone writes checkpoints, TensorBoard
    and ``metrics.json`` (see ``engine/distributed.py``).
    """
    info = distributed.current()
    if not info.is_main:  # rank 0 reports; the others only warn
        logging.getLogger("deeplab_cli").setLevel(logging.WARNING)
    factory.validate(cfg)  # before any weights or data are read
    imported, provenance = init_from_checkpoint(cfg) if cfg.model.init_from else (None, None)
    factory.validate(cfg)  # again: the imported file may have changed the architecture
    factory.resolve_preprocess(cfg)  # the checkpoints store the normalisation actually used
    device = distributed.device_for(factory.select_device(cfg.trainer.device), info)
    factory.validate_distributed(cfg, info.world_size, device)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_writable(run_dir / "checkpoints", "the checkpoint folder of the run directory (hydra.run.dir)")
    _check_data(cfg, info)
    spec = _loss_spec(cfg, run_dir, info)
    t = cfg.trainer
    resume = str(cfg.resume).lower()
    if resume == "false" and slurm.restart_count() > 0:
        log.warning("SLURM requeued this job (SLURM_RESTART_COUNT=%d): resume=auto", slurm.restart_count())
        resume = "auto"
    resume_path = distributed.broadcast(_resume_from(run_dir, resume) if info.is_main else None)
    torch.manual_seed(t.seed)
    if imported is not None and resume_path is None:
        same_classes = imported.num_classes == cfg.model.num_classes
        model = (imported if same_classes else reheaded(cfg, imported)).to(device)
    else:
        model, built = factory.make_model_with_provenance(cfg, cfg.model.pretrained and resume_path is None)
        model, provenance = model.to(device), provenance or built
    if t.sync_bn:
        model = distributed.convert_sync_bn(model, info)
    model = to_memory_format(model, t.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = t.cudnn_benchmark
    if t.freeze_bn:
        freeze_batchnorm(model)  # before building the optimizer: frozen affine terms are not optimised
    o = cfg.optim
    groups = param_groups(
        model, o.lr, o.weight_decay, o.head_lr_mult, o.bias_lr_mult, o.bias_weight_decay, o.backbone_lr_mult
    )
    optimizer = build_optimizer(o.name, groups, o.lr, o.momentum, o.nesterov, o.impl)
    scaler = grad_scaler(device, t.precision)
    scheduler = poly_scheduler(optimizer, t.max_iters, o.poly_power)
    start, best = 0, -1.0
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        load_weights(model, state["model"], str(resume_path))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        start, best = int(state["iteration"]), float(state["best_miou"])
        provenance = checkpoint_provenance(state)  # the run's start, not this process's (no weights loaded)
        log.info("resumed from %s at iteration %d", resume_path, start)
    log.info("initial weights: %s", provenance.describe())
    tb = TensorBoardLogger(run_dir / "tensorboard", enabled=info.is_main, palette=factory.palette(cfg))
    try:
        state_parts = (optimizer, scheduler, scaler, provenance.as_dict())
        metrics = _loop(model, state_parts, cfg, start, best, tb, run_dir, device, spec)
        if not metrics:  # resumed a finished run: nothing trained, report its validation
            metrics = validate_model(model, cfg, device, tb, t.max_iters, run_dir, final=True)
    finally:
        tb.close()
    metrics["iteration"] = t.max_iters
    metrics["init_weights"] = provenance.as_dict()
    if info.enabled:
        metrics["world_size"] = info.world_size
    if not info.is_main:
        return metrics
    skipped = skipped_samples(run_dir / SKIP_LOG)
    if skipped is not None:
        metrics["skipped_samples"] = skipped
        log.warning(
            "%d bad samples were skipped (dataset.on_error=skip):\n%s", skipped["count"], "\n".join(skipped["errors"])
        )
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("final validation:\n%s", format_table(metrics))
    return metrics


def _check_data(cfg: DictConfig, info: distributed.DistInfo) -> None:
    """The split lists before training; rank 0 first, as it may generate the synthetic dataset."""
    if info.is_main:
        for problem in factory.check_dataset_lists(cfg):  # raises unless dataset.on_error=skip
            log.warning("dataset check: %s: %s: %s (will be skipped)", problem.kind, problem.path, problem.reason)
    distributed.barrier()
    if not info.is_main:
        factory.check_dataset_lists(cfg)


def _loss_spec(cfg: DictConfig, run_dir: Path, info: distributed.DistInfo) -> LossSpec:
    """``loss.*``; counted class weights come from rank 0 (written to the run dir), the same on every rank."""
    if info.is_main:
        weights = factory.class_weights(cfg, run_dir)
    distributed.barrier()
    if not info.is_main:
        weights = factory.class_weights(cfg, run_dir, is_main=False)
    spec = factory.loss_spec(cfg, weights)
    if weights is not None:
        names = factory.class_names(cfg)
        log.info("class weights (%s): %s", cfg.loss.class_weights if isinstance(cfg.loss.class_weights, str) else
                 "given", ", ".join(f"{n} {w:.3f}" for n, w in zip(names, weights, strict=True)))  # fmt: skip
    if spec.ohem:
        log.info("OHEM: pixels with true-class probability < %g, at least %d", spec.ohem_thresh, spec.ohem_min_kept)
    return spec


def _loop(model, optim_state, cfg, start: int, best: float, tb, run_dir: Path, device, spec=None) -> dict[str, Any]:
    """Iterations ``start+1 .. max_iters`` with logging, validation and checkpoints.

    ``model`` is the eager module (validated and saved); the training steps run its
    ``DistributedDataParallel`` wrapper under torchrun and its ``torch.compile``
    version with ``trainer.compile``; all of them share its parameters.
    """
    optimizer, scheduler, scaler, init = optim_state
    t = cfg.trainer
    info = distributed.current()
    trained = distributed.wrap(model, device, info, t.sync_bn)
    trained = torch.compile(trained) if t.compile else trained
    last = run_dir / "checkpoints" / "last.pt"
    progress = _Progress(best=best, saved=start)
    metrics: dict[str, Any] = {}

    def save(name: str, it: int) -> None:
        if info.is_main:
            _save(last.parent / name, model, optimizer, scheduler, it, cfg, progress.best, scaler, init)
        if name == "last.pt":
            progress.saved = it

    loader = factory.make_train_loader(cfg, start, run_dir / SKIP_LOG, info.rank, info.world_size)
    steps = group_micro_batches(loader, t.accumulate)
    every = t.checkpoint_interval or t.val_interval
    reduce_loss = distributed.all_reduce_mean if info.enabled else None
    show_bar = t.progress and info.is_main
    bar = tqdm(total=t.max_iters, initial=start, desc="train", disable=not show_bar, dynamic_ncols=True)
    train_seconds = 0.0  # loading + steps, without validation and checkpoints: images/s of the sweep summary
    with StopOnSignals() as stop, bar:
        for it in range(start + 1, t.max_iters + 1):
            tick = time.perf_counter()
            batch = _next_batch(steps, it, last, progress)
            step = train_step(
                trained, batch, optimizer, scheduler, t.label_policy, device, t.freeze_bn, t.grad_clip,
                t.precision, scaler, t.channels_last, reduce_loss, spec,
            )  # fmt: skip
            train_seconds += time.perf_counter() - tick
            bar.update(1)
            _check_finite(step, it, t.on_nonfinite, last, progress, tb)
            if (it % t.log_interval == 0 or it == t.max_iters) and not step.empty:
                lr = optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{step.loss:.4f}", lr=f"{lr:.2e}")
                tb.scalars({"train/loss": step.loss, "train/lr": lr}, it)
            if it % t.val_interval == 0 or it == t.max_iters:
                metrics = validate_model(model, cfg, device, tb, it, run_dir, final=it == t.max_iters)
                log.info("iteration %d: val mIoU %.2f", it, metrics["mIoU"])
                improved = metrics["mIoU"] > progress.best
                progress.best = max(progress.best, metrics["mIoU"])
                save("last.pt", it)
                if improved and info.is_main:
                    atomic_link(last, last.parent / "best.pt")  # the same bytes: no second write
            elif it % every == 0:
                save("last.pt", it)
            if distributed.any_rank(stop.requested is not None) and it < t.max_iters:
                save("last.pt", it)
                distributed.barrier()  # no rank exits (and makes torchrun stop the others) before last.pt is whole
                raise _interrupted(stop, it, last, run_dir, info.is_main)
    if progress.nonfinite_steps:
        metrics["nonfinite_steps_skipped"] = progress.nonfinite_steps
    if progress.empty_steps:
        metrics["empty_steps_skipped"] = progress.empty_steps
    if metrics and t.max_iters > start and train_seconds > 0:
        metrics["train_images_per_s"] = (t.max_iters - start) * t.batch_size * t.accumulate / train_seconds
    return metrics


def _interrupted(stop: StopOnSignals, it: int, last: Path, run_dir: Path, main_rank: bool) -> TrainingInterrupted:
    """The error that ends an interrupted run; on SLURM, USR1/USR2 also requeue the job.

    Under submitit its own handler requeues (``handoff``); in a plain ``sbatch --requeue``
    job rank 0 calls ``scontrol requeue`` and the job resumes when it starts again.
    """
    name = stop.requested.name if stop.requested is not None else "a signal to another rank"
    handoff = stop.handoff()
    how = f"Continue with deeplab-train hydra.run.dir={run_dir} resume=true (and the same overrides)."
    job = slurm.job_id()
    if handoff is None and stop.requested in REQUEUE_SIGNALS and job and main_rank and slurm.requeue(job):
        how = f"SLURM job {job} is requeued and resumes from it."
    elif handoff is not None:
        how = "The scheduler's handler (submitit) requeues the job, which resumes from it."
    return TrainingInterrupted(f"{name} after iteration {it}; {last} holds it. {how}", stop.exit_code or 143, handoff)


def _next_batch(steps, it: int, last: Path, progress: _Progress):
    """The next accumulated batch; a bad sample stops the run with where its work is kept."""
    try:
        return next(steps)
    except DatasetError as exc:
        raise DatasetError(
            f"{user_message(exc)} Training stopped at iteration {it}; {last} (iteration {progress.saved}) is "
            "intact. Fix or remove the file (deeplab-check-data lists every problem) or set "
            "dataset.on_error=skip, then continue with resume=true and the same hydra.run.dir."
        ) from None


def _check_finite(step: StepResult, it: int, policy: str, last: Path, progress: _Progress, tb) -> None:
    """``trainer.on_nonfinite``: stop with the iteration and the last finite loss, or count and go on."""
    if step.empty:
        progress.empty_steps += 1
        tb.scalars({"train/empty_steps_skipped": progress.empty_steps}, it)
        log.warning("iteration %d: every sample of the batch was skipped (dataset.on_error=skip); no step taken", it)
        return
    if step.finite:
        progress.last_finite = (it, step.loss)
        return
    what = f"loss {step.loss}" if not math.isfinite(step.loss) else f"gradient norm {step.grad_norm}"
    if policy == "skip":
        progress.nonfinite_steps += 1
        tb.scalars({"train/nonfinite_steps_skipped": progress.nonfinite_steps}, it)
        log.warning("iteration %d: %s; step skipped (%d so far)", it, what, progress.nonfinite_steps)
        return
    before = (
        f"the last finite loss was {progress.last_finite[1]:.4f} at iteration {progress.last_finite[0]}"
        if progress.last_finite
        else "no finite loss was seen in this run"
    )
    raise NonFiniteLoss(
        f"iteration {it}: {what} ({before}). The step was not applied; {last} (iteration {progress.saved}) "
        "is intact. Lower optim.lr, set trainer.grad_clip (e.g. 10), check the data, or set "
        "trainer.on_nonfinite=skip; then continue with resume=true."
    )


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """Returns the final mIoU so sweepers (Optuna) can optimise it."""
    with distributed.session() as info:  # a no-op unless a multi-task submitit job (torchrun: see main)
        try:
            return float(run_train(cfg)["mIoU"])
        except TrainingInterrupted as exc:
            if info.is_main:
                print(f"Stopped: {exc}", file=sys.stderr)
            if exc.handoff is not None:
                exc.handoff()  # submitit: pickles the job, requeues it and exits
            raise SystemExit(exc.exit_code) from None
        except (DeepLabError, OmegaConfBaseException) as exc:
            print(f"{distributed.rank_prefix(info)}Error: {entry.message_of(exc)}", file=sys.stderr)
            raise SystemExit(1) from None


def main() -> None:
    """``deeplab-train`` (also under ``torchrun``)."""
    distributed.launch(partial(entry.run, hydra_main))


if __name__ == "__main__":
    main()

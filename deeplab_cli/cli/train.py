"""``deeplab-train``: a thin Hydra wrapper around :func:`run_train`."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .._paths import config_dir
from ..config import checks, datasets, evaluation, models, preflight, runtime, training
from ..config.checkpoints import init_from_checkpoint, reheaded
from ..config.header import RunFacts, built_lines, launch_lines
from ..data.layout import DatasetError
from ..data.segmentation import skipped_samples
from ..engine.report.logger import TensorBoardLogger, format_table
from ..engine.report.pictures import save_pictures
from ..engine.runtime import distributed, slurm
from ..engine.runtime.checkpoint import (
    CheckpointError,
    atomic_save,
    check_writable,
    load_checkpoint,
    load_weights,
    rng_state,
    set_rng_state,
)
from ..engine.runtime.precision import grad_scaler, to_memory_format
from ..engine.train.loop import freeze_batchnorm, group_micro_batches
from ..engine.train.losses import LossSpec
from ..engine.train.optim import build_optimizer, param_groups, poly_scheduler
from ..engine.train.trainer import Trainer, TrainingInterrupted
from ..models.weights.provenance import Provenance, checkpoint_provenance
from . import _hydra

log = logging.getLogger(__name__)

#: One JSON line per skipped sample (``dataset.on_error=skip``), in the run dir.
SKIP_LOG = "skipped_samples.jsonl"


def _resume_from(run_dir: Path, resume: str) -> Path | None:
    for stale in (run_dir / "checkpoints").glob(".*.tmp"):  # a write cut short by SIGKILL or a crash
        stale.unlink(missing_ok=True)
    last = run_dir / "checkpoints" / "last.pt"
    if resume == "true" and not last.is_file():
        raise CheckpointError(f"resume=true but {last} does not exist; pass the run's hydra.run.dir=...")
    return last if resume in ("true", "auto") and last.is_file() else None


def _save(
    path: Path, iteration: int, best: float, *, model, optimizer, scheduler, cfg: DictConfig, scaler=None, init=None,
    holdout=None,
) -> None:
    """A training checkpoint: everything to resume (weights, optimiser, schedule, RNG) and to rebuild (config)."""
    extra = {"scaler": scaler.state_dict()} if scaler is not None and scaler.is_enabled() else {}
    if init is not None:
        extra["init_weights"] = init
    if holdout is not None:
        extra["holdout"] = holdout  # which images of a flat folder were validation: eval checks it is the same
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
    dataset = datasets.make_eval_dataset(cfg, skip_log=run_dir / SKIP_LOG)
    main_rank = distributed.current().is_main
    plots_dir = run_dir / "plots" if final and main_rank else None
    n_vis = cfg.trainer.num_vis_images if main_rank else 0
    shown: list[int] = []  # under torchrun rank 0 scores every N-th image: show the first n_vis it gets

    def show(index: int, pred, target, stage: str) -> None:
        if len(shown) < n_vis:
            shown.append(index)
            tb.panel(f"val/panel_{len(shown) - 1}", dataset.load_rgb(index), target, pred, step)

    metrics = evaluation.evaluate_split(model, cfg, dataset, device, cfg.dataset.num_workers, show)
    if not metrics.get("num_images"):
        raise DatasetError(
            f"the validation split {dataset.split!r} ({len(dataset)} images, {dataset.source}) gave no image to "
            f"score: every one was skipped (dataset.on_error=skip; see {run_dir / SKIP_LOG}). A run that cannot be "
            "measured is not reported; fix the files or the split."
        )
    tb.metrics(metrics, step)
    if main_rank:
        matrix = torch.tensor(metrics["confusion_matrix"])
        save_pictures(plots_dir, tb, step, matrix, datasets.class_names(cfg), metrics)
    return metrics


@dataclass
class _Start:
    """Where a run starts: its model, initial weights' record, (resuming) the checkpoint to continue, its loss."""

    model: torch.nn.Module
    provenance: Provenance
    resume_path: Path | None
    loss: LossSpec
    sizes: dict[str, int]  # images per split, from the pass before training (rank 0)


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.trainer.max_iters`` iterations; returns the final validation metrics.

    Under ``torchrun`` every rank runs this; rank 0 alone writes checkpoints, TensorBoard
    and ``metrics.json`` (see ``engine/runtime/distributed.py``).
    """
    info = distributed.current()
    if not info.is_main:  # rank 0 reports; the others only warn
        logging.getLogger("deeplab_cli").setLevel(logging.WARNING)
    _log_launch(cfg)
    begin, device, run_dir = _prepare(cfg, info)
    model = _placed(begin.model, cfg, device, info)
    optimizer, scheduler, scaler = _optimiser(model, cfg, device)
    start, best, provenance = 0, -1.0, begin.provenance
    if begin.resume_path is not None:
        start, best, provenance = _resume(begin.resume_path, model, optimizer, scheduler, scaler)
    tb = TensorBoardLogger(run_dir / "tensorboard", enabled=info.is_main, palette=datasets.palette(cfg))
    trainer = Trainer(
        model, optimizer, scheduler, scaler, device, training.train_settings(cfg, begin.loss), run_dir, tb,
        validate=lambda it, final: validate_model(model, cfg, device, tb, it, run_dir, final),
        save=partial(_save, model=model, optimizer=optimizer, scheduler=scheduler, cfg=cfg, scaler=scaler,
                     init=provenance.as_dict(), holdout=preflight.holdout_record(run_dir)),
    )  # fmt: skip
    try:
        loader = datasets.make_train_loader(cfg, start, run_dir / SKIP_LOG, info.rank, info.world_size)
        _log_built(cfg, model, device, provenance, start, len(loader.dataset))  # type: ignore[arg-type]
        metrics = trainer.run(group_micro_batches(loader, cfg.trainer.accumulate), start, best)
        if not metrics:  # resumed a finished run: nothing trained, report its validation
            metrics = validate_model(model, cfg, device, tb, cfg.trainer.max_iters, run_dir, final=True)
    finally:
        tb.close()
    return _report(metrics, cfg, provenance, run_dir, info, begin.sizes)


def _log_launch(cfg: DictConfig) -> None:
    """The first lines of ``train.log`` (rank 0), before anything is loaded: command, preset, run dir, schedule."""
    if distributed.current().is_main:
        hydra_cfg = HydraConfig.get()
        command = [Path(sys.argv[0]).name, *sys.argv[1:]]
        for line in launch_lines(cfg, command, dict(hydra_cfg.runtime.choices), Path(hydra_cfg.runtime.output_dir)):
            log.info(line)


def _log_built(cfg: DictConfig, model, device, provenance: Provenance, start: int, n_train: int) -> None:
    """The rest of the header once the run is built: model size, device, data sizes, initial weights, start."""
    if distributed.current().is_main:
        n_val = len(datasets.make_eval_dataset(cfg))
        facts = RunFacts(model, device, distributed.current().world_size, provenance, n_train, n_val, start)
        for line in built_lines(cfg, facts):
            log.info(line)


def _prepare(cfg: DictConfig, info: distributed.DistInfo) -> tuple[_Start, torch.device, Path]:
    """Check the config and the data, and decide the start: fresh, from ``init_from``, or resumed."""
    checks.validate(cfg)  # before any weights or data are read
    imported, provenance = init_from_checkpoint(cfg) if cfg.model.init_from else (None, None)
    checks.validate(cfg)  # again: the imported file may have changed the architecture
    datasets.resolve_preprocess(cfg)  # the checkpoints store the normalisation actually used
    device = distributed.device_for(runtime.select_device(cfg.trainer.device), info)
    runtime.validate_distributed(cfg, info.world_size, device)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_writable(run_dir / "checkpoints", "the checkpoint folder of the run directory (hydra.run.dir)")
    sizes = _check_data(cfg, info, run_dir)
    loss = _loss_spec(cfg, run_dir, info)
    resume = str(cfg.resume).lower()
    if resume == "false" and slurm.restart_count() > 0:
        log.warning("SLURM requeued this job (SLURM_RESTART_COUNT=%d): resume=auto", slurm.restart_count())
        resume = "auto"
    resume_path = distributed.broadcast(_resume_from(run_dir, resume) if info.is_main else None)
    torch.manual_seed(cfg.trainer.seed)
    if imported is not None and resume_path is None:
        same_classes = imported.num_classes == cfg.model.num_classes
        model = imported if same_classes else reheaded(cfg, imported)
        return _Start(model, provenance, None, loss, sizes), device, run_dir
    model, built = models.make_model_with_provenance(cfg, cfg.model.pretrained and resume_path is None)
    return _Start(model, provenance or built, resume_path, loss, sizes), device, run_dir


def _placed(model: torch.nn.Module, cfg: DictConfig, device: torch.device, info: distributed.DistInfo):
    """The model on its device, in its memory format, with SyncBatchNorm or frozen BatchNorm as asked."""
    t = cfg.trainer
    model = model.to(device)
    if t.sync_bn:
        model = distributed.convert_sync_bn(model, info)
    model = to_memory_format(model, t.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = t.cudnn_benchmark
    if t.freeze_bn:
        freeze_batchnorm(model)  # before building the optimizer: frozen affine terms are not optimised
    return model


def _optimiser(model: torch.nn.Module, cfg: DictConfig, device: torch.device):
    """``optim.*``: the parameter groups' optimiser, the poly schedule, and the fp16 gradient scaler."""
    o = cfg.optim
    groups = param_groups(
        model, o.lr, o.weight_decay, o.head_lr_mult, o.bias_lr_mult, o.bias_weight_decay, o.backbone_lr_mult
    )
    optimizer = build_optimizer(o.name, groups, o.lr, o.momentum, o.nesterov, o.impl)
    scheduler = poly_scheduler(optimizer, cfg.trainer.max_iters, o.poly_power, o.min_lr)
    return optimizer, scheduler, grad_scaler(device, cfg.trainer.precision)


def _resume(path: Path, model, optimizer, scheduler, scaler) -> tuple[int, float, Provenance]:
    """Everything ``last.pt`` holds back in place; its iteration, best mIoU and the run's initial weights."""
    state = load_checkpoint(path)
    load_weights(model, state["model"], str(path))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    if "scaler" in state and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    start, best = int(state["iteration"]), float(state["best_miou"])
    log.info("resumed from %s at iteration %d", path, start)
    return start, best, checkpoint_provenance(state)  # the run's start, not this process's (no weights loaded)


def _report(
    metrics: dict[str, Any],
    cfg: DictConfig,
    provenance: Provenance,
    run_dir: Path,
    info: distributed.DistInfo,
    sizes: dict[str, int],
) -> dict[str, Any]:
    """The final metrics with the run's facts; rank 0 writes ``metrics.json`` and logs the table."""
    metrics["iteration"] = cfg.trainer.max_iters
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
    if skipped is not None:  # after metrics.json: the numbers stay readable, but the run fails
        preflight.check_skipped(run_dir / SKIP_LOG, sizes, float(cfg.dataset.max_skipped))
    return metrics


def _check_data(cfg: DictConfig, info: distributed.DistInfo, run_dir: Path) -> dict[str, int]:
    """The pass over the data before training (rank 0 in full first: it may generate the synthetic set);
    the splits' sizes."""
    sizes: dict[str, int] = {}
    if info.is_main:
        found = preflight.check_before_training(cfg, run_dir)  # raises unless dataset.on_error=skip
        sizes = found.sizes
        for problem in found.skipped:
            log.warning("dataset check: %s: %s: %s (will be skipped)", problem.kind, problem.path, problem.reason)
    distributed.barrier()
    if not info.is_main:
        preflight.check_before_training(cfg, run_dir, deep=False)
    return sizes


def _loss_spec(cfg: DictConfig, run_dir: Path, info: distributed.DistInfo) -> LossSpec:
    """``loss.*``; counted class weights come from rank 0 (written to the run dir), the same on every rank."""
    if info.is_main:
        weights = datasets.class_weights(cfg, run_dir)
    distributed.barrier()
    if not info.is_main:
        weights = datasets.class_weights(cfg, run_dir, is_main=False)
    spec = datasets.loss_spec(cfg, weights)
    if weights is not None:
        names = datasets.class_names(cfg)
        log.info("class weights (%s): %s", cfg.loss.class_weights if isinstance(cfg.loss.class_weights, str) else
                 "given", ", ".join(f"{n} {w:.3f}" for n, w in zip(names, weights, strict=True)))  # fmt: skip
    if spec.ohem:
        log.info("OHEM: pixels with true-class probability < %g, at least %d", spec.ohem_thresh, spec.ohem_min_kept)
    return spec


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """Returns the final mIoU so sweepers (Optuna) can optimise it."""
    # distributed.session: a no-op unless a multi-task submitit job (torchrun: see main)
    with distributed.session() as info, _hydra.user_errors(distributed.rank_prefix(info)):
        try:
            return float(run_train(cfg)["mIoU"])
        except TrainingInterrupted as exc:
            if info.is_main:
                print(f"Stopped: {exc}", file=sys.stderr)
            if exc.handoff is not None:
                exc.handoff()  # submitit: pickles the job, requeues it and exits
            raise SystemExit(exc.exit_code) from None


def main() -> None:
    """``deeplab-train`` (also under ``torchrun``)."""
    distributed.launch(partial(_hydra.run, hydra_main))


if __name__ == "__main__":
    main()

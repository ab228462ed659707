"""``deeplab-train``: a thin Hydra wrapper around :func:`run_train`."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from . import factory
from ._paths import config_dir
from .config import register_configs
from .engine.checkpoint import CheckpointError, atomic_save, load_checkpoint, rng_state, set_rng_state
from .engine.logger import TensorBoardLogger, format_table
from .engine.loop import freeze_batchnorm, group_micro_batches, train_step
from .engine.optim import build_optimizer, param_groups, poly_scheduler
from .errors import DeepLabError
from .models.importers import import_checkpoint
from .report import save_pictures

log = logging.getLogger("deeplab_cli.train")
register_configs()


class TrainingInterrupted(DeepLabError):
    """The user pressed Ctrl-C; ``last.pt`` holds the last finished iteration."""


class StopOnSigint:
    """Turn the first Ctrl-C into a request honoured between iterations.

    Interrupting inside ``optimizer.step()`` would leave a half-updated model; we
    finish the step, checkpoint it and stop. A second Ctrl-C aborts at once (the
    last periodic checkpoint stays intact, it is written atomically).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopOnSigint:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: finishing the current iteration and writing checkpoints/last.pt (again to abort)")

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _resume_from(run_dir: Path, resume: str) -> Path | None:
    last = run_dir / "checkpoints" / "last.pt"
    if resume == "true" and not last.is_file():
        raise CheckpointError(f"resume=true but {last} does not exist; pass the run's hydra.run.dir=...")
    return last if resume in ("true", "auto") and last.is_file() else None


def _save(path: Path, model, optimizer, scheduler, iteration: int, cfg: DictConfig, best: float) -> None:
    atomic_save(
        {
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
    model, cfg: DictConfig, device, tb: TensorBoardLogger, step: int, plots_dir: Path | None = None
) -> dict[str, Any]:
    """Evaluate on ``dataset.val_split``; log metrics, a few image panels and the pictures.

    The confusion matrix and per-class IoU go to TensorBoard at every validation
    and, for the final one, to ``plots_dir`` as PNGs.
    """
    dataset = factory.make_eval_dataset(cfg)
    n_vis = cfg.trainer.num_vis_images

    def show(index: int, pred, target, stage: str) -> None:
        if index < n_vis:
            tb.panel(f"val/panel_{index}", dataset.load_rgb(index), target, pred, step)

    metrics = factory.evaluate_split(model, cfg, dataset, device, cfg.dataset.num_workers, show)
    tb.metrics(metrics, step)
    matrix = torch.tensor(metrics["confusion_matrix"])
    save_pictures(plots_dir, tb, step, matrix, factory.class_names(cfg), metrics)
    return metrics


def init_from_checkpoint(cfg: DictConfig) -> torch.nn.Module:
    """Start from any checkpoint ``import_checkpoint`` knows (ours, torchvision, kazuto, VainF).

    The file decides the architecture and the input normalisation; ``cfg`` is updated
    in place so that this run's own checkpoints rebuild the same model.
    """
    try:
        imported = import_checkpoint(cfg.model.init_from)
    except CheckpointError as exc:
        raise CheckpointError(f"model.init_from={cfg.model.init_from}: {exc}") from exc
    init_from = cfg.model.init_from
    for node, values in imported.config_overrides.items():
        # backbone/head are typed per option (replace the node); model/scales share one schema (merge)
        cfg[node] = OmegaConf.create(values) if node in ("backbone", "head") else OmegaConf.merge(cfg[node], values)
    cfg.model.init_from, cfg.model.pretrained = init_from, False
    cfg.dataset.merge_with(imported.preprocess.as_dataset_config())
    for note in imported.notes:
        log.info("%s: %s", imported.layout, note)
    log.info("initialised from %s (%s)", init_from, imported.layout)
    return imported.model


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.trainer.max_iters`` iterations; returns the final validation metrics."""
    imported = init_from_checkpoint(cfg) if cfg.model.init_from else None
    factory.validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    device = factory.select_device(cfg.trainer.device)
    t = cfg.trainer
    resume_path = _resume_from(run_dir, str(cfg.resume).lower())
    torch.manual_seed(t.seed)
    if imported is not None and resume_path is None:
        model = imported.to(device)
    else:
        model = factory.make_model(cfg, pretrained=cfg.model.pretrained and resume_path is None).to(device)
    if t.freeze_bn:
        freeze_batchnorm(model)  # before building the optimizer: frozen affine terms are not optimised
    o = cfg.optim
    groups = param_groups(model, o.lr, o.weight_decay, o.head_lr_mult, o.bias_lr_mult, o.bias_weight_decay)
    optimizer = build_optimizer(o.name, groups, o.lr, o.momentum, o.nesterov)
    scheduler = poly_scheduler(optimizer, t.max_iters, o.poly_power)
    start, best = 0, -1.0
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start, best = int(state["iteration"]), float(state["best_miou"])
        log.info("resumed from %s at iteration %d", resume_path, start)
    tb = TensorBoardLogger(run_dir / "tensorboard")
    try:
        metrics = _loop(model, optimizer, scheduler, cfg, start, best, tb, run_dir, device)
        if not metrics:  # resumed a finished run: nothing trained, report its validation
            metrics = validate_model(model, cfg, device, tb, t.max_iters, run_dir / "plots")
    finally:
        tb.close()
    metrics["iteration"] = t.max_iters
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("final validation:\n%s", format_table(metrics))
    return metrics


def _loop(model, optimizer, scheduler, cfg, start: int, best: float, tb, run_dir: Path, device) -> dict[str, Any]:
    """Iterations ``start+1 .. max_iters`` with logging, validation and checkpoints."""
    t = cfg.trainer
    ckpt_dir = run_dir / "checkpoints"
    metrics: dict[str, Any] = {}
    steps = group_micro_batches(factory.make_train_loader(cfg, start), t.accumulate)
    bar = tqdm(total=t.max_iters, initial=start, desc="train", disable=not t.progress, dynamic_ncols=True)
    with StopOnSigint() as stop, bar:
        for it in range(start + 1, t.max_iters + 1):
            loss = train_step(model, next(steps), optimizer, scheduler, t.label_policy, device, t.freeze_bn)
            bar.update(1)
            if it % t.log_interval == 0 or it == t.max_iters:
                lr = optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                tb.scalars({"train/loss": loss, "train/lr": lr}, it)
            if it % t.val_interval == 0 or it == t.max_iters:
                plots = run_dir / "plots" if it == t.max_iters else None
                metrics = validate_model(model, cfg, device, tb, it, plots)
                log.info("iteration %d: val mIoU %.2f", it, metrics["mIoU"])
                if metrics["mIoU"] > best:
                    best = metrics["mIoU"]
                    _save(ckpt_dir / "best.pt", model, optimizer, scheduler, it, cfg, best)
                _save(ckpt_dir / "last.pt", model, optimizer, scheduler, it, cfg, best)
            if stop.requested and it < t.max_iters:
                _save(ckpt_dir / "last.pt", model, optimizer, scheduler, it, cfg, best)
                raise TrainingInterrupted(
                    f"interrupted after iteration {it}; {ckpt_dir / 'last.pt'} holds it. Continue with "
                    f"deeplab-train hydra.run.dir={run_dir} resume=true (and the same overrides)."
                )
    return metrics


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns the final mIoU so sweepers (Optuna) can optimise it."""
    try:
        return float(run_train(cfg)["mIoU"])
    except TrainingInterrupted as exc:
        print(f"Stopped: {exc}", file=sys.stderr)
        raise SystemExit(130) from None
    except DeepLabError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

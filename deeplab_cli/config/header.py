"""The header of ``train.log``: what a run is, in the first lines a batch-job user reads.

A recipe runs for hours in a job whose only output is ``train.log``; these lines say what
was launched (command, preset, model size, device, data, schedule, initial weights, run
dir) so that a log read days later, or next to another run's, needs nothing else.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from ..models.weights.provenance import Provenance


@dataclass(frozen=True)
class RunFacts:
    """What only the command knows once the run is built: the model, device, weights and data sizes."""

    model: torch.nn.Module
    device: torch.device
    world_size: int
    provenance: Provenance
    train_images: int
    val_images: int
    start: int = 0


def _device_text(device: torch.device, world_size: int) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        text = f"{device} ({name})"
    else:
        text = f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"
    return text + (f" x {world_size} processes (torchrun)" if world_size > 1 else "")


def _parameters(model: torch.nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    aux = getattr(model, "aux_head", None)
    text = f"{total:,} ({trainable:,} trainable)"
    if aux is not None:
        text += f", of which the auxiliary head {sum(p.numel() for p in aux.parameters()):,} (training only)"
    return text


def launch_lines(cfg: DictConfig, command: list[str], choices: Mapping[str, str | None], run_dir: Path) -> list[str]:
    """The header's first lines, written before anything is loaded: what was asked for, and where it goes."""
    d, t, o = cfg.dataset, cfg.trainer, cfg.optim
    preset = " ".join(f"{k}={choices.get(k)}" for k in ("experiment", "model", "backbone", "head", "dataset")
                      if choices.get(k))  # fmt: skip
    crop = f"{d.crop_size}x{d.crop_width}" if d.get("crop_width") else f"{d.crop_size}x{d.crop_size}"
    return [
        f"command: {shlex.join(command)}",
        f"preset: {preset}",
        f"run dir: {run_dir}",
        f"schedule: {t.max_iters} iterations, batch {t.batch_size} x {t.accumulate} accumulated, crop {crop}, "
        f"{o.name} lr {o.lr} (poly {o.poly_power}, min {o.get('min_lr', 0.0)}), weight decay {o.weight_decay}, "
        f"validation every {t.val_interval}, a progress line every {t.log_interval}",
    ]


def built_lines(cfg: DictConfig, facts: RunFacts) -> list[str]:
    """The rest of the header, once the model, its weights and the data are in place (before the first step)."""
    d, t = cfg.dataset, cfg.trainer
    return [
        f"model: {cfg.model.name}, output stride {cfg.model.output_stride}, {cfg.model.num_classes} classes, "
        f"parameters {_parameters(facts.model)}",
        f"device: {_device_text(facts.device, facts.world_size)}, precision {t.precision}"
        + (", channels_last" if t.channels_last else ""),
        f"data: {d.name} at {d.root}: {facts.train_images} training images ({d.train_split}), "
        f"{facts.val_images} validation images ({d.val_split})",
        f"initial weights: {facts.provenance.describe()}",
        f"start: iteration {facts.start} of {t.max_iters}" + (" (resumed)" if facts.start else ""),
    ]

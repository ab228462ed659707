"""The device, and what ``torchrun`` needs of the config (a global batch that splits evenly)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from ..errors import ConfigError


def validate_distributed(cfg: DictConfig, world_size: int, device: torch.device) -> None:
    """``trainer.batch_size`` is the global batch: it must split evenly between the ``torchrun`` processes."""
    if world_size == 1:
        return
    if cfg.trainer.batch_size % world_size:
        raise ConfigError(
            f"trainer.batch_size={cfg.trainer.batch_size} is the global batch and does not split evenly between "
            f"{world_size} processes; use a multiple of {world_size} (e.g. trainer.batch_size="
            f"{world_size * max(1, cfg.trainer.batch_size // world_size)})."
        )
    if cfg.trainer.sync_bn and device.type != "cuda":
        raise ConfigError(
            f"trainer.sync_bn=true needs one GPU per process (SyncBatchNorm has no CPU implementation), but this "
            f"job runs on {device.type}; drop trainer.sync_bn or run on GPUs."
        )


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} but CUDA is not available; use trainer.device=cpu or auto.")
    return device

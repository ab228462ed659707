"""The ``trainer`` and ``loss`` nodes -> the training loop's settings (the loop itself never sees the config)."""

from __future__ import annotations

from omegaconf import DictConfig

from ..engine.train.loop import StepSettings
from ..engine.train.losses import LossSpec
from ..engine.train.trainer import TrainSettings


def step_settings(cfg: DictConfig, loss: LossSpec | None) -> StepSettings:
    t = cfg.trainer
    return StepSettings(
        label_policy=t.label_policy,
        freeze_bn=t.freeze_bn,
        grad_clip=t.grad_clip,
        precision=t.precision,
        channels_last=t.channels_last,
        loss=loss,
    )


def train_settings(cfg: DictConfig, loss: LossSpec | None) -> TrainSettings:
    t = cfg.trainer
    return TrainSettings(
        max_iters=t.max_iters,
        batch_size=t.batch_size,
        accumulate=t.accumulate,
        val_interval=t.val_interval,
        log_interval=t.log_interval,
        checkpoint_interval=t.checkpoint_interval,
        step=step_settings(cfg, loss),
        on_nonfinite=t.on_nonfinite,
        compile=t.compile,
        sync_bn=t.sync_bn,
        progress=t.progress,
    )

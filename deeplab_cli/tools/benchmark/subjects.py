"""The two models compared: one of our presets as ``deeplab-train`` builds it, and torchvision's DeepLab v3,
each with the loss of its own training recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
import torchvision
from omegaconf import DictConfig
from torch import Tensor, nn

from ...config.compose import compose
from ...data.palette import IGNORE_INDEX
from ...engine.train.losses import total_loss
from .settings import Settings

DATA_SCALE_RANGE = (0.5, 2.0)  # the v3/v3+ VOC recipe's random scale
REFERENCE_OUTPUT_STRIDE = 8  # torchvision dilates layer3 and layer4


def our_config(settings: Settings, data_root: str | None) -> DictConfig:
    """The preset without the quickstart experiment; with ``data_root`` a VOC-sized synthetic set there."""
    overrides = [f"model={settings.model}", "model.pretrained=false"]
    if settings.output_stride is not None:
        overrides.append(f"model.output_stride={settings.output_stride}")
    if data_root is not None:
        width, height = settings.infer_size
        lo, hi = DATA_SCALE_RANGE
        overrides += [
            f"dataset.root={data_root}",
            f"dataset.crop_size={settings.crop}",
            f"dataset.num_workers={settings.workers}",
            f"dataset.scale_range=[{lo},{hi}]",
            f"dataset.synthetic.num_train={2 * settings.batch}",
            "dataset.synthetic.num_val=1",
            f"dataset.synthetic.min_size={min(width, height)}",
            f"dataset.synthetic.max_size={max(width, height)}",
            f"trainer.batch_size={settings.batch}",
            f"trainer.max_iters={settings.warmup + settings.iters}",
        ]
    return compose(overrides)


def reference_model(name: str, num_classes: int) -> nn.Module:
    builder = getattr(torchvision.models.segmentation, name)
    return builder(weights=None, weights_backbone=None, aux_loss=False, num_classes=num_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _upsampled(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear logits at ``size``; torchvision's models already return them there."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def our_loss(outputs: Mapping[str, Any], labels: Tensor) -> Tensor:
    return total_loss(outputs, labels, "upsample")


def reference_loss(outputs: Mapping[str, Any], labels: Tensor) -> Tensor:
    return F.cross_entropy(_upsampled(outputs["out"], tuple(labels.shape[-2:])), labels, ignore_index=IGNORE_INDEX)

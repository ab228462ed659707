"""Build a model from explicit arguments; the only place that knows every variant."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import ConfigError
from .backbones.vgg import VGG16DeepLab
from .heads.largefov import LargeFOVHead
from .pretrained import load_vgg16_imagenet
from .segmenter import DeepLab

BACKBONES = ("vgg16",)
HEADS = ("largefov",)


class ModelConfigError(ConfigError):
    """An impossible combination of model options."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild an architecture (stored in checkpoints)."""

    backbone: str
    head: str
    num_classes: int
    output_stride: int = 8
    backbone_args: dict[str, Any] = field(default_factory=dict)
    head_args: dict[str, Any] = field(default_factory=dict)


def _build_backbone(spec: ModelSpec) -> VGG16DeepLab:
    if spec.backbone == "vgg16":
        if spec.output_stride != 8:
            raise ModelConfigError(
                f"model.output_stride={spec.output_stride} is not available for backbone=vgg16: "
                "DeepLab's VGG16 has output stride 8 only."
            )
        return VGG16DeepLab(**spec.backbone_args)
    raise ModelConfigError(f"backbone={spec.backbone!r} is unknown; choose one of {', '.join(BACKBONES)}.")


def _build_head(spec: ModelSpec, in_channels: int) -> nn.Module:
    if spec.head == "largefov":
        return LargeFOVHead(in_channels, spec.num_classes, **spec.head_args)
    raise ModelConfigError(f"head={spec.head!r} is unknown; choose one of {', '.join(HEADS)}.")


def build_model(spec: ModelSpec, pretrained: bool = False, weights_file: str | None = None) -> DeepLab:
    """Construct the network; with ``pretrained`` load ImageNet weights into it."""
    backbone = _build_backbone(spec)
    head = _build_head(spec, backbone.feature_info["out"].channels)
    model = DeepLab(backbone, head, spec.num_classes)
    if pretrained:
        load_vgg16_imagenet(model, weights_file, with_fc=spec.head == "largefov")
    return model

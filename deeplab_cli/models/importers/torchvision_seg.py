"""torchvision's ``deeplabv3_resnet50/101`` and ``deeplabv3_mobilenet_v3_large`` state dicts."""

from __future__ import annotations

from typing import Any

from ..backbones.mobilenet_v3 import MobileNetV3LargeBackbone
from ..backbones.resnet import ResNetBackbone
from ..heads.aspp_v3 import ASPPv3Head, scaled_rates
from ..segmenter import DeepLab
from .base import IMAGENET_RGB, Layout, Rule, identity_rules, single_scale

#: torchvision's ``DeepLabHead`` is a Sequential (ASPP, 3x3 conv, BN, ReLU, 1x1 conv); ours names its parts.
HEAD_RULES = (
    Rule("classifier.0.", "head.aspp."),
    Rule("classifier.1.", "head.conv.0."),
    Rule("classifier.2.", "head.conv.1."),
    Rule("classifier.4.", "head.classifier."),
)
#: torchvision's MobileNetV3 backbone keeps the ``features`` indices; ours splits them at the stride-4 tap
#: (a Sequential slice keeps the indices too: ``backbone.4.`` -> ``backbone.high_level.4.``).
MOBILENET_V3_RULES = tuple(
    Rule(f"backbone.{i}.", f"backbone.{'low' if i < 4 else 'high'}_level.{i}.") for i in range(17)
)
NOTES = ("torchvision's forward upsamples the logits to the input size; ours returns them at the output stride",)


def _config(name: str, backbone: dict[str, Any], rates: list[int], num_classes: int, output_stride: int) -> dict:
    """Config overrides; ``rates`` are at output stride 16, as our head config expects them."""
    return {
        "model": {"name": name, "num_classes": num_classes, "output_stride": output_stride},
        "backbone": backbone,
        "head": {"name": "aspp_v3", "rates": rates, "channels": 256},
        "scales": single_scale(),
    }


def _resnet_layout(depth: str) -> Layout:
    """ResNet at output stride 8 (layer3 d=2, layer4 d=4), ASPP rates 12/24/36: our ResNetBackbone exactly."""
    name = f"torchvision_deeplabv3_{depth}"

    def build(num_classes: int, output_stride: int) -> DeepLab:
        head = ASPPv3Head(2048, num_classes, scaled_rates((6, 12, 18), output_stride))
        return DeepLab(ResNetBackbone(depth, output_stride), head, num_classes)

    def config(num_classes: int, output_stride: int) -> dict:
        backbone = {"name": depth, "multi_grid": None}
        return _config(name, backbone, [6, 12, 18], num_classes, output_stride)

    return Layout(
        name=name,
        rules=identity_rules("backbone.") + HEAD_RULES,
        classifier_key="classifier.4.weight",
        build=build,
        config=config,
        preprocess=IMAGENET_RGB,
        output_strides=(8, 16, 32),
        ignored=("aux_classifier.",),
        notes=NOTES,
    )


def _build_mobilenet_v3(num_classes: int, output_stride: int) -> DeepLab:
    """torchvision keeps its default rates 12/24/36 on this output-stride-16 backbone."""
    head = ASPPv3Head(960, num_classes, scaled_rates((12, 24, 36), output_stride))
    return DeepLab(MobileNetV3LargeBackbone(output_stride), head, num_classes)


def _config_mobilenet_v3(num_classes: int, output_stride: int) -> dict:
    backbone = {"name": "mobilenet_v3_large"}
    return _config("torchvision_deeplabv3_mobilenet_v3_large", backbone, [12, 24, 36], num_classes, output_stride)


LAYOUTS = (
    _resnet_layout("resnet50"),
    _resnet_layout("resnet101"),
    Layout(
        name="torchvision_deeplabv3_mobilenet_v3_large",
        rules=MOBILENET_V3_RULES + HEAD_RULES,
        classifier_key="classifier.4.weight",
        build=_build_mobilenet_v3,
        config=_config_mobilenet_v3,
        preprocess=IMAGENET_RGB,
        output_strides=(16, 32),
        ignored=("aux_classifier.",),
        notes=NOTES,
    ),
)

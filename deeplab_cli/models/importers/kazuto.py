"""kazuto1011/deeplab-pytorch ``DeepLabV2_ResNet101_MSC``: bare state dict, keys ``base.*``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..backbones.resnet_caffe import CaffeResNetBackbone
from ..heads.aspp_v2 import ASPPv2Head
from ..multiscale import MultiScaleInputs
from ..segmenter import DeepLab
from .base import CAFFE_BGR, Layout, Rule

#: kazuto's scales: the input itself plus these, max-fused.
SCALES = (1.0, 0.5, 0.75)
ASPP_RATES = (6, 12, 18, 24)

#: kazuto's bottleneck parts -> torchvision's (conv, bn) names.
_PARTS = {
    "reduce": ("conv1", "bn1"),
    "conv3x3": ("conv2", "bn2"),
    "increase": ("conv3", "bn3"),
    "shortcut": ("downsample.0", "downsample.1"),
}
#: ``layer1`` is the stem, ``layer2..5`` are torchvision's ``layer1..4``; blocks count from 1.
RULES = (
    Rule("base.layer1.conv1.conv.", "backbone.conv1."),
    Rule("base.layer1.conv1.bn.", "backbone.bn1."),
    *(
        Rule(f"base.layer{{l}}.block{{b}}.{part}.{kind}.", f"backbone.layer{{l}}.{{b}}.{name}.", (("l", -1), ("b", -1)))
        for part, names in _PARTS.items()
        for kind, name in zip(("conv", "bn"), names, strict=True)
    ),
    Rule("base.aspp.c{i}.", "head.branches.{i}."),
)


def ScaleFactorMSC(model: nn.Module, scales: Sequence[float] = SCALES, fusion: str = "max") -> MultiScaleInputs:  # noqa: N802
    """MSC scaling inputs as kazuto's ``MSC`` does (``F.interpolate(x, scale_factor=p)``)."""
    return MultiScaleInputs(model, scales, fusion, input_resize="scale_factor")


def _build(num_classes: int, output_stride: int) -> DeepLab:
    head = ASPPv2Head(2048, num_classes, ASPP_RATES, form="conv")
    return DeepLab(CaffeResNetBackbone(101, output_stride), head, num_classes)


def _config(num_classes: int, output_stride: int) -> dict:
    return {
        "model": {"name": "kazuto_deeplabv2_resnet101_msc", "num_classes": num_classes, "output_stride": output_stride},
        "backbone": {"name": "resnet101_caffe"},
        "head": {"name": "aspp_v2", "form": "conv", "rates": list(ASPP_RATES)},
        "scales": {
            "mode": "msc",
            "factors": list(SCALES),
            "fusion": "max",
            "esup": False,
            "input_resize": "scale_factor",
        },
    }


LAYOUT = Layout(
    name="kazuto_deeplabv2_resnet101_msc",
    rules=RULES,
    classifier_key="base.aspp.c0.weight",
    build=_build,
    config=_config,
    preprocess=CAFFE_BGR,
    output_strides=(8,),
    wrap=ScaleFactorMSC,
    notes=(
        "model is ScaleFactorMSC(DeepLab): scales 1.0, 0.5, 0.75 (inputs via scale_factor), max fusion; "
        "eval returns the fused logits at output stride 8, as kazuto's MSC does",
        "backbone is CaffeResNetBackbone: stride in the 1x1 reduce conv, ceil-mode stem pool, "
        "dilation already in the first block of layer3/layer4",
    ),
)

"""VainF/DeepLabV3Plus-Pytorch checkpoints: ``{"model_state": ..., "optimizer_state": ..., ...}``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..backbones.base import Backbone
from ..backbones.mobilenet_vainf import VainFMobileNetV2Backbone
from ..backbones.resnet import ResNetBackbone
from ..heads.aspp_v3 import ASPPv3Head, V3PlusHead, scaled_rates
from ..segmenter import DeepLab
from .base import IMAGENET_RGB, Layout, Rule, identity_rules, single_scale

#: VainF's files do not record the output stride; its released models use 16.
DEFAULT_OUTPUT_STRIDE = 16
RATES = (6, 12, 18)  # at output stride 16
BACKBONES = ("resnet50", "resnet101", "mobilenet")

#: VainF's MobileNetV2 and ours both slice ``features`` at block 4, keeping the indices (high level runs 4..17).
MOBILENET_RULES = (
    Rule("backbone.low_level_features.", "backbone.low_level."),
    Rule("backbone.high_level_features.", "backbone.high_level."),
)
#: ``DeepLabHead``: classifier.classifier = (ASPP, 3x3 conv, BN, ReLU, 1x1 conv).
V3_RULES = (
    Rule("classifier.classifier.0.", "head.aspp."),
    Rule("classifier.classifier.1.", "head.conv.0."),
    Rule("classifier.classifier.2.", "head.conv.1."),
    Rule("classifier.classifier.4.", "head.classifier."),
)
#: ``DeepLabHeadV3Plus``: project (low level), aspp, classifier = (3x3 conv, BN, ReLU, 1x1 conv).
V3PLUS_RULES = (
    Rule("classifier.project.", "head.reduce."),
    Rule("classifier.aspp.", "head.aspp."),
    Rule("classifier.classifier.0.", "head.decoder.0.0."),
    Rule("classifier.classifier.1.", "head.decoder.0.1."),
    Rule("classifier.classifier.3.", "head.classifier."),
)
NOTES = ("VainF's forward upsamples the logits to the input size; ours returns them at the output stride",)


def _reorder_decoder_input(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """VainF concatenates [low level (48), ASPP (256)], our V3PlusHead [ASPP, low level]: permute input channels."""
    key, low = "head.decoder.0.0.weight", state["head.reduce.0.weight"].shape[0]
    weight = state[key]
    return {**state, key: torch.cat([weight[:, low:], weight[:, :low]], dim=1).contiguous()}


def _backbone(name: str, output_stride: int) -> Backbone:
    if name == "mobilenet":
        return VainFMobileNetV2Backbone(output_stride)
    return ResNetBackbone(name, output_stride)


def _layout(plus: bool, backbone: str) -> Layout:
    name = f"vainf_deeplabv3{'plus' if plus else ''}_{backbone}"

    def build(num_classes: int, output_stride: int) -> DeepLab:
        body = _backbone(backbone, output_stride)
        info, rates = body.feature_info, scaled_rates(RATES, output_stride)
        if plus:
            head = V3PlusHead(info["out"].channels, info["low_level"].channels, num_classes, rates, decoder_convs=1)
        else:
            head = ASPPv3Head(info["out"].channels, num_classes, rates)
        return DeepLab(body, head, num_classes)

    def config(num_classes: int, output_stride: int) -> dict[str, Any]:
        head: dict[str, Any] = {"name": "v3plus" if plus else "aspp_v3", "rates": list(RATES), "channels": 256}
        if plus:
            head.update(low_level_out=48, decoder_convs=1, separable=False)
        body = {"name": "mobilenet_v2_vainf"} if backbone == "mobilenet" else {"name": backbone, "multi_grid": None}
        model = {"name": name, "num_classes": num_classes, "output_stride": output_stride}
        return {"model": model, "backbone": body, "head": head, "scales": single_scale()}

    notes = NOTES
    if plus:
        notes += ("decoder conv input channels reordered: VainF concatenates the low-level features first",)
    if backbone == "mobilenet":
        notes += ("backbone is VainFMobileNetV2Backbone: VainF's unpadded convs and padded block inputs",)
    body_rules = MOBILENET_RULES if backbone == "mobilenet" else identity_rules("backbone.")
    return Layout(
        name=name,
        rules=body_rules + (V3PLUS_RULES if plus else V3_RULES),
        classifier_key=f"classifier.classifier.{3 if plus else 4}.weight",
        build=build,
        config=config,
        preprocess=IMAGENET_RGB,
        output_strides=(DEFAULT_OUTPUT_STRIDE, 8),
        stride_in_file=False,
        convert=_reorder_decoder_input if plus else None,
        notes=notes,
    )


LAYOUTS = tuple(_layout(plus, backbone) for plus in (False, True) for backbone in BACKBONES)

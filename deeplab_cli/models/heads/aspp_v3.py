"""DeepLab v3 ASPP head and the DeepLab v3+ decoder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPPConv, ASPPPooling

from ..registry import HeadInputs, register_head
from ..schema import MISSING
from .base import Head


def separable_conv(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise 3x3 (+BN+ReLU) then pointwise 1x1 (+BN+ReLU), the v3+ atrous separable conv."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """DeepLab v3 ASPP (https://arxiv.org/abs/1706.05587, section 3.3).

    1x1 conv + three 3x3 atrous convs + image pooling, 256 ch each with BN+ReLU,
    concatenated and projected to 256 (with dropout 0.5). mmsegmentation's
    ``DepthwiseSeparableASPPHead`` projects with a 3x3 conv and no dropout
    (``project_kernel=3, dropout=0``). Module names follow
    torchvision's ``ASPP`` (and reuse its branch classes), so torchvision weights map
    one to one; ``separable=True`` swaps the atrous convs for separable ones (v3+).
    """

    def __init__(
        self,
        in_channels: int,
        rates: Sequence[int],
        out_channels: int = 256,
        separable: bool = False,
        project_kernel: int = 1,
        dropout: float = 0.5,
    ):
        super().__init__()
        convs: list[nn.Module] = [conv_bn_relu(in_channels, out_channels, kernel=1)]
        branch = separable_conv if separable else ASPPConv
        convs += [branch(in_channels, out_channels, rate) for rate in rates]
        convs.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(convs)
        project: list[nn.Module] = [
            nn.Conv2d(len(convs) * out_channels, out_channels, project_kernel, padding=project_kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        self.project = nn.Sequential(*project, *([nn.Dropout(dropout)] if dropout > 0 else []))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


def scaled_rates(rates: Sequence[int], output_stride: int) -> list[int]:
    """Rates are given for output stride 16 and scale with it (doubled at OS 8)."""
    return [r * 16 // output_stride for r in rates]


class ASPPv3Head(Head):
    """DeepLab v3 head laid out as torchvision's ``DeepLabHead``: ASPP -> 3x3 conv 256 -> 1x1 classes."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18), channels: int = 256):
        super().__init__()
        self.aspp = ASPP(in_channels, rates, channels)
        self.conv = conv_bn_relu(channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        return self.classifier(self.conv(self.aspp(feats["out"])))


class V3PlusHead(Head):
    """DeepLab v3+ encoder-decoder (Chen et al., ECCV 2018, https://arxiv.org/abs/1802.02611, Fig. 2).

    ASPP on the ``out`` features; the decoder reduces ``low_level`` (stride 4) to 48 ch,
    upsamples the encoder output bilinearly to the low-level map's size (taken from
    that tensor, not a fixed x4), concatenates, refines with ``decoder_convs`` 3x3
    convs of 256 (two in the paper) and classifies. Logits are at stride 4.
    """

    def __init__(
        self,
        in_channels: int,
        low_level_channels: int,
        num_classes: int,
        rates: Sequence[int] = (6, 12, 18),
        channels: int = 256,
        low_level_out: int = 48,
        decoder_convs: int = 2,
        separable: bool = False,
        project_kernel: int = 1,
        aspp_dropout: float = 0.5,
        classifier_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, rates, channels, separable, project_kernel, aspp_dropout)
        self.reduce = conv_bn_relu(low_level_channels, low_level_out, kernel=1)
        widths = [channels + low_level_out] + [channels] * decoder_convs
        block = separable_conv if separable else conv_bn_relu
        self.decoder = nn.Sequential(*(block(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)))
        # mmsegmentation's heads drop whole channels before the classifier (Dropout2d, 0.1)
        self.dropout = nn.Dropout2d(classifier_dropout) if classifier_dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        low = self.reduce(feats["low_level"])
        x = F.interpolate(self.aspp(feats["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.dropout(self.decoder(torch.cat([x, low], dim=1))))


@dataclass
class ASPPv3Config:
    """``head=aspp_v3``: the values live in ``configs/head/aspp_v3.yaml``."""

    name: str = "aspp_v3"
    rates: list[int] = MISSING  # at output stride 16; scaled by 16 / model.output_stride
    channels: int = MISSING


@dataclass
class V3PlusConfig:
    """``head=v3plus``: the values live in ``configs/head/v3plus*.yaml``."""

    name: str = "v3plus"
    rates: list[int] = MISSING  # at output stride 16; scaled by 16 / model.output_stride
    channels: int = MISSING
    low_level_out: int = MISSING
    decoder_convs: int = MISSING
    separable: bool = MISSING
    # added later: checkpoints written before them are read with these (the layout they were trained with)
    project_kernel: int = 1  # the ASPP projection: 1x1 (paper, torchvision) | 3 (mmsegmentation)
    aspp_dropout: float = 0.5  # after the ASPP projection (mmsegmentation: 0)
    classifier_dropout: float = 0.0  # Dropout2d before the classifier (mmsegmentation: 0.1)


def _rates(inputs: HeadInputs, args: dict) -> dict:
    return {**args, "rates": scaled_rates(args.get("rates", (6, 12, 18)), inputs.output_stride)}


@register_head("aspp_v3", schema=ASPPv3Config)
def build_aspp_v3(inputs: HeadInputs, **args: object) -> ASPPv3Head:
    return ASPPv3Head(inputs.channels(), inputs.num_classes, **_rates(inputs, args))


@register_head("v3plus", schema=V3PlusConfig, needs=("out", "low_level"))
def build_v3plus(inputs: HeadInputs, **args: object) -> V3PlusHead:
    return V3PlusHead(inputs.channels(), inputs.channels("low_level"), inputs.num_classes, **_rates(inputs, args))

"""DeepLab v1 LargeFOV head."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn import Parameter

from ..registry import HeadInputs, register_head
from ..schema import MISSING
from .base import Head


class LargeFOVHead(Head):
    """fc6 (3x3, dilation 12, 1024) -> fc7 (1x1, 1024) -> fc8 (1x1, classes).

    Chen et al., ICLR 2015 (https://arxiv.org/abs/1412.7062), the "DeepLab-LargeFOV"
    row of Table 2: VGG16's fc6 is subsampled to 1024 3x3 filters used with
    dilation 12, fc7 to 1024x1024. ReLU + dropout 0.5 follow fc6 and fc7 only; the
    logits (fc8) never pass through a ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dilation: int = 12,
        channels: int = 1024,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(dropout)
        self.fc8 = nn.Conv2d(channels, num_classes, 1)
        self.out_channels = channels
        for conv in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        # The papers initialise the new classifier with N(0, 0.01) and zero bias.
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)

    def features(self, x: Tensor) -> Tensor:
        """fc7 activations (``out_channels`` wide) from the backbone's ``"out"`` map.

        Attention-to-scale consumes these penultimate features; heads that support it
        expose ``features``, ``classify`` and ``out_channels``.
        """
        x = self.drop6(self.relu6(self.fc6(x)))
        return self.drop7(self.relu7(self.fc7(x)))

    def classify(self, features: Tensor) -> Tensor:
        """Score maps (logits) from :meth:`features`; never rectified."""
        return self.fc8(features)

    def classifier_parameters(self) -> Iterator[Parameter]:
        """Layers trained from scratch in the recipe (get the head LR multiplier)."""
        return self.fc8.parameters()

    def imagenet_fc_prefixes(self) -> tuple[str, ...]:
        """Where VGG16's converted ImageNet fc6/fc7 go (relative to the head): its own fc6/fc7."""
        return ("",)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        return self.classify(self.features(feats["out"]))


@dataclass
class LargeFOVConfig:
    """``head=largefov``: the values live in ``configs/head/largefov*.yaml``."""

    name: str = "largefov"
    dilation: int = MISSING
    channels: int = MISSING
    dropout: float = MISSING


@register_head("largefov", schema=LargeFOVConfig)
def build_largefov(inputs: HeadInputs, **args: object) -> LargeFOVHead:
    return LargeFOVHead(inputs.channels(), inputs.num_classes, **args)  # type: ignore[arg-type]

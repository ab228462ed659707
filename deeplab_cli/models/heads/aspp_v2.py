"""DeepLab v2 ASPP: parallel atrous branches whose score maps are summed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn import Parameter

from ..registry import HeadInputs, register_head
from ..schema import MISSING
from .base import Head

BRANCH_FORMS = ("fc", "conv")


class _FCBranch(nn.Module):
    """One VGG-form branch: its own fc6 (3x3, rate r) -> fc7 (1x1) -> fc8 (1x1), ReLU + dropout."""

    def __init__(self, in_channels: int, num_classes: int, rate: int, channels: int, dropout: float) -> None:
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, channels, 3, padding=rate, dilation=rate)
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.fc8 = nn.Conv2d(channels, num_classes, 1)
        self.act, self.drop = nn.ReLU(inplace=True), nn.Dropout(dropout)
        for conv in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc6(x)))
        return self.fc8(self.drop(self.act(self.fc7(x))))


class ASPPv2Head(Head):
    """Atrous spatial pyramid pooling of DeepLab v2 (https://arxiv.org/abs/1606.00915, Fig. 4).

    ``form="fc"`` is the VGG16 variant: each branch has its own fc6/fc7/fc8 (rates
    (2, 4, 8, 12) for ASPP-S, (6, 12, 18, 24) for ASPP-L). ``form="conv"`` is the
    ResNet-101 variant: one 3x3 conv with bias per branch straight to the classes.
    Branch outputs are summed; branches never share weights.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rates: Sequence[int] = (6, 12, 18, 24),
        form: str = "fc",
        channels: int = 1024,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if form not in BRANCH_FORMS:
            raise ValueError(f"head.form={form!r} is unknown; choose one of {BRANCH_FORMS}")
        self.form = form
        if form == "fc":
            branches = [_FCBranch(in_channels, num_classes, r, channels, dropout) for r in rates]
        else:
            branches = [nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates]
            for conv in branches:
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)
        self.branches = nn.ModuleList(branches)

    def classifier_parameters(self) -> Iterator[Parameter]:
        """fc8 of every branch (fc form) or every branch conv (conv form): the layers trained from scratch."""
        for branch in self.branches:
            yield from (branch.fc8.parameters() if self.form == "fc" else branch.parameters())

    def imagenet_fc_prefixes(self) -> tuple[str, ...]:
        """Where VGG16's converted ImageNet fc6/fc7 go: every branch of the fc form (DeepLab v2), none of conv."""
        return tuple(f"branches.{i}." for i in range(len(self.branches))) if self.form == "fc" else ()

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        x = feats["out"]
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


@dataclass
class ASPPv2Config:
    """``head=aspp_v2``: the values live in ``configs/head/aspp_v2*.yaml``."""

    name: str = "aspp_v2"
    rates: list[int] = MISSING
    form: str = MISSING
    channels: int = MISSING
    dropout: float = MISSING


@register_head("aspp_v2", schema=ASPPv2Config)
def build_aspp_v2(inputs: HeadInputs, **args: object) -> ASPPv2Head:
    return ASPPv2Head(inputs.channels(), inputs.num_classes, **args)  # type: ignore[arg-type]

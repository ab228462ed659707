"""The contract every backbone follows, so heads can be wired to any of them."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..schema import MISSING


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and output stride of one named feature map."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """A feature extractor returning ``{name: tensor}``.

    Subclasses fill ``feature_info`` so that heads (ASPP, the v3+ decoder) can be
    built from the declared channels without running a forward pass.
    """

    feature_info: dict[str, FeatureInfo]

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class ImportedBackboneConfig:
    """Backbones that reproduce other projects' computation for imported checkpoints: a name, no options."""

    name: str = MISSING

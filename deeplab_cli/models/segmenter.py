"""The assembled model: backbone + head, with a torchvision-style output dict."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from torch import Tensor, nn
from torch.nn import Parameter

from .backbones.base import Backbone


class DeepLab(nn.Module):
    """Backbone + head returning ``{"out": logits}`` at the backbone's output stride.

    The dict output matches torchvision's segmentation models and leaves room for
    extra per-scale logits (multi-scale training adds more entries) without changing
    the training loop's contract.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes

    @property
    def output_stride(self) -> int:
        return self.backbone.feature_info["out"].stride

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict(out=self.head(self.backbone(x)))

    def classifier_parameters(self) -> Iterator[Parameter]:
        """Parameters that the recipes train with the head LR multiplier."""
        return self.head.classifier_parameters()

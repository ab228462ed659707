"""torchvision MobileNetV2 with output stride 8/16/32."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from torchvision.models import mobilenet_v2

from ..registry import register_backbone
from .base import Backbone, FeatureInfo
from .resnet import _torchvision_imagenet, check_output_stride


class MobileNetV2Backbone(Backbone):
    """MobileNetV2 features (Sandler et al., CVPR 2018, https://arxiv.org/abs/1801.04381).

    Once the stride reaches ``output_stride``, later stride-2 depthwise convs get
    stride 1 and a doubled dilation. As in DeepLab v3+'s MobileNet variant (and the
    VainF layout), ``out`` is the last inverted-residual block (320 ch, the final 1x1
    conv to 1280 is dropped) and ``low_level`` is block 3's output (24 ch, stride 4).
    """

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        check_output_stride(output_stride)
        features = mobilenet_v2(weights=None).features
        stride, dilation = 2, 1  # features[0] is the stride-2 stem
        for block in list(features)[1:-1]:
            conv = self._depthwise(block)
            if conv.stride[0] == 2:
                if stride >= output_stride:
                    conv.stride, dilation = (1, 1), dilation * 2
                else:
                    stride *= 2
            if dilation > 1 and conv.stride[0] == 1:
                conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
        self.low_level = features[:4]
        self.high_level = features[4:-1]
        self.feature_info = {"low_level": FeatureInfo(24, 4), "out": FeatureInfo(320, output_stride)}

    @staticmethod
    def _depthwise(block: nn.Module) -> nn.Conv2d:
        """The 3x3 depthwise conv of an inverted residual block (the one that carries the stride)."""
        return next(m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        low = self.low_level(x)
        return {"low_level": low, "out": self.high_level(low)}


@dataclass
class MobileNetV2Config:
    name: str = "mobilenet_v2"


@register_backbone("mobilenet_v2", schema=MobileNetV2Config, load_imagenet=_torchvision_imagenet("mobilenet_v2"))
def build_mobilenet_v2(output_stride: int) -> MobileNetV2Backbone:
    return MobileNetV2Backbone(output_stride)

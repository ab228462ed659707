"""torchvision MobileNetV3-Large features, laid out as torchvision's DeepLab v3 backbone."""

from __future__ import annotations

from torch import Tensor
from torchvision.models import mobilenet_v3_large

from ..registry import register_backbone
from .base import Backbone, FeatureInfo, ImportedBackboneConfig
from .resnet import check_output_stride


class MobileNetV3LargeBackbone(Backbone):
    """MobileNetV3-Large (Howard et al., ICCV 2019, https://arxiv.org/abs/1905.02244) features 0..16.

    Built exactly as ``torchvision.models.segmentation.deeplabv3_mobilenet_v3_large``
    builds its backbone (``mobilenet_v3_large(dilated=True)``: the last stride-2 block
    becomes stride 1 with dilation 2, so output stride 16), which is what its weights
    expect; output stride 32 is the undilated network. ``out`` is the final 1x1 conv
    (960 ch), ``low_level`` is block 3 (24 ch, stride 4). As in
    :class:`~.mobilenet.MobileNetV2Backbone`, slicing keeps the feature indices, so
    torchvision's ``backbone.<i>.`` keys become ``backbone.low_level.<i>.`` (i < 4) or
    ``backbone.high_level.<i>.`` (4 <= i <= 16).
    """

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        check_output_stride(output_stride, (16, 32))
        features = mobilenet_v3_large(weights=None, dilated=output_stride == 16).features
        self.low_level = features[:4]
        self.high_level = features[4:]
        self.feature_info = {"low_level": FeatureInfo(24, 4), "out": FeatureInfo(960, output_stride)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        low = self.low_level(x)
        return {"low_level": low, "out": self.high_level(low)}


# no ImageNet weights of its own: the layout of imported checkpoints
@register_backbone("mobilenet_v3_large", schema=ImportedBackboneConfig)
def build_mobilenet_v3_large(output_stride: int) -> MobileNetV3LargeBackbone:
    return MobileNetV3LargeBackbone(output_stride)

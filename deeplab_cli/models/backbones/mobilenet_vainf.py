"""MobileNetV2 computed as VainF/DeepLabV3Plus-Pytorch computes it ("fixed padding"), with our key names."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import mobilenet_v2

from ..registry import register_backbone
from .base import Backbone, FeatureInfo, ImportedBackboneConfig
from .resnet import check_output_stride

#: MobileNetV2's (expansion, channels, blocks, stride) per stage (Sandler et al., Table 2).
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def vainf_schedule(output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) of blocks 1..17 by VainF's rule.

    Once the output stride is reached, a stage's stride becomes dilation, but its
    first block keeps the previous dilation (at OS 16: block 14 has d=1, 15..17 d=2).
    """
    current, dilation, schedule = 2, 1, []
    for _, _, blocks, stride in _STAGES:
        previous = dilation
        if current == output_stride:
            stride, dilation = 1, dilation * stride
        else:
            current *= stride
        schedule += [(stride, previous)] + [(1, dilation)] * (blocks - 1)
    return schedule


class VainFMobileNetV2Backbone(Backbone):
    """MobileNetV2 features 0..17 with VainF's padding, so VainF's trained weights give VainF's logits.

    Keys are those of :class:`~.mobilenet.MobileNetV2Backbone` (``backbone.low_level.{0..3}``,
    ``backbone.high_level.{4..17}``), but every conv is unpadded: the stem shrinks
    129 -> 64 (torchvision: 65) and each inverted-residual block zero-pads its *input* by
    its dilation before the 1x1 expansion, so the expanded tensor's border is
    ReLU6(BN(0)) rather than zero. The residual adds the unpadded input. Dilations
    follow :func:`vainf_schedule`. ``low_level``: block 3 (24 ch, stride 4); ``out``: block 17 (320 ch).
    """

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        check_output_stride(output_stride)
        features = mobilenet_v2(weights=None).features
        features[0][0].padding = (0, 0)
        self.pads: list[int] = []
        for block, (stride, dilation) in zip(features[1:18], vainf_schedule(output_stride), strict=True):
            conv = next(m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
            conv.stride, conv.dilation, conv.padding = (stride, stride), (dilation, dilation), (0, 0)
            self.pads.append(dilation)
        self.low_level = features[:4]
        self.high_level = features[4:18]
        self.feature_info = {"low_level": FeatureInfo(24, 4), "out": FeatureInfo(320, output_stride)}

    @staticmethod
    def _block(block: nn.Module, x: Tensor, pad: int) -> Tensor:
        y = block.conv(F.pad(x, (pad, pad, pad, pad)))
        return x + y if block.use_res_connect else y

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.low_level[0](x)
        blocks = [*self.low_level[1:], *self.high_level]
        low = x
        for index, (block, pad) in enumerate(zip(blocks, self.pads, strict=True), start=1):
            x = self._block(block, x, pad)
            if index == 3:
                low = x
        return {"low_level": low, "out": x}


# no ImageNet weights of its own: the layout of imported checkpoints
@register_backbone("mobilenet_v2_vainf", schema=ImportedBackboneConfig)
def build_mobilenet_v2_vainf(output_stride: int) -> VainFMobileNetV2Backbone:
    return VainFMobileNetV2Backbone(output_stride)

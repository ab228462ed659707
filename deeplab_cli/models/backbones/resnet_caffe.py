"""ResNet computed as the original MSRA/Caffe model that DeepLab v2 (and kazuto1011's port) uses."""

from __future__ import annotations

from ..registry import register_backbone
from .base import ImportedBackboneConfig
from .resnet import ResNetBackbone

_DEPTHS = {50: "resnet50", 101: "resnet101"}


class CaffeResNetBackbone(ResNetBackbone):
    """torchvision's dilated ResNet with three changes that make it compute as the Caffe ResNet.

    Key names stay torchvision's (``backbone.layer3.22.conv2.weight``), so the weights of
    both map one to one, but DeepLab v2's released ResNet-101 was trained with:

    * the stride of a downsampling block in its 1x1 ``conv1`` (torchvision: in the 3x3);
    * a ceil-mode stem max-pool (129 -> 65 -> 33, torchvision gives 32);
    * the stage's dilation already in the first block of a dilated stage (torchvision
      keeps the previous dilation there).

    Output stride 8 (layer3 d=2, layer4 d=4) is DeepLab v2's; 16 and 32 follow the same rules.
    """

    def __init__(self, depth: int = 101, output_stride: int = 8) -> None:
        if depth not in _DEPTHS:
            raise ValueError(f"depth={depth} is not supported; choose one of {tuple(_DEPTHS)}")
        super().__init__(_DEPTHS[depth], output_stride)
        self.maxpool.ceil_mode = True
        for layer in (self.layer2, self.layer3, self.layer4):
            first, stage_dilation = layer[0], layer[1].conv2.dilation
            if first.conv2.stride != (1, 1):
                first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
            first.conv2.dilation = first.conv2.padding = stage_dilation


for _depth in (50, 101):  # no ImageNet weights of their own: the layouts of imported checkpoints
    register_backbone(f"resnet{_depth}_caffe", schema=ImportedBackboneConfig)(
        lambda output_stride, _d=_depth: CaffeResNetBackbone(_d, output_stride)
    )

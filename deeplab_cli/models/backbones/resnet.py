"""torchvision ResNet-50/101 with output stride 8/16/32 and optional multi-grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from torch import Tensor, nn
from torchvision.models import resnet50, resnet101

from ..registry import register_backbone
from ..schema import MISSING
from .base import Backbone, FeatureInfo

if TYPE_CHECKING:
    from ..weights.provenance import Provenance

_FACTORIES = {"resnet50": resnet50, "resnet101": resnet101}

#: torchvision's ``replace_stride_with_dilation`` for layer2..4, per output stride.
_DILATE = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}


def check_output_stride(output_stride: int, allowed: Sequence[int] = (8, 16, 32)) -> None:
    if output_stride not in allowed:
        raise ValueError(f"model.output_stride={output_stride} is not supported; choose one of {tuple(allowed)}")


class ResNetBackbone(Backbone):
    """ResNet stem + layer1..4 from torchvision, strides turned into dilation.

    He et al., CVPR 2016 (https://arxiv.org/abs/1512.03385); atrous form of DeepLab
    v2/v3 (https://arxiv.org/abs/1706.05587, section 3.2): OS 16 dilates layer4 by 2,
    OS 8 dilates layer3 by 2 and layer4 by 4. ``multi_grid`` (e.g. (1, 2, 4)) sets the
    rates of layer4's three blocks to ``base_dilation * grid``. Without it the blocks
    keep torchvision's dilations, so torchvision's segmentation weights load exactly.
    Features: ``low_level`` (layer1, 256 ch, stride 4), ``stage3`` (layer3, 1024 ch: the
    auxiliary FCN head's input) and ``out`` (layer4, 2048 ch).

    ``deep_stem=True`` is ResNetV1c (mmsegmentation's backbone; Gluon's resnet*_v1c, timm's
    ``resnet*c``): three 3x3 convs (32, 32, 64 channels, the first with stride 2), each with
    BN+ReLU, replace the 7x7 conv. Its modules are named as mmcv's (``stem.0`` ... ``stem.7``)
    so mmcv's ImageNet files load as they are. torchvision dilates like mmcv's
    ``contract_dilation=True``: the first block of a dilated stage keeps the previous rate.
    """

    def __init__(
        self,
        depth: str = "resnet101",
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = None,
        deep_stem: bool = False,
    ):
        super().__init__()
        check_output_stride(output_stride)
        net = _FACTORIES[depth](weights=None, replace_stride_with_dilation=_DILATE[output_stride])
        if deep_stem:
            self.stem = deep_stem_layers()
        else:
            self.conv1, self.bn1, self.relu = net.conv1, net.bn1, net.relu
        self.maxpool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if multi_grid:
            self._apply_multi_grid(tuple(multi_grid), max(1, 32 // output_stride))
        self.feature_info = {
            "low_level": FeatureInfo(256, 4),
            "stage3": FeatureInfo(1024, min(output_stride, 16)),
            "out": FeatureInfo(2048, output_stride),
        }

    def _apply_multi_grid(self, grid: tuple[int, ...], base: int) -> None:
        if len(grid) != len(self.layer4):
            raise ValueError(f"backbone.multi_grid={list(grid)} needs {len(self.layer4)} entries (one per block)")
        for block, unit in zip(self.layer4, grid, strict=True):
            rate = base * unit
            block.conv2.dilation, block.conv2.padding = (rate, rate), (rate, rate)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stem(x) if hasattr(self, "stem") else self.relu(self.bn1(self.conv1(x)))
        low = self.layer1(self.maxpool(x))
        stage3 = self.layer3(self.layer2(low))
        return {"low_level": low, "stage3": stage3, "out": self.layer4(stage3)}


def deep_stem_layers() -> nn.Sequential:
    """ResNetV1c's stem: conv3x3(3->32, stride 2), conv3x3(32->32), conv3x3(32->64), each + BN + ReLU."""
    layers: list[nn.Module] = []
    for cin, cout, stride in ((3, 32, 2), (32, 32, 1), (32, 64, 1)):
        layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


@dataclass
class ResNetConfig:
    """``backbone=resnet50|resnet101``: the values live in ``configs/backbone/resnet*.yaml``."""

    name: str = MISSING
    multi_grid: Optional[list[int]] = MISSING


def _torchvision_imagenet(depth: str):  # noqa: ANN202 - a loader for the registry
    def load(model: nn.Module, weights_file: str | None) -> Provenance:
        from ..pretrained import load_torchvision_imagenet

        return load_torchvision_imagenet(model, depth, weights_file)

    return load


for _depth in ("resnet50", "resnet101"):
    register_backbone(_depth, schema=ResNetConfig, load_imagenet=_torchvision_imagenet(_depth))(
        lambda output_stride, _d=_depth, **args: ResNetBackbone(_d, output_stride, **args)
    )
    register_backbone(f"{_depth}_v1c", schema=ResNetConfig, load_imagenet=_torchvision_imagenet(f"{_depth}_v1c"))(
        lambda output_stride, _d=_depth, **args: ResNetBackbone(_d, output_stride, deep_stem=True, **args)
    )

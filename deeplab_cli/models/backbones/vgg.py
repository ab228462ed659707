"""VGG16 in the DeepLab v1/v2 form (output stride 8, dilated conv5), and at output stride 16/32."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from ..registry import register_backbone
from ..schema import MISSING
from .base import Backbone, FeatureInfo

if TYPE_CHECKING:
    from ..weights.provenance import Provenance

# (block, number of 3x3 convs, output channels, conv dilation, pool stride) at output stride 8
_BLOCKS = ((1, 2, 64, 1, 2), (2, 2, 128, 1, 2), (3, 3, 256, 1, 2), (4, 3, 512, 1, 1), (5, 3, 512, 2, 1))
#: (pool4 stride, conv5 dilation, pool5 stride) per output stride: 8 is DeepLab's; 16/32 undo its changes.
_TAIL = {8: (1, 2, 1), 16: (2, 1, 1), 32: (2, 1, 2)}

#: Names of the 13 convs in order; torchvision's ``vgg16().features`` holds them in the same order.
CONV_NAMES = tuple(f"conv{b}_{i + 1}" for b, n, *_ in _BLOCKS for i in range(n))


class VGG16DeepLab(Backbone):
    """VGG16 conv1-conv5 as modified by DeepLab.

    Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and Fully
    Connected CRFs", ICLR 2015 (https://arxiv.org/abs/1412.7062). pool1-3 are 3x3
    stride 2 pad 1, pool4/pool5 are 3x3 stride 1 pad 1 (so the stride stays 8), conv5
    uses dilation 2, and LargeFOV adds a 3x3 stride-1 average pool after pool5
    (``avg_pool``; the attention-to-scale variant drops it). Pools use Caffe's ceil
    rounding so a 321 crop gives 41x41 logits as in the papers. ``batch_norm`` gives
    the torchvision ``vgg16_bn`` variant (BN after every conv), which trains from
    scratch far faster; ``width_mult`` scales every conv's channels (1.0 is the paper's
    network; the CPU quick start uses a narrow one so it trains in minutes).

    ``output_stride`` 16 keeps pool4's stride 2 and conv5 undilated, 32 also pool5's:
    the plain VGG16 strides, so backbone comparisons can run every network at one
    stride. ``low_level`` is pool2's output (stride 4) for the v3+ decoder.
    """

    def __init__(
        self, avg_pool: bool = True, batch_norm: bool = False, width_mult: float = 1.0, output_stride: int = 8
    ) -> None:
        super().__init__()
        if output_stride not in _TAIL:
            raise ValueError(f"model.output_stride={output_stride} is not available for VGG16; choose 8, 16 or 32.")
        pool4, dilation5, pool5 = _TAIL[output_stride]
        blocks = [*_BLOCKS[:3], (4, 3, 512, 1, pool4), (5, 3, 512, dilation5, pool5)]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_ch, low_ch = 3, 0
        for block, n_convs, full_ch, dilation, pool_stride in blocks:
            out_ch = max(8, round(full_ch * width_mult))
            for i in range(1, n_convs + 1):
                layers[f"conv{block}_{i}"] = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
                if batch_norm:
                    layers[f"bn{block}_{i}"] = nn.BatchNorm2d(out_ch)
                layers[f"relu{block}_{i}"] = nn.ReLU(inplace=True)
                in_ch = out_ch
            layers[f"pool{block}"] = nn.MaxPool2d(3, stride=pool_stride, padding=1, ceil_mode=True)
            low_ch = in_ch if block == 2 else low_ch
        if avg_pool:
            layers["pool5a"] = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
        self.features = nn.Sequential(layers)
        self.output_stride = output_stride
        self.feature_info = {"low_level": FeatureInfo(low_ch, 4), "out": FeatureInfo(in_ch, output_stride)}
        self._init_weights()

    def _init_weights(self) -> None:
        """He init, as torchvision's VGG; replaced by ImageNet weights when pretrained."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        low = x
        for name, layer in self.features.named_children():
            x = layer(x)
            if name == "pool2":
                low = x
        return {"low_level": low, "out": x}


@dataclass
class VGG16Config:
    """``backbone=vgg16``: the values live in ``configs/backbone/vgg16*.yaml``."""

    name: str = "vgg16"
    avg_pool: bool = MISSING
    batch_norm: bool = MISSING
    width_mult: float = MISSING


def _load_imagenet(model: nn.Module, weights_file: str | None) -> Provenance:
    """torchvision's VGG16 into the backbone, and its fc6/fc7 (subsampled) into the head's own, if it has them."""
    from ..pretrained import load_vgg16_imagenet

    prefixes = getattr(model.head, "imagenet_fc_prefixes", lambda: ())()
    return load_vgg16_imagenet(model, weights_file, tuple(f"head.{p}" for p in prefixes))


@register_backbone("vgg16", schema=VGG16Config, load_imagenet=_load_imagenet)
def build_vgg16(output_stride: int, **args: object) -> VGG16DeepLab:
    return VGG16DeepLab(**args, output_stride=output_stride)  # type: ignore[arg-type]

"""VGG16 in the DeepLab v1/v2 form (output stride 8, dilated conv5)."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from .base import Backbone, FeatureInfo

# (block, number of 3x3 convs, output channels, conv dilation, pool stride)
_BLOCKS = ((1, 2, 64, 1, 2), (2, 2, 128, 1, 2), (3, 3, 256, 1, 2), (4, 3, 512, 1, 1), (5, 3, 512, 2, 1))

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
    """

    output_stride = 8

    def __init__(self, avg_pool: bool = True, batch_norm: bool = False, width_mult: float = 1.0) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_ch = 3
        for block, n_convs, full_ch, dilation, pool_stride in _BLOCKS:
            out_ch = max(8, round(full_ch * width_mult))
            for i in range(1, n_convs + 1):
                layers[f"conv{block}_{i}"] = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
                if batch_norm:
                    layers[f"bn{block}_{i}"] = nn.BatchNorm2d(out_ch)
                layers[f"relu{block}_{i}"] = nn.ReLU(inplace=True)
                in_ch = out_ch
            layers[f"pool{block}"] = nn.MaxPool2d(3, stride=pool_stride, padding=1, ceil_mode=True)
        if avg_pool:
            layers["pool5a"] = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
        self.features = nn.Sequential(layers)
        self.feature_info = {"out": FeatureInfo(channels=in_ch, stride=8)}
        self._init_weights()

    def _init_weights(self) -> None:
        """He init, as torchvision's VGG; replaced by ImageNet weights when pretrained."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.features(x)}

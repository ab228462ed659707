"""mmsegmentation's auxiliary FCN head: extra supervision on ResNet's stage 3, dropped at inference.

``FCNHead(in_channels=1024, in_index=2, channels=256, num_convs=1, concat_input=False,
dropout_ratio=0.1)`` with loss weight 0.4 in every mmsegmentation DeepLab config: a 3x3
conv (BN+ReLU) on layer3's features, channel dropout, a 1x1 classifier. Its loss adds
gradient to the middle of the backbone during training; evaluation, prediction and
export never run it (:class:`~deeplab_cli.models.segmenter.DeepLab` calls it only in
training mode).
"""

from __future__ import annotations

from torch import Tensor, nn

#: the backbone feature the auxiliary head reads (ResNet's layer3)
AUX_FEATURE = "stage3"


class FCNAuxHead(nn.Module):
    """conv3x3(in -> channels) + BN + ReLU -> Dropout2d -> conv1x1(channels -> classes)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.conv(feats[AUX_FEATURE])))

"""Multi-scale input wrappers around a :class:`~.segmenter.DeepLab`: max/mean fusion (MSC) and attention to scale.

Both feed resized copies of the image through one shared network (a "share-net"):
the wrapped model is registered once, so its parameters are never duplicated and
every scale trains the same weights.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from itertools import chain

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import Parameter

from .backbones.base import Backbone

INPUT_RESIZE = ("size", "scale_factor")
FUSIONS = ("max", "mean")

#: ``{"out": fused, ...}``; ``"aux"`` holds per-scale logits (a list), read by ``total_loss``.
MultiScaleOutput = OrderedDict[str, Tensor | list[Tensor]]


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """Validate ``scales``: >= 2 distinct positive values including 1.0 (the output's resolution)."""
    scales = tuple(float(s) for s in scales)
    if len(scales) < 2:
        raise ValueError(f"scales={list(scales)}: MSC needs >= 2 scales (one scale is just the plain model).")
    if any(s <= 0 for s in scales) or len(set(scales)) != len(scales):
        raise ValueError(f"scales={list(scales)}: scales must be positive and distinct.")
    if 1.0 not in scales:
        raise ValueError(f"scales={list(scales)} must include 1.0: the fused output is at the 1.0 branch's resolution.")
    return scales


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """``(round(H * s), round(W * s))`` rounding halves up, not to even (Python's ``round``).

    Half-up matches the Caffe Interp sizes of DeepLab v2's MSC prototxts for the
    ``8k + 1`` crops: 321 -> 241 at 0.75 and 161 (not 160) at 0.5.
    """
    return tuple(max(1, math.floor(n * scale + 0.5)) for n in size[-2:])  # type: ignore[return-value]


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (``align_corners=False``); a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class _ScaleWrapper(nn.Module):
    """Shared plumbing: the wrapped model (registered once), its scales and its properties."""

    def __init__(self, model: nn.Module, scales: Sequence[float]) -> None:
        super().__init__()
        self.scales = check_scales(scales)
        self.model = model

    @property
    def backbone(self) -> Backbone:
        return self.model.backbone

    @property
    def head(self) -> nn.Module:
        return self.model.head

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def output_stride(self) -> int:
        return self.model.output_stride

    def _inputs(self, x: Tensor) -> list[Tensor]:
        """The image at every scale, in ``self.scales`` order (1.0 is passed through untouched)."""
        return [x if s == 1.0 else resize(x, scaled_size(x.shape, s)) for s in self.scales]

    def _reference_size(self, maps: Sequence[Tensor]) -> tuple[int, int]:
        """Spatial size of the 1.0 branch's map, which every branch is resized to."""
        return tuple(maps[self.scales.index(1.0)].shape[-2:])  # type: ignore[return-value]


class MultiScaleInputs(_ScaleWrapper):
    """DeepLab v2 "MSC": a shared DeepLab run on rescaled inputs, logits fused by max (or mean).

    Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets,
    Atrous Convolution, and Fully Connected CRFs", TPAMI 2017
    (https://arxiv.org/abs/1606.00915), sections 3.3 and 4.3: scales {1, 0.75, 0.5},
    every branch's logits bilinearly resized to the 1.0 branch's and max-fused. In
    training the loss also supervises every branch at its own resolution, so
    ``"aux"`` holds the native-size logits (``total_loss`` shrinks the labels per
    branch); eval returns only ``"out"``.
    """

    def __init__(
        self, model: nn.Module, scales: Sequence[float], fusion: str = "max", input_resize: str = "size"
    ) -> None:
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r} is unknown; choose one of {', '.join(FUSIONS)}.")
        if input_resize not in INPUT_RESIZE:
            raise ValueError(f"input_resize={input_resize!r} is unknown; choose one of {', '.join(INPUT_RESIZE)}.")
        super().__init__(model, scales)
        self.fusion = fusion
        self.input_resize = input_resize

    def _inputs(self, x: Tensor) -> list[Tensor]:
        """``size``: Caffe-rounded sizes; ``scale_factor``: ``F.interpolate(scale_factor=s)``.

        The second samples other positions when ``H * s`` is not an integer (PyTorch maps
        coordinates by 1/s); kazuto1011's released weights were trained that way.
        """
        if self.input_resize == "size":
            return super()._inputs(x)
        return [
            x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            for s in self.scales
        ]

    def forward(self, x: Tensor) -> MultiScaleOutput:
        logits = [self.model(x_s)["out"] for x_s in self._inputs(x)]
        size = self._reference_size(logits)
        stacked = torch.stack([resize(z, size) for z in logits])
        fused = stacked.amax(0) if self.fusion == "max" else stacked.mean(0)
        if self.training:
            return OrderedDict(out=fused, aux=logits)
        return OrderedDict(out=fused)

    def classifier_parameters(self) -> Iterator[Parameter]:
        """The wrapped model's new classifier; MSC adds no layers of its own."""
        return self.model.classifier_parameters()


class AttentionToScale(_ScaleWrapper):
    """Score maps of a shared DeepLab at several scales, merged by learned per-pixel soft weights.

    Chen et al., "Attention to Scale: Scale-aware Semantic Image Segmentation", CVPR
    2016 (https://arxiv.org/abs/1511.03339). The attention model reads the head's
    penultimate features (fc7 for LargeFOV) of all scales, resized to the 1.0 branch's
    resolution, and outputs one weight map per scale (3x3 conv -> ``hidden``, ReLU,
    dropout, 1x1 conv -> S, softmax over scales); the output is the weighted sum of
    the resized score maps. With ``esup`` (the paper's "extra supervision", which it
    finds essential) training also supervises each scale's resized score map through
    ``"aux"``. ``"attention"`` (B, S, h, w) is returned for visualisation, never as a loss.
    """

    def __init__(
        self,
        model: nn.Module,
        scales: Sequence[float],
        esup: bool = True,
        hidden: int = 512,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(model, scales)
        head = model.head
        missing = [name for name in ("features", "classify", "out_channels") if not hasattr(head, name)]
        if missing:
            raise ValueError(
                f"{type(head).__name__} cannot be used with attention to scale: it lacks {', '.join(missing)} "
                "(the head must expose features(x), classify(features) and out_channels)."
            )
        self.esup = esup
        n = len(self.scales)
        self.attention = nn.Sequential(
            nn.Conv2d(head.out_channels * n, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, n, 1),
        )
        self._init_attention()

    def _init_attention(self) -> None:
        """He init for the hidden conv; N(0, 0.01) and zero bias for the last so the initial weights are ~uniform."""
        first, last = self.attention[0], self.attention[-1]
        nn.init.kaiming_normal_(first.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(first.bias)
        nn.init.normal_(last.weight, std=0.01)
        nn.init.zeros_(last.bias)

    def _branch(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(features, scores) of one scale; the backbone runs once and the scores reuse the features."""
        feats = self.model.head.features(self.model.backbone(x)["out"])
        return feats, self.model.head.classify(feats)

    def forward(self, x: Tensor) -> MultiScaleOutput:
        branches = [self._branch(x_s) for x_s in self._inputs(x)]
        size = self._reference_size([score for _, score in branches])
        feats = [resize(f, size) for f, _ in branches]
        scores = [resize(score, size) for _, score in branches]
        # Concat and stack both follow self.scales, so weight channel s multiplies score map s.
        weights = self.attention(torch.cat(feats, dim=1)).softmax(dim=1)
        fused = (weights.unsqueeze(2) * torch.stack(scores, dim=1)).sum(dim=1)
        if self.training:
            return OrderedDict(out=fused, aux=scores if self.esup else [], attention=weights)
        return OrderedDict(out=fused, attention=weights)

    def classifier_parameters(self) -> Iterator[Parameter]:
        """The head's new classifier and the (new) attention layers: both get the head LR multiplier."""
        return chain(self.model.classifier_parameters(), self.attention.parameters())

"""Paired image/label transforms built on ``torchvision.transforms.v2``.

Labels travel as ``tv_tensors.Mask`` so every geometric op resizes them with
nearest neighbour and pads them with the ignore index; nothing here ever
interpolates a label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..imagenet import IMAGENET_MEAN, IMAGENET_STD  # re-exported: the transforms' default normalisation
from .palette import IGNORE_INDEX
from .photometric import PhotoMetricDistortion


def fit_factor(size: tuple[int, int], fit: tuple[int, int]) -> float:
    """The factor that makes an image of ``size`` (h, w) fit ``fit`` = (long side, short side), keeping its ratio.

    mmcv's ``rescale_size`` with ``keep_ratio``: ``min(long / max(h, w), short / min(h, w))``, so the
    image grows or shrinks until one of its sides meets the bound. mmsegmentation's ADE20K recipe
    fits (2048, 512); Cityscapes' (2048, 1024) leaves its 1024x2048 frames as they are.
    """
    h, w = size
    return min(fit[0] / max(h, w), fit[1] / min(h, w))


def scale_choices(low: float, high: float, step: float) -> list[float]:
    """TensorFlow DeepLab's stepped scales: ``low, low + step, ..., high`` (0.5-2.0 by 0.25: 7 values)."""
    count = int((high - low) / step + 1 + 1e-6)
    return [low + i * step for i in range(count)]


class RandomScale(v2.Transform):
    """Rescale image and mask by one factor: ``fit`` x a draw from ``[low, high]``.

    The DeepLab recipes scale the whole image by a random factor (unlike
    ``RandomResize``, which draws a target side length). ``step`` draws from
    ``low, low + step, ..., high`` instead (TensorFlow DeepLab's
    ``scale_factor_step_size``); ``fit`` = (long, short) first rescales the image to fit
    that box (mmsegmentation's ``RandomResize(scale=(2048, 512), ratio_range=...)``).
    Masks use PIL-style ``nearest-exact`` so pixel centres stay aligned.
    """

    def __init__(self, low: float, high: float, step: float | None = None, fit: tuple[int, int] | None = None) -> None:
        super().__init__()
        if not 0 < low <= high:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got [{low}, {high}]")
        if step is not None and step <= 0:
            raise ValueError(f"scale step must be positive, got {step}")
        self.low, self.high = low, high
        self.choices = scale_choices(low, high, step) if step is not None else None
        self.fit = fit

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        if self.choices is not None:
            s = self.choices[int(torch.randint(len(self.choices), ()))]
        else:
            s = self.low + (self.high - self.low) * float(torch.rand(()))
        if self.fit is not None:
            s *= fit_factor((h, w), self.fit)
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, params["size"], interpolation=InterpolationMode.NEAREST_EXACT)
        return F.resize(inpt, params["size"], interpolation=InterpolationMode.BILINEAR, antialias=True)


class PadCrop(v2.Transform):
    """Pad to the crop size at the bottom and right, then crop at random; optionally re-draw dominated crops.

    Every source recipe pads this way (Caffe DeepLab's data layer, TensorFlow DeepLab's
    ``pad_to_bounding_box`` at offset 0, mmsegmentation's ``Pad``): the image with the
    mean colour, the mask with the ignore label. ``cat_max_ratio < 1`` is
    mmsegmentation's ``RandomCrop(cat_max_ratio=0.75)``: a crop in which one class covers
    ``cat_max_ratio`` or more of the labelled pixels (or that holds a single class) is
    drawn again, up to 10 times; the 11th draw is kept whatever it holds.
    """

    RETRIES = 10

    def __init__(self, size: tuple[int, int], fill: dict[Any, Any], cat_max_ratio: float = 1.0) -> None:
        super().__init__()
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must lie in (0, 1], got {cat_max_ratio}")
        self.size, self.fill, self.cat_max_ratio = size, fill, cat_max_ratio

    def _draw(self, h: int, w: int) -> tuple[int, int]:
        top = int(torch.randint(0, h - self.size[0] + 1, ())) if h > self.size[0] else 0
        left = int(torch.randint(0, w - self.size[1] + 1, ())) if w > self.size[1] else 0
        return top, left

    def _dominated(self, mask: Tensor, top: int, left: int) -> bool:
        window = mask[..., top : top + self.size[0], left : left + self.size[1]]
        counts = torch.bincount(window[window != IGNORE_INDEX].flatten().long())
        counts = counts[counts > 0]
        return len(counts) <= 1 or float(counts.max()) / float(counts.sum()) >= self.cat_max_ratio

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        top, left = self._draw(h, w)
        masks = [x for x in flat_inputs if isinstance(x, tv_tensors.Mask)]
        if self.cat_max_ratio < 1 and masks:
            for _ in range(self.RETRIES):
                if not self._dominated(masks[0], top, left):
                    break
                top, left = self._draw(h, w)
        padding = [0, 0, max(0, self.size[1] - w), max(0, self.size[0] - h)]  # left, top, right, bottom
        return {"top": top, "left": left, "padding": padding}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if any(params["padding"]):
            fill = self.fill.get(type(inpt), 0)
            inpt = F.pad(inpt, params["padding"], fill=fill)
        return F.crop(inpt, params["top"], params["left"], *self.size)


class RGBToBGR(v2.Transform):
    """Swap the image's channels to BGR (Caffe-trained weights, e.g. kazuto1011's); masks untouched."""

    _transformed_types = (tv_tensors.Image,)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tv_tensors.wrap(inpt.flip(-3), like=inpt)


def _finish(mean: Sequence[float], std: Sequence[float], bgr: bool = False) -> list[v2.Transform]:
    ops: list[v2.Transform] = [RGBToBGR()] if bgr else []
    return ops + [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(mean, std)]


def train_transforms(
    crop_size: int | tuple[int, int],
    scale_range: tuple[float, float] = (0.5, 1.5),
    flip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    bgr: bool = False,
    *,
    scale_step: float | None = None,
    fit_size: tuple[int, int] | None = None,
    cat_max_ratio: float = 1.0,
    photometric: bool = False,
) -> v2.Compose:
    """(Fit,) random scale, pad (bottom/right: mean colour, label 255), random crop, flip, (distort,) normalise.

    ``crop_size`` is square, or (height, width) for wide frames (Cityscapes' 512x1024).
    The order is mmsegmentation's: resize, crop, flip, photometric distortion, normalise.
    """
    size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    fill = {tv_tensors.Image: tuple(round(255 * m) for m in mean), tv_tensors.Mask: IGNORE_INDEX}
    ops: list[v2.Transform] = [v2.ToImage()]
    if scale_range != (1.0, 1.0) or fit_size is not None:
        ops.append(RandomScale(*scale_range, step=scale_step, fit=fit_size))
    ops.append(PadCrop(size, fill, cat_max_ratio))  # type: ignore[arg-type]
    if flip:
        ops.append(v2.RandomHorizontalFlip())
    if photometric:
        ops.append(PhotoMetricDistortion())
    return v2.Compose(ops + _finish(mean, std, bgr))


def eval_transforms(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, bgr: bool = False
) -> v2.Compose:
    """Whole image at its original size: only conversion and normalisation (``mean``/``std`` in 0..1 units)."""
    return v2.Compose([v2.ToImage(), *_finish(mean, std, bgr)])

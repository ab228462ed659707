"""Paired image/label transforms built on ``torchvision.transforms.v2``.

Labels travel as ``tv_tensors.Mask`` so every geometric op resizes them with
nearest neighbour and pads them with the ignore index; nothing here ever
interpolates a label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..imagenet import IMAGENET_MEAN, IMAGENET_STD  # re-exported: the transforms' default normalisation
from .palette import IGNORE_INDEX


class RandomScale(v2.Transform):
    """Rescale image and mask by one factor drawn uniformly from ``[low, high]``.

    The DeepLab recipes scale the whole image by a random factor (unlike
    ``RandomResize``, which draws a target side length). Masks use PIL-style
    ``nearest-exact`` so pixel centres stay aligned.
    """

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        if not 0 < low <= high:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got [{low}, {high}]")
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        s = self.low + (self.high - self.low) * float(torch.rand(()))
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, params["size"], interpolation=InterpolationMode.NEAREST_EXACT)
        return F.resize(inpt, params["size"], interpolation=InterpolationMode.BILINEAR, antialias=True)


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
) -> v2.Compose:
    """Random scale, pad (image with the mean colour, label with 255), random crop, flip, normalise.

    ``crop_size`` is square, or (height, width) for wide frames (Cityscapes' 512x1024).
    """
    fill = {tv_tensors.Image: tuple(round(255 * m) for m in mean), tv_tensors.Mask: IGNORE_INDEX}
    ops: list[v2.Transform] = [v2.ToImage()]
    if scale_range != (1.0, 1.0):
        ops.append(RandomScale(*scale_range))
    ops.append(v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill))
    if flip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops + _finish(mean, std, bgr))


def eval_transforms(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, bgr: bool = False
) -> v2.Compose:
    """Whole image at its original size: only conversion and normalisation (``mean``/``std`` in 0..1 units)."""
    return v2.Compose([v2.ToImage(), *_finish(mean, std, bgr)])

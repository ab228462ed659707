"""Inference on whole images or sliding windows: test-time scales and flips, batches of mixed sizes.

DeepLab v3/v3+ report results with inputs at several scales and mirrored, with the
class probabilities averaged (Chen et al. 2017, Sec. 4.1); v1/v2 evaluate one scale.
Full-size Cityscapes frames (1024x2048) at output stride 8 do not fit many GPUs in
one pass: ``slide`` runs the network on overlapping windows and averages the logits
where they overlap (mmsegmentation's ``mode='slide'``), trading time for memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.palette import IGNORE_INDEX
from ...data.transforms import fit_factor


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` pixels every ``stride`` covering ``length``; the last one
    ends at the border (as mmsegmentation places it). One window when it covers everything."""
    if length <= window:
        return [0]
    steps = -(-(length - window) // stride) + 1
    return [min(i * stride, length - window) for i in range(steps)]


def slide_logits(model: nn.Module, images: Tensor, window: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Logits (N, C, H, W) at the input's size from overlapping windows, averaged where they overlap.

    Each window's logits are upsampled to the window's size before they are summed;
    windows run one at a time, so peak memory is that of one window, not of the image.
    """
    height, width = images.shape[-2:]
    total: Tensor | None = None
    count = images.new_zeros((1, 1, height, width), dtype=torch.float32)
    for top in window_starts(height, window[0], stride[0]):
        for left in window_starts(width, window[1], stride[1]):
            bottom, right = min(top + window[0], height), min(left + window[1], width)
            crop = images[..., top:bottom, left:right]
            logits = model(crop)["out"]
            logits = F.interpolate(logits.float(), size=crop.shape[-2:], mode="bilinear", align_corners=False)
            if total is None:
                total = logits.new_zeros((images.shape[0], logits.shape[1], height, width))
            total[..., top:bottom, left:right] += logits
            count[..., top:bottom, left:right] += 1
    assert total is not None
    return total / count


@dataclass(frozen=True)
class SlideSpec:
    """``eval.mode=slide``: window and stride (height, width) in pixels of the (scaled) input."""

    window: tuple[int, int]
    stride: tuple[int, int]

    def covers(self, size: tuple[int, int]) -> bool:
        return size[0] <= self.window[0] and size[1] <= self.window[1]


def _logits(model: nn.Module, images: Tensor, size: tuple[int, int], slide: SlideSpec | None) -> Tensor:
    """Float logits at ``size`` for one (scaled, maybe mirrored) input, whole or by windows.

    A window that covers the whole input is exactly the whole-image path.
    """
    if slide is None or slide.covers(tuple(images.shape[-2:])):
        logits = model(images)["out"]
    else:
        logits = slide_logits(model, images, slide.window, slide.stride)
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module,
    images: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    slide: SlideSpec | None = None,
    fit: tuple[int, int] | None = None,
) -> Tensor:
    """Softmax probabilities (N, C, H, W) at the input's size, averaged over ``scales`` x flips.

    Each scaled input is resized bilinearly; its logits (whole, or averaged over
    ``slide`` windows of the scaled input) are upsampled bilinearly back to (H, W)
    before the softmax, so every scale votes at full resolution. ``fit`` = (long, short)
    first rescales the input to fit that box (mmsegmentation's ADE20K test pipeline,
    ``Resize(scale=(2048, 512), keep_ratio=True)``); the scales apply on top of it and
    the prediction still comes back at the original size, where the labels are.
    """
    size = images.shape[-2:]
    base = fit_factor((int(size[0]), int(size[1])), fit) if fit is not None else 1.0
    total: Tensor | None = None
    count = 0
    for scale in scales:
        scale = scale * base
        if scale == 1.0:
            scaled = images
        else:
            target = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            scaled = F.interpolate(images, size=target, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            logits = _logits(model, scaled.flip(-1) if mirrored else scaled, size, slide)
            if mirrored:
                logits = logits.flip(-1)
            probs = logits.softmax(1)
            total = probs if total is None else total.add_(probs)
            count += 1
    assert total is not None, "at least one scale is required"
    return total.div_(count)


def size_sorted_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar (H, W), so padding to the largest wastes little.

    With ``batch_size=1`` the dataset order is kept (and nothing is ever padded).
    """
    order = list(range(len(sizes))) if batch_size == 1 else sorted(range(len(sizes)), key=lambda i: sizes[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_collate(
    samples: Sequence[tuple[Tensor, Tensor, int] | None],
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Stack images of different sizes by padding bottom/right: images with 0 (the mean), labels with 255.

    Returns ``(images, targets, indices, sizes)``; predictions are cropped back to
    ``sizes[i]`` so no pixel of an image is ever cropped away or resized. Skipped
    samples (None) are dropped; a batch of only skipped samples gives None.
    """
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    height = max(s[0].shape[-2] for s in samples)
    width = max(s[0].shape[-1] for s in samples)
    images = samples[0][0].new_zeros(len(samples), samples[0][0].shape[0], height, width)
    targets = torch.full((len(samples), height, width), IGNORE_INDEX, dtype=samples[0][1].dtype)
    sizes = torch.zeros(len(samples), 2, dtype=torch.long)
    for i, (image, target, _) in enumerate(samples):
        h, w = image.shape[-2:]
        images[i, :, :h, :w] = image
        targets[i, :h, :w] = target
        sizes[i] = torch.tensor([h, w])
    indices = torch.tensor([int(s[2]) for s in samples])
    return images, targets, indices, sizes

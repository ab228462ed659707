"""Whole-image inference: test-time scales and flips, and batches of images of different sizes.

DeepLab v3/v3+ report results with inputs at several scales and mirrored, with the
class probabilities averaged (Chen et al. 2017, Sec. 4.1); v1/v2 evaluate one scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.palette import IGNORE_INDEX


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module, images: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False
) -> Tensor:
    """Softmax probabilities (N, C, H, W) at the input's size, averaged over ``scales`` x flips.

    Each scaled input is resized bilinearly; its logits are upsampled bilinearly back
    to (H, W) before the softmax, so every scale votes at full resolution.
    """
    size = images.shape[-2:]
    total: Tensor | None = None
    count = 0
    for scale in scales:
        if scale == 1.0:
            scaled = images
        else:
            target = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            scaled = F.interpolate(images, size=target, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            logits = model(scaled.flip(-1) if mirrored else scaled)["out"]
            if mirrored:
                logits = logits.flip(-1)
            logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
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

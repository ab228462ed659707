"""Cross-entropy with the ignore label under the two DeepLab label policies."""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor

from ..data.palette import IGNORE_INDEX

LABEL_POLICIES = ("nearest", "upsample")


def resize_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour label resize with pixel centres aligned (PIL's ``NEAREST``).

    ``mode="nearest-exact"`` samples ``floor((i + 0.5) * scale)``, as PIL does; the
    plain ``"nearest"`` mode samples ``floor(i * scale)`` and shifts labels by
    half a pixel towards the top-left.
    """
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()


def segmentation_loss(logits: Tensor, labels: Tensor, policy: str = "nearest") -> Tensor:
    """CE(ignore 255) between ``logits`` (B,C,h,w) and ``labels`` (B,H,W).

    ``nearest`` (DeepLab v1/v2) shrinks the labels to the logits; ``upsample``
    (v3/v3+) upsamples the logits bilinearly to the labels.
    """
    if policy == "nearest":
        labels = resize_labels(labels, tuple(logits.shape[-2:]))
    elif policy == "upsample":
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"label policy {policy!r} is unknown; choose one of {LABEL_POLICIES}")
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def total_loss(outputs: Mapping[str, Tensor | list[Tensor]], labels: Tensor, policy: str) -> Tensor:
    """Loss on ``outputs["out"]`` plus one term per entry of ``outputs["aux"]`` (if any).

    Multi-scale training (MSC, attention E-sup) puts per-scale logits in ``aux``.
    """
    loss = segmentation_loss(outputs["out"], labels, policy)
    for extra in outputs.get("aux", []):
        loss = loss + segmentation_loss(extra, labels, policy)
    return loss

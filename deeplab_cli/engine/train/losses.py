"""Cross-entropy with the ignore label under the two DeepLab label policies, with optional class
weights (imbalanced classes: CamVid's poles, Cityscapes' riders) and online hard example mining."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...data.palette import IGNORE_INDEX

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


@dataclass(frozen=True)
class LossSpec:
    """``loss.*``: per-class weights (C,) or None, and OHEM's probability threshold and minimum kept pixels.

    OHEM (online hard example mining, as mmsegmentation's ``OHEMPixelSampler``) keeps
    the labelled pixels whose softmax probability of the true class is below
    ``ohem_thresh``, and never fewer than ``ohem_min_kept`` of them (the hardest ones),
    per process and micro-batch; the loss is the (weighted) mean over the kept pixels.
    """

    class_weights: tuple[float, ...] | None = None
    ohem: bool = False
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100_000
    #: weight of the auxiliary FCN head's loss (``model.aux_head.loss_weight``; mmsegmentation's 0.4)
    aux_head_weight: float = 0.4


def ohem_mask(logits: Tensor, labels: Tensor, thresh: float, min_kept: int) -> Tensor:
    """(B, H, W) bool: the hard pixels to keep; at least ``min(min_kept, labelled pixels)`` of them."""
    with torch.no_grad():
        valid = labels != IGNORE_INDEX
        probs = logits.float().softmax(1)
        true_prob = probs.gather(1, torch.where(valid, labels, 0)[:, None])[:, 0]
        kept = valid & (true_prob < thresh)
        n_valid = int(valid.sum())
        if min_kept > 0 and n_valid and int(kept.sum()) < min(min_kept, n_valid):
            k = min(min_kept, n_valid)
            kth = true_prob[valid].kthvalue(k).values  # the k-th smallest true-class probability
            kept = valid & (true_prob <= kth)
    return kept


def segmentation_loss(logits: Tensor, labels: Tensor, policy: str = "nearest", spec: LossSpec | None = None) -> Tensor:
    """CE(ignore 255) between ``logits`` (B,C,h,w) and ``labels`` (B,H,W), weighted and mined per ``spec``.

    ``nearest`` (DeepLab v1/v2) shrinks the labels to the logits; ``upsample``
    (v3/v3+) upsamples the logits bilinearly to the labels.
    """
    if policy == "nearest":
        labels = resize_labels(labels, tuple(logits.shape[-2:]))
    elif policy == "upsample":
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"label policy {policy!r} is unknown; choose one of {LABEL_POLICIES}")
    weight = None
    if spec is not None and spec.class_weights is not None:
        weight = torch.tensor(spec.class_weights, dtype=torch.float32, device=logits.device)
    if spec is None or not spec.ohem:
        return F.cross_entropy(logits.float() if weight is not None else logits, labels, weight=weight,
                               ignore_index=IGNORE_INDEX)  # fmt: skip
    kept = ohem_mask(logits, labels, spec.ohem_thresh, spec.ohem_min_kept)
    pixel = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=IGNORE_INDEX, reduction="none")
    norm = weight[torch.where(kept, labels, 0)] * kept if weight is not None else kept.float()
    return (pixel * kept).sum() / norm.sum().clamp_min(1e-12)


def total_loss(
    outputs: Mapping[str, Tensor | list[Tensor]], labels: Tensor, policy: str, spec: LossSpec | None = None
) -> Tensor:
    """Loss on ``outputs["out"]`` plus one term per entry of ``outputs["aux"]`` (if any), plus
    ``spec.aux_head_weight`` times the loss of ``outputs["aux_head"]`` (the auxiliary FCN head).

    Multi-scale training (MSC, attention E-sup) puts per-scale logits in ``aux``.
    """
    return sum(loss_terms(outputs, labels, policy, spec).values())  # type: ignore[return-value]


def loss_terms(
    outputs: Mapping[str, Tensor | list[Tensor]], labels: Tensor, policy: str, spec: LossSpec | None = None
) -> dict[str, Tensor]:
    """Each weighted term of :func:`total_loss` by name (``out``, ``aux0``..., ``aux_head``), for the logs."""
    terms = {"out": segmentation_loss(outputs["out"], labels, policy, spec)}  # type: ignore[arg-type]
    for k, extra in enumerate(outputs.get("aux", [])):  # type: ignore[arg-type]
        terms[f"aux{k}"] = segmentation_loss(extra, labels, policy, spec)
    if "aux_head" in outputs:
        weight = (spec or LossSpec()).aux_head_weight
        terms["aux_head"] = weight * segmentation_loss(outputs["aux_head"], labels, policy, spec)  # type: ignore[arg-type]
    return terms

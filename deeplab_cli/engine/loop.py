"""The training step: plain functions with explicit arguments (evaluation lives in ``pipeline``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .losses import total_loss


def freeze_batchnorm(model: nn.Module) -> None:
    """Fix every BatchNorm: running statistics and affine terms stay as loaded.

    DeepLab v1/v2 with ResNet train with frozen BN (batches of 10-20 crops are too
    small for good statistics); the affine parameters leave the optimizer too.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)


def train_step(
    model: nn.Module,
    micro_batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: Optimizer,
    scheduler: LRScheduler,
    label_policy: str,
    device: torch.device,
    freeze_bn: bool = False,
) -> float:
    """One optimizer step over ``len(micro_batches)`` accumulated micro-batches; returns the mean loss."""
    model.train()
    if freeze_bn:
        freeze_batchnorm(model)
    optimizer.zero_grad(set_to_none=True)
    batches = list(micro_batches)
    total = 0.0
    for images, labels in batches:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        loss = total_loss(model(images), labels, label_policy) / len(batches)
        loss.backward()
        total += loss.detach()
    optimizer.step()
    scheduler.step()
    return float(total)


def group_micro_batches(loader: Iterable, accumulate: int) -> Iterator[list[tuple[Tensor, Tensor]]]:
    """Chunk a loader of ``(images, labels, index)`` into lists of ``accumulate`` micro-batches."""
    chunk: list[tuple[Tensor, Tensor]] = []
    for images, labels, _ in loader:
        chunk.append((images, labels))
        if len(chunk) == accumulate:
            yield chunk
            chunk = []

"""The training step: plain functions with explicit arguments (evaluation lives in ``pipeline``)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..runtime import distributed
from ..runtime.precision import autocast, memory_format
from .losses import LossSpec, loss_terms


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


@dataclass(frozen=True)
class StepResult:
    """``loss`` is NaN and ``empty`` true when no rank had a sample (``dataset.on_error=skip``): no step."""

    loss: float
    finite: bool
    grad_norm: float | None = None
    empty: bool = False
    #: each weighted term of the loss (``out``, ``aux0``..., ``aux_head``), this rank's, for the progress lines
    terms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StepSettings:
    """How every optimizer step runs: ``trainer.label_policy/freeze_bn/grad_clip/precision/channels_last`` and the
    ``loss`` node, as values (``config/training.py`` makes them from the config)."""

    label_policy: str
    freeze_bn: bool = False
    grad_clip: float | None = None
    precision: str = "fp32"
    channels_last: bool = False
    loss: LossSpec | None = None


def train_step(
    model: nn.Module,
    micro_batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: Optimizer,
    scheduler: LRScheduler,
    device: torch.device,
    settings: StepSettings,
    *,
    scaler: torch.amp.GradScaler | None = None,
    reduce_loss: Callable[[Tensor], Tensor] | None = None,
) -> StepResult:
    """One optimizer step over the accumulated micro-batches; returns the mean loss.

    A non-finite loss (or gradient norm, when clipping) leaves the model untouched: the
    step is not taken and the BatchNorm running statistics the forward pass updated are
    restored; only the LR schedule advances with the iteration count. With fp16 the
    ``scaler`` skips steps whose scaled gradients overflow, as loss scaling expects.

    Under ``DistributedDataParallel`` gradients are averaged only after the last
    micro-batch (``no_sync`` before it), and ``reduce_loss`` (a mean over ranks) makes
    the reported loss, and so the skip decision, the same on every rank.

    When every sample of a rank's micro-batches was skipped (``dataset.on_error=skip``),
    no rank steps: that rank has nothing to back-propagate, so it would call the loss
    all-reduce while the others wait in the gradient all-reduce (a hang). One collective
    first makes the decision common; the result is ``empty`` with a NaN loss, never a 0.0.
    """
    s = settings
    model.train()
    if s.freeze_bn:
        freeze_batchnorm(model)
    optimizer.zero_grad(set_to_none=True)
    batches = list(micro_batches)
    if distributed.any_rank(not batches):
        scheduler.step()  # the iteration still counts, as for a skipped non-finite step
        return StepResult(math.nan, True, None, empty=True)
    saved = [(b, b.detach().clone()) for b in model.buffers() if b.is_floating_point()]
    total = torch.zeros((), device=device)
    sums: dict[str, Tensor] = {}
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    fmt = memory_format(s.channels_last)
    no_sync = getattr(model, "no_sync", None)  # DistributedDataParallel (also through torch.compile)
    for k, (images, labels) in enumerate(batches):
        images = images.to(device, non_blocking=True, memory_format=fmt)
        labels = labels.to(device, non_blocking=True)
        defer = no_sync() if no_sync is not None and k < len(batches) - 1 else contextlib.nullcontext()
        with defer:
            with autocast(device, s.precision):
                terms = loss_terms(model(images), labels, s.label_policy, s.loss)
                loss = sum(terms.values()) / len(batches)
            scaler.scale(loss).backward()
        total += loss.detach().float()
        for name, term in terms.items():
            sums[name] = sums.get(name, 0.0) + term.detach().float() / len(batches)
    value = float(reduce_loss(total) if reduce_loss is not None else total)
    grad_norm = None
    if s.grad_clip is not None and math.isfinite(value):
        scaler.unscale_(optimizer)
        params = [p for p in model.parameters() if p.grad is not None]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, s.grad_clip))
    finite = math.isfinite(value) and (grad_norm is None or scaler.is_enabled() or math.isfinite(grad_norm))
    if finite:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, before in saved:
                buffer.copy_(before)
    scheduler.step()
    return StepResult(value, finite, grad_norm, terms={k: float(v) for k, v in sums.items()})


def group_micro_batches(loader: Iterable, accumulate: int) -> Iterator[list[tuple[Tensor, Tensor]]]:
    """Chunk a loader of ``(images, labels, index)`` into lists of ``accumulate`` micro-batches."""
    chunk: list[tuple[Tensor, Tensor]] = []
    for count, batch in enumerate(loader, 1):
        if batch is not None:  # None: every sample of the micro-batch was skipped
            images, labels, _ = batch
            chunk.append((images, labels))
        if count % accumulate == 0:
            yield chunk
            chunk = []

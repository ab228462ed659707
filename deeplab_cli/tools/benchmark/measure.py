"""Timing and memory of one model: training steps and inference on tensors made beforehand, one round
or alternating rounds, and the spread of their ratios.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .settings import Settings
from .subjects import _upsampled, count_params, our_loss, reference_loss

LR, MOMENTUM = 1e-3, 0.9  # the SGD of both training steps
Loss = Callable[[Mapping[str, Any], Tensor], Tensor]


class PeakMemory:
    """Peak memory of one model's measurement: CUDA's allocator peak, or the process's peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_process_peak_rss"
        self.baseline_mb: float | None = None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            self.baseline_mb = proc_status_mb("VmRSS")
        except OSError:
            self.kind, self.baseline_mb = "unavailable", None

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return proc_status_mb("VmHWM") if self.kind != "unavailable" else None


def proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(settings: Settings, device: torch.device) -> AbstractContextManager[Any]:
    if settings.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if settings.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _to_device(x: Tensor, device: torch.device, channels_last: bool = False) -> Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def make_train_step(
    model: nn.Module, runner: nn.Module, loss: Loss, settings: Settings, device: torch.device
) -> Callable[[Tensor, Tensor], None]:
    """One SGD step (momentum 0.9, lr 1e-3) of ``runner`` (``model``, compiled or not); fp16 scales the loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")

    def step(images: Tensor, labels: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(settings, device):
            value = loss(runner(images), labels)
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def time_train(
    step: Callable[[Tensor, Tensor], None],
    batches: Iterator[tuple[Tensor, Tensor] | None],
    settings: Settings,
    device: torch.device,
) -> tuple[float, float]:
    """(images/s, seconds) over ``iters`` steps after ``warmup``; fetching a batch is inside the clock."""
    images_seen, start = 0, time.perf_counter()
    for i in range(settings.warmup + settings.iters):
        if i == settings.warmup:
            _sync(device)
            images_seen, start = 0, time.perf_counter()
        batch = next(batches)
        if batch is None:  # a batch of only skipped samples (dataset.on_error=skip)
            continue
        step(*batch)
        images_seen += batch[0].shape[0]
    _sync(device)
    elapsed = time.perf_counter() - start
    return images_seen / elapsed, elapsed


def time_infer(runner: nn.Module, image: Tensor, settings: Settings, device: torch.device) -> tuple[float, float]:
    """(images/s, seconds) at batch 1, logits upsampled to the image, after ``warmup`` passes."""
    runner.eval()
    size = tuple(image.shape[-2:])
    with torch.inference_mode(), _autocast(settings, device):
        for i in range(settings.warmup + settings.infer_iters):
            if i == settings.warmup:
                _sync(device)
                start = time.perf_counter()
            _upsampled(runner(image)["out"], size)
        _sync(device)
    elapsed = time.perf_counter() - start
    return settings.infer_iters / elapsed, elapsed


@dataclass
class Inputs:
    """The tensors both models see, made once on the device before any clock starts."""

    images: Tensor
    labels: Tensor
    image: Tensor

    @classmethod
    def random(cls, settings: Settings, num_classes: int, device: torch.device) -> Inputs:
        g = torch.Generator().manual_seed(0)
        b, c = settings.batch, settings.crop
        width, height = settings.infer_size
        return cls(
            _to_device(torch.randn(b, 3, c, c, generator=g), device, settings.channels_last),
            _to_device(torch.randint(0, num_classes, (b, c, c), generator=g), device),
            _to_device(torch.randn(1, 3, height, width, generator=g), device, settings.channels_last),
        )

    def repeat(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield self.images, self.labels


def _loader_batches(loader: Any, settings: Settings, device: torch.device) -> Iterator[tuple[Tensor, Tensor] | None]:
    """The real loader's batches moved to the device (inside the clock, as training does)."""
    for batch in loader:
        if batch is None:
            yield None
            continue
        images, labels, _ = batch
        yield _to_device(images, device, settings.channels_last), _to_device(labels, device)


def measure(
    model: nn.Module, loss: Loss, inputs: Inputs, settings: Settings, device: torch.device, loader: Any = None
) -> dict[str, Any]:
    """Train (random tensors; then the real loader if given) and inference throughput of one model."""
    model = model.to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    runner = torch.compile(model) if settings.compile else model
    runner.train()
    step = make_train_step(model, runner, loss, settings, device)
    result: dict[str, Any] = {"params": count_params(model)}
    result["train_images_per_s"], result["train_s"] = time_train(step, inputs.repeat(), settings, device)
    result["train_with_data_images_per_s"] = result["train_with_data_s"] = None
    if loader is not None:
        batches = _loader_batches(loader, settings, device)
        result["train_with_data_images_per_s"], result["train_with_data_s"] = time_train(
            step, batches, settings, device
        )
        batches.close()  # shuts the loader's workers down
    result["infer_images_per_s"], result["infer_s"] = time_infer(runner, inputs.image, settings, device)
    del step, runner, model
    return result


def time_round(
    model: nn.Module, loss: Loss, inputs: Inputs, settings: Settings, device: torch.device
) -> tuple[float, float]:
    """(train images/s, inference images/s) of one more round: the timing of :func:`measure`, nothing else."""
    runner = torch.compile(model) if settings.compile else model
    runner.train()
    train, _ = time_train(make_train_step(model, runner, loss, settings, device), inputs.repeat(), settings, device)
    infer, _ = time_infer(runner, inputs.image, settings, device)
    return train, infer


def alternate_rounds(
    ours: nn.Module, reference: nn.Module, inputs: Inputs, settings: Settings, device: torch.device, rounds: int
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """``rounds`` x (ours, reference), timed in turn so that a drift of the machine touches both alike."""
    out = []
    for _ in range(rounds):
        mine = time_round(ours, our_loss, inputs, settings, device)
        theirs = time_round(reference, reference_loss, inputs, settings, device)
        out.append((mine, theirs))
    return out


def spread(values: list[float]) -> dict[str, float | list[float] | None]:
    """Median, min, max and interquartile range of per-round ratios (IQR needs 4 rounds or more)."""
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) >= 4 else None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "iqr": [q[0], q[2]] if q else None,
        "rounds": values,
    }


def release(device: torch.device, compiled: bool) -> None:
    """Give the first model's memory back before the second is built."""
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):  # glibc keeps freed arenas; return them for a low RSS baseline
            ctypes.CDLL("libc.so.6").malloc_trim(0)

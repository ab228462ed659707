"""Mixed precision and memory format: the fast paths of ``trainer.precision`` and ``trainer.channels_last``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ...errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r}; choose one of {', '.join(PRECISIONS)}.")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """``torch.autocast`` in bf16/fp16 (matmuls and convolutions in half precision, reductions in fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (its 5-bit exponent underflows small gradients); a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def memory_format(channels_last: bool) -> torch.memory_format:
    """NHWC lets cuDNN use tensor-core convolutions without transposes (Ampere and later)."""
    return torch.channels_last if channels_last else torch.contiguous_format


def to_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    return model.to(memory_format=memory_format(channels_last)) if channels_last else model

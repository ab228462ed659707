"""The progress lines of ``train.log``: what a batch-job user reads instead of a terminal's progress bar.

Every ``trainer.log_interval`` iterations (50 by default, mmsegmentation's) one line: the
iteration, the loss and each of its terms, the learning rate, the data-loading and step
time per iteration over the interval, images per second, the time left and the peak
memory (the GPU's allocator, or the process's resident set on a CPU).
"""

from __future__ import annotations

import datetime
import resource
import sys
from dataclasses import dataclass, field

import torch


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """(MiB, what was measured): ``torch.cuda.max_memory_allocated`` on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "GPU"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10), "RSS"


def format_eta(seconds: float) -> str:
    """``1 day, 2:03:04`` style, whole seconds."""
    return str(datetime.timedelta(seconds=max(0, round(seconds))))


@dataclass
class IntervalMeter:
    """Sums of one logging interval: data and step seconds, iterations, and the loss terms."""

    images_per_iteration: int
    data: float = 0.0
    step: float = 0.0
    iterations: int = 0
    terms: dict[str, float] = field(default_factory=dict)
    losses: float = 0.0
    counted: int = 0  # iterations with a finite, non-empty loss

    def add(self, data: float, step: float, loss: float, terms: dict[str, float], counted: bool) -> None:
        self.data += data
        self.step += step
        self.iterations += 1
        if counted:
            self.counted += 1
            self.losses += loss
            for name, value in terms.items():
                self.terms[name] = self.terms.get(name, 0.0) + value

    def line(self, it: int, max_iters: int, lr: float, seconds_per_iteration: float, device: torch.device) -> str:
        """``iter 50/80000 | loss 1.2345 (out 1.1000, aux_head 0.1345) | lr 9.99e-03 | data 0.012 s | ...``."""
        n = max(1, self.iterations)
        k = max(1, self.counted)
        loss = f"loss {self.losses / k:.4f}" if self.counted else "loss n/a (no finite step)"
        if self.counted and len(self.terms) > 1:
            loss += " (" + ", ".join(f"{name} {value / k:.4f}" for name, value in self.terms.items()) + ")"
        busy = self.data + self.step
        speed = self.iterations * self.images_per_iteration / busy if busy > 0 else 0.0
        mib, what = peak_memory_mib(device)
        eta = format_eta((max_iters - it) * seconds_per_iteration)
        return (
            f"iter {it}/{max_iters} | {loss} | lr {lr:.3e} | data {self.data / n:.3f} s | step {self.step / n:.3f} s"
            f" | {speed:.2f} img/s | eta {eta} | peak {what} {mib:.0f} MiB"
        )

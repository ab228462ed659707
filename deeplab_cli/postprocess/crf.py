"""Fully-connected CRF (Kraehenbuehl & Koltun 2011) as used by DeepLab v1/v2, on top of pydensecrf.

Only numpy, PIL and the stdlib are imported here: spawned worker processes import this module,
and pulling in torch would cost each of them seconds and hundreds of MB.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Hashable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from types import ModuleType, TracebackType

import numpy as np
from PIL import Image

from ..errors import ConfigError, DeepLabError

# Probabilities are clipped here before -log(p), as pydensecrf.utils.unary_from_softmax does.
_PROB_CLIP = 1e-5


@dataclass(frozen=True)
class CRFParams:
    """DenseCRF hyper-parameters; the defaults are DeepLab v2's values for PASCAL VOC."""

    iterations: int = 10
    bi_w: float = 4.0
    bi_xy_std: float = 67.0
    bi_rgb_std: float = 3.0
    pos_w: float = 3.0
    pos_xy_std: float = 1.0

    def __post_init__(self) -> None:
        """Reject values pydensecrf would accept silently but that make no sense (or divide by zero)."""
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ConfigError(
                f"crf.iterations={self.iterations!r} is invalid: the number of mean-field iterations must be an "
                "integer >= 1 (DeepLab uses 10). Set e.g. crf.iterations=10, or run with crf=none to disable the CRF."
            )
        for name in ("bi_xy_std", "bi_rgb_std", "pos_xy_std"):
            _check_number(name, getattr(self, name), strictly_positive=True)
        for name in ("bi_w", "pos_w"):
            _check_number(name, getattr(self, name), strictly_positive=False)

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict, for logging and for writing next to evaluation results."""
        return asdict(self)


def _check_number(name: str, value: object, *, strictly_positive: bool) -> None:
    """Raise ConfigError naming ``crf.<name>=<value>`` unless it is a finite number in range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))
    if ok:
        ok = value > 0 if strictly_positive else value >= 0  # type: ignore[operator]
    if not ok:
        what = "a standard deviation and must be > 0" if strictly_positive else "a weight and must be >= 0"
        raise ConfigError(
            f"crf.{name}={value!r} is invalid: it is {what}. Fix it in the crf config group or on the command line "
            f"(e.g. crf.{name}={getattr(CRFParams, name)}), or run with crf=none to disable the CRF."
        )


def require_pydensecrf() -> None:
    """Fail early, with install instructions, before any image is processed."""
    _densecrf_module()


def _densecrf_module() -> ModuleType:
    """Import pydensecrf lazily so the rest of the package works without the optional extra."""
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as exc:
        raise ConfigError(
            "The DenseCRF post-processing (crf=...) needs the pydensecrf module, which comes from the pydensecrf2 "
            f'distribution, but it cannot be imported ({exc}). Install it with pip install "deeplab-cli[crf]" '
            "(or pip install pydensecrf2; the old pydensecrf sdist no longer builds with Cython 3), "
            "or run with crf=none."
        ) from exc
    return densecrf


def dense_crf(probs: np.ndarray, image: np.ndarray, params: CRFParams) -> np.ndarray:
    """Refine softmax ``probs`` (C, H, W) with the raw RGB ``image`` (H, W, 3) uint8; return (H, W) uint8 labels.

    The bilateral kernel compares raw 0..255 colours (``bi_rgb_std`` is in those units), so the image must
    be the original pixels, never the normalised network input.
    """
    if probs.ndim != 3:
        raise ValueError(f"dense_crf: probs must have shape (C, H, W), got {probs.shape}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"dense_crf: image must have shape (H, W, 3), got {image.shape} (probs {probs.shape})")
    n_classes, height, width = probs.shape
    if image.shape[:2] != (height, width):
        raise ValueError(
            f"dense_crf: probs {probs.shape} (C, H, W) and image {image.shape} (H, W, 3) differ in height/width; "
            "upsample the probabilities to the original image size first"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"dense_crf: image must be raw uint8 RGB, got dtype {image.dtype} (shape {image.shape})")
    if not 1 <= n_classes <= 256:
        raise ValueError(f"dense_crf: {n_classes} classes in probs {probs.shape} do not fit uint8 labels")
    densecrf = _densecrf_module()
    probs32 = np.clip(probs.astype(np.float32, copy=False), _PROB_CLIP, 1.0)
    unary = np.ascontiguousarray(-np.log(probs32).reshape(n_classes, -1), dtype=np.float32)
    crf = densecrf.DenseCRF2D(width, height, n_classes)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    # pydensecrf's typed memoryview rejects read-only buffers (e.g. np.asarray of a PIL image): copy those.
    rgb = np.require(image, dtype=np.uint8, requirements=["C_CONTIGUOUS", "WRITEABLE"])
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std, rgbim=rgb, compat=params.bi_w)
    q = np.asarray(crf.inference(params.iterations), dtype=np.float32)
    return q.reshape(n_classes, height, width).argmax(axis=0).astype(np.uint8)


def crf_task(probs: np.ndarray, image_path: str, params: CRFParams) -> np.ndarray:
    """Worker entry point: load the raw image here so only the probabilities cross the process boundary."""
    with Image.open(image_path) as img:
        image = np.array(img.convert("RGB"), dtype=np.uint8)
    return dense_crf(probs, image, params)


def default_workers() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity), not the machine's total."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class CRFError(DeepLabError):
    """DenseCRF failed on one image; the message names the image and the original error."""


def _crf_error(image_path: str, exc: BaseException) -> CRFError:
    message = f"DenseCRF failed on {image_path}: {type(exc).__name__}: {exc}"
    if isinstance(exc, BrokenProcessPool):
        message += (
            " A CRF worker process died (killed for memory, or crashed inside pydensecrf); this image may not be"
            " the cause. Use fewer CRF workers, or workers=0 to run in-process and see the real error."
        )
    return CRFError(message)


def _worker_context() -> multiprocessing.context.BaseContext:
    """fork on Linux, spawn elsewhere.

    A spawned worker re-imports the parent's ``__main__``; under the ``deeplab-eval``
    console script that is torch, torchvision and Hydra, several seconds per worker
    and per sweep job. Forked workers start in milliseconds and only ever run numpy,
    PIL and pydensecrf (never torch or OpenMP), as PyTorch's own DataLoader workers do.
    """
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


class CRFPool:
    """Run :func:`crf_task` over images in worker processes, overlapping with inference in the caller.

    ``workers == 0`` runs synchronously in the calling process (debugging, tests). At most
    ``max_pending`` tasks are in flight, so the probabilities waiting in the queue stay bounded in memory.
    """

    def __init__(self, params: CRFParams, workers: int, max_pending: int | None = None) -> None:
        if workers < 0:
            raise ConfigError(f"crf workers={workers} is invalid: use 0 (run in-process) or a positive count.")
        self.params = params
        self.workers = workers
        self.max_pending = 2 * max(workers, 1) if max_pending is None else max_pending
        if self.max_pending < 1:
            raise ConfigError(f"crf max_pending={max_pending} is invalid: it must be >= 1.")
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False
        if workers >= 1:
            self._executor = ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context())
        self._in_flight: deque[tuple[Hashable, str, Future[np.ndarray]]] = deque()
        self._finished: deque[tuple[Hashable, np.ndarray]] = deque()

    @property
    def pending(self) -> int:
        """Tasks submitted whose result has not been collected yet (bounded by ``max_pending``)."""
        return len(self._in_flight)

    def submit(self, key: Hashable, probs: np.ndarray, image_path: str) -> None:
        """Queue one image; blocks on the oldest task first when ``max_pending`` are already in flight."""
        if self._closed:
            raise RuntimeError("CRFPool.submit() after the pool was closed")
        if self._executor is None:
            try:
                self._finished.append((key, crf_task(probs, image_path, self.params)))
            except Exception as exc:
                raise _crf_error(image_path, exc) from exc
            return
        while len(self._in_flight) >= self.max_pending:
            self._finished.append(self._collect(self._in_flight.popleft()))
        future = self._executor.submit(crf_task, probs, image_path, self.params)
        self._in_flight.append((key, image_path, future))

    def completed(self) -> Iterator[tuple[Hashable, np.ndarray]]:
        """Yield every result finished so far, without blocking."""
        while self._finished:
            yield self._finished.popleft()
        for item in [item for item in self._in_flight if item[2].done()]:
            self._in_flight.remove(item)
            yield self._collect(item)

    def drain(self) -> Iterator[tuple[Hashable, np.ndarray]]:
        """Yield all remaining results, blocking, in submission order."""
        while self._finished:
            yield self._finished.popleft()
        while self._in_flight:
            yield self._collect(self._in_flight.popleft())

    @staticmethod
    def _collect(item: tuple[Hashable, str, Future[np.ndarray]]) -> tuple[Hashable, np.ndarray]:
        key, image_path, future = item
        try:
            return key, future.result()
        except Exception as exc:  # includes BrokenProcessPool when a worker dies
            raise _crf_error(image_path, exc) from exc

    def close(self, cancel: bool = False) -> None:
        """Stop the workers; ``cancel`` drops tasks that have not started (used when unwinding an error)."""
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=cancel)
            self._executor = None
        if cancel:
            self._in_flight.clear()

    def __enter__(self) -> CRFPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(cancel=exc_type is not None)

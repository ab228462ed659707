"""The evaluation pipeline shared by validation, ``deeplab-eval``, the VOC export and ``deeplab-predict``.

network (or cache) -> argmax metrics -> DenseCRF on worker processes -> CRF metrics.
The CRF of image i runs on a worker while the network processes image i+1, and the
network is skipped entirely for images whose probabilities are already cached.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ...data.palette import IGNORE_INDEX
from ...postprocess.crf import CRFParams, CRFPool
from ..runtime.distributed import all_reduce_max_, all_reduce_sum_, shard
from ..runtime.precision import autocast, memory_format
from .inference import SlideSpec, pad_collate, predict_probabilities, size_sorted_batches
from .metrics import ConfusionMatrix
from .prob_cache import ProbabilityCache
from .trimap import TrimapMeter

#: ``(index, prediction (H, W), target (H, W), stage)`` with stage "network" or "crf".
PredictionHook = Callable[[int, Tensor, Tensor, str], None]
#: One image out of the network or the cache: ``(index, probabilities or None, prediction, target)``.
Output = tuple[int, "np.ndarray | None", Tensor, Tensor]


@dataclass(frozen=True)
class EvalSettings:
    num_classes: int
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    batch_size: int = 1
    num_workers: int = 0
    crf: CRFParams | None = None
    crf_workers: int = 1
    trimap: tuple[int, ...] = ()
    progress: bool = False
    precision: str = "fp32"
    channels_last: bool = False
    #: ``eval.mode=slide``: windows and strides; None evaluates whole images
    slide: SlideSpec | None = None
    #: ``dataset.fit_size``: run the network on the image rescaled to fit (long, short); None: stored size
    fit: tuple[int, int] | None = None
    #: ``(rank, world_size)``: this process scores images ``rank, rank + world_size, ...`` only
    shard: tuple[int, int] = (0, 1)

    def indices(self, n: int) -> list[int]:
        """The dataset indices this process evaluates (all of them unless sharded)."""
        return shard(list(range(n)), *self.shard)


@dataclass
class EvalResult:
    network: ConfusionMatrix
    crf: ConfusionMatrix | None = None
    trimap_network: TrimapMeter | None = None
    trimap_crf: TrimapMeter | None = None
    images: int = 0
    network_images: int = 0
    cached_images: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def all_reduce(self) -> None:
        """Sum the counts of every rank (each evaluated its shard); ``seconds`` becomes the slowest rank's."""
        for meter in (self.network, self.crf, self.trimap_network, self.trimap_crf):
            if meter is not None:
                meter.all_reduce()
        counts = torch.tensor([self.images, self.network_images, self.cached_images], dtype=torch.int64)
        all_reduce_sum_(counts)
        self.images, self.network_images, self.cached_images = (int(v) for v in counts)
        self.seconds = float(all_reduce_max_(torch.tensor([self.seconds], dtype=torch.float64)))


def _network_outputs(
    model: nn.Module, dataset: Any, indices: list[int], device: torch.device, s: EvalSettings, need_probs: bool
) -> Iterator[Output]:
    """Whole images through the network, ``batch_size`` at a time (padded, then cropped back)."""
    if not indices:
        return
    sizes = [dataset.image_size(i) for i in indices] if s.batch_size > 1 else [(0, 0)] * len(indices)
    batches = [[indices[j] for j in batch] for batch in size_sorted_batches(sizes, s.batch_size)]
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=pad_collate,
        num_workers=s.num_workers,
        generator=torch.Generator().manual_seed(0),  # never draw from the global RNG (training's dropout)
    )
    for batch in loader:
        if batch is None:  # every sample of the batch was skipped (dataset.on_error=skip)
            continue
        images, targets, idx, hw = batch
        images = images.to(device, non_blocking=True, memory_format=memory_format(s.channels_last))
        with autocast(device, s.precision):
            probs = predict_probabilities(model, images, s.scales, s.flip, s.slide, s.fit)
        preds = probs.argmax(1)
        for j in range(len(idx)):
            h, w = int(hw[j, 0]), int(hw[j, 1])
            p = probs[j, :, :h, :w].to(torch.float16).cpu().numpy() if need_probs else None
            yield int(idx[j]), p, preds[j, :h, :w], targets[j, :h, :w].to(device)


def _cached_outputs(
    cache: ProbabilityCache, dataset: Any, indices: list[int], device: torch.device, failed: list[int]
) -> Iterator[Output]:
    """Stored entries; unreadable ones are appended to ``failed`` for the network to redo."""
    for i in indices:
        entry = cache.load(dataset.ids[i])
        if entry is None:
            failed.append(i)
            continue
        probs, pred_np = entry
        pred = torch.from_numpy(pred_np.astype(np.int64)).to(device)
        target = dataset.load_target(i)
        target = torch.full_like(pred, IGNORE_INDEX) if target is None else target.to(device)
        yield i, probs, pred, target


def _outputs(model, dataset, device, s: EvalSettings, cache: ProbabilityCache | None, result: EvalResult, bar):
    """Network outputs for cache misses first, then cache hits (each saved to the cache once)."""
    everything = s.indices(len(dataset))
    hits = [i for i in everything if cache is not None and cache.has(dataset.ids[i])]
    hit_set = set(hits)
    misses = [i for i in everything if i not in hit_set]
    need_probs = s.crf is not None or cache is not None
    failed: list[int] = []

    def computed(indices: list[int]) -> Iterator[Output]:
        bar.total += len(indices)
        bar.refresh()
        for index, probs, pred, target in _network_outputs(model, dataset, indices, device, s, need_probs):
            if cache is not None:
                cache.save(dataset.ids[index], probs, pred.cpu().numpy())
            result.network_images += 1
            bar.update(1)
            yield index, probs, pred, target

    yield from computed(misses)
    for out in _cached_outputs(cache, dataset, hits, device, failed) if cache is not None else ():
        result.cached_images += 1
        yield out
    yield from computed(failed)


def run_evaluation(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    s: EvalSettings,
    cache: ProbabilityCache | None = None,
    on_prediction: PredictionHook | None = None,
) -> EvalResult:
    """Confusion matrices (network, and CRF when ``s.crf``) over whole images at their own size.

    ``dataset`` yields ``(image, target, index)`` and offers ``ids``, ``image_path``,
    ``image_size`` and ``load_target`` (``VOCSegmentation``, ``ImageFiles``).
    """
    model.eval()
    start = time.perf_counter()
    result = EvalResult(network=ConfusionMatrix(s.num_classes, device=device))
    if s.trimap:
        result.trimap_network = TrimapMeter(s.trimap, s.num_classes)
    hook = on_prediction or (lambda *_: None)
    net_bar = tqdm(total=0, desc="network", disable=not s.progress, dynamic_ncols=True, leave=False)
    with net_bar, _crf_stage(s, result, dataset, hook) as crf:
        for index, probs, pred, target in _outputs(model, dataset, device, s, cache, result, net_bar):
            result.images += 1
            result.network.update(pred, target)
            if result.trimap_network is not None:
                result.trimap_network.update(pred, target)
            hook(index, pred, target, "network")
            if crf is not None:
                crf.submit(index, probs, target)
    result.seconds = time.perf_counter() - start
    return result


class _CRFStage:
    """Feeds the CRF pool and scores its results as they come back (targets wait here, not in workers)."""

    def __init__(self, pool: CRFPool, s: EvalSettings, result: EvalResult, dataset: Any, hook: PredictionHook):
        self.pool, self.result, self.dataset, self.hook = pool, result, dataset, hook
        self.targets: dict[int, Tensor] = {}
        total = len(s.indices(len(dataset)))
        self.bar = tqdm(total=total, desc="CRF", disable=not s.progress, dynamic_ncols=True, leave=False)

    def submit(self, index: int, probs: np.ndarray, target: Tensor) -> None:
        self.targets[index] = target
        self.pool.submit(index, probs, str(self.dataset.image_path(index)))
        self._score(self.pool.completed())

    def finish(self) -> None:
        self._score(self.pool.drain())
        self.bar.close()

    def _score(self, done: Iterable[tuple[int, np.ndarray]]) -> None:
        for index, labels in done:
            target = self.targets.pop(index)
            pred = torch.from_numpy(labels.astype(np.int64)).to(target.device)
            assert self.result.crf is not None
            self.result.crf.update(pred, target)
            if self.result.trimap_crf is not None:
                self.result.trimap_crf.update(pred, target)
            self.hook(index, pred, target, "crf")
            self.bar.update(1)


@contextlib.contextmanager
def _crf_stage(s: EvalSettings, result: EvalResult, dataset: Any, hook: PredictionHook) -> Iterator[_CRFStage | None]:
    if s.crf is None:
        yield None
        return
    result.crf = ConfusionMatrix(s.num_classes, device=result.network.matrix.device)
    if s.trimap:
        result.trimap_crf = TrimapMeter(s.trimap, s.num_classes)
    with CRFPool(s.crf, s.crf_workers) as pool:
        stage = _CRFStage(pool, s, result, dataset, hook)
        yield stage
        stage.finish()

"""An iteration-based, resumable, rank-aware batch sampler."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class IterationBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields ``num_batches`` batches of ``(index, sample_seed)`` starting at batch ``start``.

    Epoch ``e`` is a permutation drawn from ``seed + e``; batch ``b`` is a pure
    function of ``(seed, b)``, so a run resumed at batch ``k`` continues with
    the very batches (and augmentation seeds) an uninterrupted run would use.
    With ``world_size > 1`` each global batch is split between ranks.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        num_batches: int,
        start: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        global_batch = batch_size * world_size
        if dataset_size < global_batch:
            raise ValueError(
                f"the training split has {dataset_size} images, fewer than one global batch "
                f"({global_batch}); lower the batch size"
            )
        self.n, self.batch_size, self.num_batches = dataset_size, batch_size, num_batches
        self.start, self.seed, self.rank, self.world_size = start, seed, rank, world_size
        self.per_epoch = dataset_size // global_batch

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, perm = -1, torch.empty(0, dtype=torch.long)
        global_batch = self.batch_size * self.world_size
        for b in range(self.start, self.num_batches):
            if b // self.per_epoch != epoch:
                epoch = b // self.per_epoch
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            first = (b % self.per_epoch) * global_batch + self.rank * self.batch_size
            chunk = perm[first : first + self.batch_size].tolist()
            yield [(i, self._sample_seed(b, j)) for j, i in enumerate(chunk, self.rank * self.batch_size)]

    def _sample_seed(self, batch: int, slot: int) -> int:
        return (self.seed * 1_000_003 + batch * 4099 + slot) % (2**63)

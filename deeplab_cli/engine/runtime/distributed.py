"""Data-parallel training with ``torchrun``: the process group, rank-0 duties and the few collectives.

``torchrun`` starts one process per GPU (or per CPU worker) and sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``. Every process runs the same training loop on its
share of each global batch; ``DistributedDataParallel`` averages the gradients. Only
rank 0 writes checkpoints, TensorBoard and ``metrics.json``; decisions that would
otherwise differ between ranks (stop on a signal, skip a non-finite step) go through
one collective so that every rank takes the same branch and none waits forever.
Without ``WORLD_SIZE > 1`` every helper here is a no-op, so single-process runs pay nothing.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

#: Environment variable that fixes the run directory's time stamp for every rank (see ``train.yaml``).
RUN_STAMP_ENV = "DEEPLAB_RUN_STAMP"
#: Environment variable that gives non-zero ranks their own Hydra log file (``train_rank1.log``).
LOG_SUFFIX_ENV = "DEEPLAB_LOG_SUFFIX"


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job; ``world_size == 1`` is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this machine (they share its CPUs)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _export_submitit_env() -> None:
    """A job of Hydra's submitit launcher with several tasks: set the variables ``torchrun`` would.

    Each task is one process (``hydra.launcher.tasks_per_node``, ``nodes``); submitit
    knows the ranks and the first host, which becomes the rendezvous address.
    """
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    if env.world_size > 1:
        env.export(set_cuda_visible_devices=False)


def from_env() -> DistInfo:
    """The ranks ``torchrun`` (or submitit, for a multi-task job) assigned."""
    _export_submitit_env()
    env = os.environ
    world = int(env.get("WORLD_SIZE", 1))
    return DistInfo(
        int(env.get("RANK", 0)), world, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", world))
    )


def current() -> DistInfo:
    """This process's place once the process group exists, else single-process."""
    if dist.is_available() and dist.is_initialized():
        env = from_env()
        return DistInfo(dist.get_rank(), dist.get_world_size(), env.local_rank, env.local_world_size)
    return DistInfo()


def backend() -> str:
    """Gloo for CPU tensors always (CPU training, the run-dir broadcast); NCCL for CUDA tensors when present."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def session(timeout_minutes: float = 30.0) -> Iterator[DistInfo]:
    """Join the process group for the body when launched by ``torchrun``; leave it afterwards.

    Rank 0's time stamp is shared so that Hydra gives every rank the same run
    directory; non-zero ranks get their own log file (``<job>_rank<N>.log``).
    """
    info = from_env()
    if not info.enabled or dist.is_initialized():
        yield current() if info.enabled else info
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend(), timeout=timedelta(minutes=timeout_minutes))
    try:
        stamp = [os.environ.get(RUN_STAMP_ENV) or datetime.now().strftime("%Y-%m-%d/%H-%M-%S")]
        dist.broadcast_object_list(stamp, src=0)
        os.environ[RUN_STAMP_ENV] = stamp[0]
        if info.rank:
            os.environ[LOG_SUFFIX_ENV] = f"_rank{info.rank}"
        yield info
    finally:
        dist.destroy_process_group()


def launch(hydra_entry: Callable[[], object]) -> None:
    """Run a ``@hydra.main`` entry point; under ``torchrun`` each process joins the group first,
    so that Hydra gives every rank rank 0's run dir (and ranks N > 0 their own log file)."""
    with session() as info:
        sys.argv += hydra_overrides(info)
        hydra_entry()


def rank_prefix(info: DistInfo) -> str:
    """``[rank N] `` for messages of ranks N > 0, so that the user sees which process failed."""
    return f"[rank {info.rank}] " if info.rank else ""


def hydra_overrides(info: DistInfo) -> list[str]:
    """Command-line overrides for non-zero ranks: no second copy of ``.hydra/``, warnings only."""
    if info.rank == 0:
        return []
    return ["hydra.output_subdir=null", "hydra.job_logging.root.level=WARNING"]


def device_for(device: torch.device, info: DistInfo) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:<local rank>``."""
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def wrap(model: nn.Module, device: torch.device, info: DistInfo, sync_bn: bool) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (SyncBatchNorm first when asked); as is when single-process.

    The returned module trains; ``model`` itself stays the one that is validated and
    saved, so checkpoints have no ``module.`` prefix.
    """
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    options: dict[str, bool] = {}
    if sync_bn:  # the statistics are already equal on every rank: no buffer copy before each forward
        recent = "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        options = {"forward_sync_buffers": False} if recent else {"broadcast_buffers": False}
    return ddp(model, device_ids=ids, **options)


def convert_sync_bn(model: nn.Module, info: DistInfo) -> nn.Module:
    """BatchNorm layers that share batch statistics across ranks (same parameters and state-dict keys)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if info.enabled else model


def all_reduce_mean(value: Tensor) -> Tensor:
    """The mean of ``value`` over ranks (a copy); ``value`` itself when single-process."""
    info = current()
    if not info.enabled:
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / info.world_size


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on at least one rank (e.g. a signal that reached only some of them)."""
    if not current().enabled:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_sum_(value: Tensor) -> Tensor:
    """Sum ``value`` over ranks in place (confusion-matrix counts, image counts)."""
    if current().enabled:
        dist.all_reduce(value)
    return value


def all_reduce_max_(value: Tensor) -> Tensor:
    if current().enabled:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def broadcast(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (after rank 0 wrote a file the others will read)."""
    if current().enabled:
        dist.barrier()


def shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s share of ``indices``: every ``world_size``-th item, so each item goes to exactly one rank."""
    return indices[rank::world_size]

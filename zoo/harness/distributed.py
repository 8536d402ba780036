"""Data-parallel training under ``torchrun``: which process this is, and the few collectives it needs.

``torchrun --nproc-per-node N -m zoo.cli train ...`` starts N copies of the training; each reads its
place from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). Outside torchrun (no
``WORLD_SIZE``, or ``WORLD_SIZE=1``) everything here is a no-op and training is the single-process loop.

The division of labour: every rank draws the same global batch and keeps its own slice (:func:`shard`),
the loss's sums are all-reduced so each rank differentiates the loss of the whole global batch
(:func:`all_reduce_sum`), and DDP averages the gradients. Rank 0 alone records to MLflow, validates and
writes files; its decisions reach the others through :func:`broadcast`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor

__all__ = ["Distributed", "all_reduce_sum", "broadcast", "env_rank", "session", "shard"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_rank() -> int:
    """The global rank torchrun gave this process (0 outside torchrun); reads the environment only."""
    return int(os.environ.get("RANK", "0"))


def _from_env() -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with torchrun "
            "(torchrun --nproc-per-node N -m zoo.cli train ...) or unset WORLD_SIZE"
        )
    return Distributed(int(os.environ["RANK"]), world, int(os.environ["LOCAL_RANK"]))


@contextmanager
def session(device: torch.device) -> Iterator[tuple[Distributed, torch.device]]:
    """This process's :class:`Distributed` and its device, with the process group up while inside.

    Under torchrun a CUDA device becomes ``cuda:LOCAL_RANK`` (NCCL); a CPU run uses Gloo. A process
    group the caller already started is used and left running; one started here is destroyed on exit.
    """
    ctx = _from_env()
    if not ctx.enabled:
        yield ctx, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend)
    if dist.get_world_size() != ctx.world_size or dist.get_rank() != ctx.rank:
        raise RuntimeError(
            f"the running process group (rank {dist.get_rank()} of {dist.get_world_size()}) disagrees "
            f"with the environment (RANK={ctx.rank}, WORLD_SIZE={ctx.world_size})"
        )
    log.info("rank %d of %d on %s (%s)", ctx.rank, ctx.world_size, device, dist.get_backend())
    try:
        yield ctx, device
    finally:
        if owned:
            dist.destroy_process_group()


def shard(batch: Tensor, ctx: Distributed) -> Tensor:
    """This rank's contiguous slice of a global batch along dim 0 (all of it when not distributed)."""
    if not ctx.enabled:
        return batch
    return torch.tensor_split(batch, ctx.world_size)[ctx.rank]


def all_reduce_sum(t: Tensor, ctx: Distributed) -> Tensor:
    """The sum of ``t`` over ranks, differentiable: gradients flow back to every rank's own ``t``.

    The backward pass sums the gradients of all ranks' (identical) results, ``world_size`` times the
    single loss's; DDP's gradient averaging divides that factor out again.
    """
    if not ctx.enabled:
        return t
    return dist_fn.all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast(obj: T, ctx: Distributed) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects; a barrier as well)."""
    if not ctx.enabled:
        return obj
    box: list[object] = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]

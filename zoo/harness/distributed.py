"""Data-parallel training under ``torchrun``: which process this is, and the few collectives it needs.

``torchrun --nproc-per-node N -m zoo.cli train ...`` starts N copies of the training; each reads its
place from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). Outside torchrun (no
``WORLD_SIZE``, or ``WORLD_SIZE=1``) everything here is a no-op and training is the single-process loop.

The division of labour: every rank loads and augments its own part of each global batch (the
distributed sampler ``zoo.data.loader.ShardedBatchSampler``),
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
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "CrossRankBatchNorm",
    "Distributed",
    "all_reduce_sum",
    "broadcast",
    "convert_sync_batchnorm",
    "env_rank",
    "session",
]

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


class _SumOverRanks(torch.autograd.Function):
    """Sum over ranks whose backward is the sum of the ranks' gradients (every rank's output is the same
    total, so each contributes its gradient of it to every input). Written here rather than taken from
    ``torch.distributed.nn``, which torch has deprecated."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def _sum_over_ranks(t: Tensor) -> Tensor:
    return _SumOverRanks.apply(t)


def all_reduce_sum(t: Tensor, ctx: Distributed) -> Tensor:
    """The sum of ``t`` over ranks, differentiable: gradients flow back to every rank's own ``t``.

    The backward pass sums the gradients of all ranks' (identical) results, ``world_size`` times the
    single loss's; DDP's gradient averaging divides that factor out again.
    """
    if not ctx.enabled:
        return t
    return _sum_over_ranks(t)


def broadcast(obj: T, ctx: Distributed) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects; a barrier as well)."""
    if not ctx.enabled:
        return obj
    box: list[object] = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


class CrossRankBatchNorm(_BatchNorm):
    """Batch normalisation whose training-mode statistics are those of the global batch, on any backend.

    ``torch.nn.SyncBatchNorm`` runs on CUDA only; this one reduces with differentiable all-reduces,
    so Gloo on CPU works as NCCL on GPU does. In training mode under an
    initialised process group of more than one rank, the mean and the (biased) variance are taken over
    every rank's slice together, two passes for accuracy (the mean first, then the squared deviations),
    in float32 for half-precision inputs; the running statistics get the unbiased variance, as
    ``BatchNorm`` does. Outside training, or with one process, it is ordinary ``BatchNorm``. It keeps
    ``BatchNorm``'s parameters and buffers, so state dicts move freely between the two.

    Gradients: each rank differentiates the global loss (see :func:`all_reduce_sum`), so what flows back
    through the statistics is that loss's gradient times the world size on every rank, the same factor
    as everywhere else, which DDP's averaging removes.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (batch, channels, ...), got {input.dim()}D")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(input)
        x = input if input.dtype in (torch.float32, torch.float64) else input.float()
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        count = x.new_tensor(float(x.numel() // x.shape[1]))
        total = _sum_over_ranks(torch.cat([x.sum(dims), count.view(1)]))
        n = total[-1].detach()
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = _sum_over_ranks(centred.square().sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                tracked = self.num_batches_tracked
                assert tracked is not None  # BatchNorm keeps it whenever it tracks running statistics
                tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(tracked)
                unbiased = var.detach() * (n / (n - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm inside ``module`` by a :class:`CrossRankBatchNorm` with the same
    parameters, buffers, device, dtype and mode (in place for children; returns the possibly new root)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, CrossRankBatchNorm):
        ref = module.running_mean if module.running_mean is not None else module.weight
        new = CrossRankBatchNorm(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
            device=ref.device if ref is not None else None,
            dtype=ref.dtype if ref is not None else None,
        )
        new.load_state_dict(module.state_dict())
        if module.affine:
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module

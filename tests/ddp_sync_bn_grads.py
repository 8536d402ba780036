"""Run under torchrun by tests/test_distributed.py: one float64 forward/backward of a synchronised-BatchNorm
``unet_bn`` on this rank's half of a fixed global batch; rank 0 saves the gradients and the BatchNorm
running statistics to the file named on the command line."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from zoo import create_model
from zoo.harness.distributed import Distributed, all_reduce_sum, convert_sync_batchnorm, env_rank


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("unet_bn", in_channels=1, num_classes=2, base_channels=4).double()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 64, 64, generator=gen, dtype=torch.float64) * 2 + 0.5
    return x, torch.randint(0, 2, (4, 64, 64), generator=gen)


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert rank == env_rank()
    net = convert_sync_batchnorm(model())
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    x, y = batch()
    xs, ys = torch.tensor_split(x, world)[rank], torch.tensor_split(y, world)[rank]
    # the harness's loss: the global batch's mean cross-entropy, its sum all-reduced across ranks
    total = all_reduce_sum(F.cross_entropy(ddp(xs), ys, reduction="sum"), Distributed(rank, world, rank))
    (total / y.numel()).backward()
    if rank == 0:
        grads = {k: p.grad for k, p in net.named_parameters()}
        torch.save({"grads": grads, "state": net.state_dict()}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

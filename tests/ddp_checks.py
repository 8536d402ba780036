"""Run under torchrun (two ranks, Gloo) by tests/test_distributed.py, once for several of its tests: every
launch costs each rank seconds of imports, so one launch does what several would.

``python -m torch.distributed.run --nproc-per-node 2 tests/ddp_checks.py PLAN.json`` where the plan is
``{"grads": FILE, "runs": [{"name": NAME, "argv": [...], "hold": BOOL}, ...], "out": FOLDER}``:

1. one float64 forward/backward of a synchronised-BatchNorm ``unet_bn`` on this rank's half of a fixed
   global batch; rank 0 saves the gradients and the BatchNorm running statistics to ``grads``;
2. each ``unet-zoo ARGV`` in turn, through the CLI's ``main`` in this process (the process group is
   started here, and a run uses a group its caller started); each rank writes what each run returned
   and printed or logged to ``FOLDER/NAME.rank<R>.json``. A run that raises ends the list. A run with
   ``"hold": true`` (the last) is held once its first checkpoint is written, for the test to kill the
   ranks there (``hold_at_checkpoint.py``: rank 0 holds, rank 1 waits for it in a collective).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from zoo import create_model
from zoo.harness.distributed import Distributed, all_reduce_sum, convert_sync_batchnorm, env_rank

try:
    from .hold_at_checkpoint import hold_at_checkpoint
except ImportError:  # run as a script: its folder is on the path
    from hold_at_checkpoint import hold_at_checkpoint  # type: ignore[no-redef]


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("unet_bn", in_channels=1, num_classes=2, base_channels=4).double()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 64, 64, generator=gen, dtype=torch.float64) * 2 + 0.5
    return x, torch.randint(0, 2, (4, 64, 64), generator=gen)


def sync_bn_grads(out: str) -> None:
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


def cli_run(argv: list[str]) -> dict[str, Any]:
    """``unet-zoo ARGV`` here: its exit code (None: it raised), and its stdout, stderr and log records."""
    from zoo.cli import main

    printed = io.StringIO()
    handler = logging.StreamHandler(printed)
    logging.getLogger().addHandler(handler)
    result: dict[str, Any] = {"code": None}
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            result["code"] = main(argv)
    except BaseException:  # reported to the test, which says what it expected
        printed.write(traceback.format_exc())
    finally:
        logging.getLogger().removeHandler(handler)
    result["output"] = printed.getvalue()
    return result


def main(plan_file: str) -> None:
    plan = json.loads(Path(plan_file).read_text())
    torch.set_num_threads(1)
    # the CLI's own logging setup is then a no-op: records reach cli_run's handler and torchrun's output
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dist.init_process_group("gloo")
    try:
        sync_bn_grads(plan["grads"])
        rank = dist.get_rank()
        for run in plan["runs"]:
            if run.get("hold"):
                hold_at_checkpoint()
            result = cli_run(run["argv"])
            Path(plan["out"], f"{run['name']}.rank{rank}.json").write_text(json.dumps(result))
            if result["code"] is None:
                break
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

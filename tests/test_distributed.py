"""Data-parallel training under torchrun: 2 CPU processes (Gloo) against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.harness import Tracker, TrainConfig, train
from zoo.harness.distributed import Distributed, shard

# fp32 and deterministic kernels: the two runs may differ only by the order of floating-point sums.
# GroupNorm, not BatchNorm: its statistics are per sample, so a slice of the batch normalises exactly as
# the whole batch would (SyncBatchNorm, the BatchNorm answer, runs on CUDA only in torch).
SETTINGS: dict[str, object] = {
    "epochs": 2,
    "steps_per_epoch": 2,
    "batch_size": 4,
    "crop": 64,
    "max_val_images": 2,
    "cost_batch": 2,
    "synthetic": {"count": 6, "size": 96},
    "folds": 3,
    "fold": 2,
    "amp": "none",
    "deterministic": True,
}
OVERRIDES = {"base_channels": 4, "norm": "group"}
EXPERIMENT = "ddp-test"


def _torchrun(workdir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "zoo.cli",
        "train",
        "--workdir",
        str(workdir),
        "--experiment",
        EXPERIMENT,
        *args,
    ]


def _new_run_args() -> list[str]:
    return [
        "--model",
        "unet_bn",
        "--dataset",
        "isbi2012",
        *(f"--override={k}={json.dumps(v)}" for k, v in OVERRIDES.items()),
        *(f"--set={k}={json.dumps(v)}" for k, v in SETTINGS.items()),
    ]


def test_shard_splits_a_global_batch_into_contiguous_rank_slices() -> None:
    batch = torch.arange(8)
    slices = [shard(batch, Distributed(rank=r, world_size=2)).tolist() for r in range(2)]
    assert slices == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert shard(batch, Distributed()) is batch


def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    # one thread per rank: 2 ranks share this machine's cores
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    workdir = tmp_path / "ddp"
    done = subprocess.run(
        _torchrun(workdir, *_new_run_args()),
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("run folder:") == 1  # rank 0 alone prints
    (run_dir,) = (workdir / EXPERIMENT).iterdir()
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    tracker = Tracker(EXPERIMENT, workdir=workdir)

    # one MLflow run, recorded once per epoch by rank 0, with the global batch and the world size
    (run,) = tracker.client.search_runs([tracker.experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2" and run.data.params["cfg.batch_size"] == "4"
    history = {m.step: m.value for m in tracker.client.get_metric_history(run_id, "val_dice")}
    losses = {m.step: m.value for m in tracker.client.get_metric_history(run_id, "train_loss")}
    assert sorted(history) == sorted(losses) == [0, 1]
    assert (run_dir / "best.safetensors").is_file()

    # the same config in one process: batch 4 there, 2 + 2 above
    config = TrainConfig.from_dict(
        {"model": "unet_bn", "dataset": "isbi2012", "overrides": OVERRIDES, **SETTINGS}
    )
    single = Tracker(EXPERIMENT, workdir=tmp_path / "single")
    ref = train(config, tracker=single, workdir=tmp_path / "single", progress=False)
    ref_history = {m.step: m.value for m in single.client.get_metric_history(ref.run_id, "val_dice")}
    ref_losses = {m.step: m.value for m in single.client.get_metric_history(ref.run_id, "train_loss")}
    assert losses == pytest.approx(ref_losses, rel=1e-4, abs=1e-6)
    assert history == pytest.approx(ref_history, abs=1e-4)
    ddp_weights = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    ref_weights = torch.load(ref.run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert ddp_weights.keys() == ref_weights.keys()
    worst = max((ddp_weights[k].double() - ref_weights[k].double()).abs().max().item() for k in ref_weights)
    assert worst < 1e-4, f"largest weight difference {worst:.3g}"

"""Data-parallel training under torchrun: 2 CPU processes (Gloo) against one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from zoo.harness import Tracker, TrainConfig, train

from .helpers import seed_store

# fp32 and deterministic kernels: the two runs may differ only by the order of floating-point sums.
# GroupNorm, not BatchNorm: its statistics are per sample, so a slice of the batch normalises exactly as
# the whole batch would (BatchNorm needs sync_bn for that: tested below).
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
    # SGD, not Adam: Adam divides by the root of tiny second moments (units a 4-wide net barely uses),
    # which turns rounding differences into steps the size of the learning rate; with SGD the two runs
    # stay as close as their rounding
    "optimizer": "sgd",
    "lr": 0.01,
    # the tests compare the last epoch's weights, which only the checkpoint holds once a run finishes
    "keep_checkpoint": True,
}
OVERRIDES = {"base_channels": 4, "norm": "group"}
EXPERIMENT = "ddp-test"


HOLD = str(Path(__file__).with_name("hold_at_checkpoint.py"))
"""The CLI, held still once epoch 0's checkpoint is written: the point a test kills the ranks at."""


def _torchrun_prefix() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _train_argv(workdir: Path, *args: str) -> list[str]:
    return ["train", "--workdir", str(workdir), "--experiment", EXPERIMENT, *args]


def _torchrun(workdir: Path, *args: str, held: bool = False) -> list[str]:
    script = [HOLD] if held else ["-m", "zoo.cli"]
    return [*_torchrun_prefix(), *script, *_train_argv(workdir, *args)]


def _run_args(overrides: dict[str, object], settings: dict[str, object]) -> list[str]:
    return [
        "--model",
        "unet_bn",
        "--dataset",
        "isbi2012",
        *(f"--override={k}={json.dumps(v)}" for k, v in overrides.items()),
        *(f"--set={k}={json.dumps(v)}" for k, v in settings.items()),
    ]


def _run_ranks(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``unet-zoo train ARGS`` on 2 ranks; one thread each: they share this machine's cores."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        _torchrun(workdir, *args), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _the_run(workdir: Path) -> tuple[Path, str]:
    """The folder and MLflow run id of the one run under ``workdir``."""
    (run_dir,) = (workdir / EXPERIMENT).iterdir()
    return run_dir, json.loads((run_dir / "run.json").read_text())["run_id"]


def _history(tracker: Tracker, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in tracker.client.get_metric_history(run_id, key)}


# BatchNorm with sync_bn: statistics over the global batch, so 2 ranks normalise as one process would
BN_SETTINGS: dict[str, object] = {**SETTINGS, "epochs": 3, "steps_per_epoch": 3, "sync_bn": True}
BN_OVERRIDES = {"base_channels": 4, "norm": "batch"}
# 5 training slices, global batch 4, 2 ranks, whole epochs: the last batch of 1 leaves a rank empty
TOO_SMALL = {**SETTINGS, "epochs": 1, "steps_per_epoch": None, "synthetic": {"count": 7, "size": 96}}

LAUNCHED_RUNS = {  # run name: (overrides, settings), trained in that order in one launch
    "groupnorm": (OVERRIDES, SETTINGS),
    "batchnorm-unsynced": (BN_OVERRIDES, {**BN_SETTINGS, "sync_bn": False}),
    "too-small": (OVERRIDES, TOO_SMALL),
    "killed": (BN_OVERRIDES, BN_SETTINGS),  # held after epoch 0's checkpoint, and killed there
}


@dataclass(frozen=True)
class Launch:
    """What the module's one shared torchrun launch of tests/ddp_checks.py left."""

    grads: Path  # rank 0's float64 sync-BN gradients and statistics
    workdirs: dict[str, Path]  # run name: its workdir (a store of its own)
    results: dict[str, list[dict[str, Any]]]  # run name but the killed one: per rank, exit code and output


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (torchrun's workers), read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Launch:
    """Two ranks, once: the float64 gradient step, then `unet-zoo train` of each of LAUNCHED_RUNS, the
    last killed (every rank at once, with no chance to record anything) once epoch 0 is checkpointed."""
    if not Path("/proc/self/stat").is_file():
        pytest.skip("finds torchrun's workers through /proc")
    root = tmp_path_factory.mktemp("ddp-launch")
    workdirs = {name: seed_store(store_template, root / name) for name in LAUNCHED_RUNS}
    runs = [
        {
            "name": name,
            "argv": _train_argv(workdirs[name], *_run_args(*LAUNCHED_RUNS[name])),
            "hold": name == "killed",
        }
        for name in LAUNCHED_RUNS
    ]
    plan = root / "plan.json"
    plan.write_text(json.dumps({"grads": str(root / "grads.pt"), "runs": runs, "out": str(root)}))
    cmd = [*_torchrun_prefix(), str(Path(__file__).with_name("ddp_checks.py")), str(plan)]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 400
    try:
        while not any((workdirs["killed"] / EXPERIMENT).glob("*/checkpoint.pt")):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    results = {
        name: [json.loads((root / f"{name}.rank{rank}.json").read_text()) for rank in (0, 1)]
        for name in LAUNCHED_RUNS
        if name != "killed"
    }
    return Launch(root / "grads.pt", workdirs, results)


def test_two_ranks_match_one_process_with_the_same_global_batch(
    tmp_path: Path, launch: Launch, fresh_store: Callable[[Path], Path]
) -> None:
    workdir = launch.workdirs["groupnorm"]
    ranks = launch.results["groupnorm"]
    assert [r["code"] for r in ranks] == [0, 0], ranks
    assert [r["output"].count("run folder:") for r in ranks] == [1, 0]  # rank 0 alone prints
    run_dir, run_id = _the_run(workdir)
    tracker = Tracker(EXPERIMENT, workdir=workdir)

    # one MLflow run, recorded once per epoch by rank 0, with the global batch and the world size
    (run,) = tracker.client.search_runs([tracker.experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2" and run.data.params["cfg.batch_size"] == "4"
    history = _history(tracker, run_id, "val_dice")
    losses = _history(tracker, run_id, "train_loss")
    assert sorted(history) == sorted(losses) == [0, 1]
    assert (run_dir / "best.safetensors").is_file()

    # the same config in one process: batch 4 there, 2 + 2 above
    config = TrainConfig.from_dict(
        {"model": "unet_bn", "dataset": "isbi2012", "overrides": OVERRIDES, **SETTINGS}
    )
    single = Tracker(EXPERIMENT, workdir=fresh_store(tmp_path / "single"))
    ref = train(config, tracker=single, workdir=tmp_path / "single", progress=False)
    ref_history = _history(single, ref.run_id, "val_dice")
    ref_losses = _history(single, ref.run_id, "train_loss")
    assert losses == pytest.approx(ref_losses, rel=1e-4, abs=1e-6)
    assert history == pytest.approx(ref_history, abs=1e-4)
    ddp_weights = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    ref_weights = torch.load(ref.run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert ddp_weights.keys() == ref_weights.keys()
    worst = max((ddp_weights[k].double() - ref_weights[k].double()).abs().max().item() for k in ref_weights)
    assert worst < 1e-5, f"largest weight difference {worst:.3g}"


@pytest.fixture(scope="module")
def batchnorm_reference(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> dict[str, object]:
    """One process, BatchNorm over the whole global batch (sync_bn has nothing to do there)."""
    workdir = seed_store(store_template, tmp_path_factory.mktemp("bn-single"))
    config = TrainConfig.from_dict(
        {"model": "unet_bn", "dataset": "isbi2012", "overrides": BN_OVERRIDES, **BN_SETTINGS}
    )
    tracker = Tracker(EXPERIMENT, workdir=workdir)
    ref = train(config, tracker=tracker, workdir=workdir, progress=False)
    return {
        "loss": _history(tracker, ref.run_id, "train_loss"),
        "dice": _history(tracker, ref.run_id, "val_dice"),
        "weights": torch.load(ref.run_dir / "checkpoint.pt", weights_only=True)["model"],
    }


def _assert_matches(reference: dict[str, object], tracker: Tracker, run_id: str, run_dir: Path) -> None:
    assert _history(tracker, run_id, "train_loss") == pytest.approx(reference["loss"], rel=1e-4, abs=1e-6)
    assert _history(tracker, run_id, "val_dice") == pytest.approx(reference["dice"], abs=1e-4)
    ours = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    ref_weights: dict[str, torch.Tensor] = reference["weights"]  # type: ignore[assignment]
    assert ours.keys() == ref_weights.keys()  # running statistics included
    diffs = {k: (ours[k].double() - ref_weights[k].double()).abs().max().item() for k in ref_weights}
    worst = max(diffs, key=diffs.__getitem__)
    assert diffs[worst] < 1e-5, f"largest weight/statistic difference {diffs[worst]:.3g} ({worst})"


def test_sync_bn_off_normalises_each_rank_slice_alone(
    launch: Launch, batchnorm_reference: dict[str, object]
) -> None:
    # the control: without sync_bn each rank's BatchNorm sees 2 images, not 4, and training differs
    ranks = launch.results["batchnorm-unsynced"]
    assert [r["code"] for r in ranks] == [0, 0], ranks
    workdir = launch.workdirs["batchnorm-unsynced"]
    _, run_id = _the_run(workdir)
    tracker = Tracker(EXPERIMENT, workdir=workdir)
    assert tracker.client.get_run(run_id).data.params["cfg.sync_bn"] == "False"
    losses = _history(tracker, run_id, "train_loss")
    assert sorted(losses) == [0, 1, 2]
    assert losses != pytest.approx(batchnorm_reference["loss"], rel=1e-4, abs=1e-6)


@pytest.mark.slow  # a second two-rank launch; the launch above kills the run, one-process resume is tested
def test_killed_sync_bn_torchrun_run_resumes_into_the_same_run_and_matches_one_process(
    launch: Launch, batchnorm_reference: dict[str, object]
) -> None:
    """BatchNorm with sync_bn: statistics over the global batch, so 2 ranks, killed after epoch 0 and
    resumed, end where one process with the whole batch ends."""
    workdir = launch.workdirs["killed"]
    run_dir, run_id = _the_run(workdir)
    tracker = Tracker(EXPERIMENT, workdir=workdir)
    assert tracker.run_status(run_id) == "RUNNING"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 0  # unfinished

    done = _run_ranks(workdir, "--resume", str(run_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("run folder:") == 1  # rank 0 alone prints
    assert tracker.run_status(run_id) == "FINISHED"
    (run,) = tracker.client.search_runs([tracker.experiment_id])  # the same run, no new one
    params = run.data.params
    assert params["world_size"] == "2" and params["cfg.batch_size"] == "4" and params["cfg.sync_bn"] == "True"
    assert sorted(m.step for m in tracker.client.get_metric_history(run_id, "val_dice")) == [0, 1, 2]
    assert (run_dir / "best.safetensors").is_file()
    # and it ends where one uninterrupted process with the same global batch ends
    _assert_matches(batchnorm_reference, tracker, run_id, run_dir)


def test_cross_rank_batchnorm_is_plain_batchnorm_in_one_process() -> None:
    from zoo import create_model
    from zoo.harness.distributed import CrossRankBatchNorm, convert_sync_batchnorm

    torch.manual_seed(0)
    plain = create_model("unet_bn", in_channels=1, num_classes=2, base_channels=4)
    converted = convert_sync_batchnorm(create_model("unet_bn", in_channels=1, num_classes=2, base_channels=4))
    converted.load_state_dict(plain.state_dict())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in converted.modules())
    assert any(isinstance(m, CrossRankBatchNorm) for m in converted.modules())
    assert converted.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 1, 64, 64)
    for mode in (True, False):  # no process group: training uses the local batch, eval the running stats
        plain.train(mode), converted.train(mode)
        assert torch.allclose(converted(x), plain(x), atol=1e-5)
    for a, b in zip(converted.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_sync_bn_gradients_equal_one_process_batchnorm_in_float64(launch: Launch) -> None:
    # one step in float64, so any difference beyond rounding would be a wrong formula, not noise
    import torch.nn.functional as F

    from . import ddp_checks as script

    ranks = torch.load(launch.grads, weights_only=True)

    net = script.model()  # plain BatchNorm over all 4 images
    x, y = script.batch()
    F.cross_entropy(net(x), y).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None
        scale = p.grad.abs().max().item()
        assert (ranks["grads"][name] - p.grad).abs().max().item() <= 1e-10 * scale + 1e-15, name
    for name, value in net.state_dict().items():  # running statistics over the global batch
        assert torch.allclose(ranks["state"][name].to(value.dtype), value, rtol=1e-12, atol=1e-14), name


def test_a_global_batch_too_small_for_every_rank_is_refused_clearly(launch: Launch) -> None:
    message = "an epoch of 5 crops ends with a global batch of 1, fewer samples than the 2 processes"
    for rank in launch.results["too-small"]:
        assert rank["code"] != 0 and message in rank["output"], rank
    tracker = Tracker(EXPERIMENT, workdir=launch.workdirs["too-small"])
    (run,) = tracker.client.search_runs([tracker.experiment_id])
    assert run.info.status == "FAILED"

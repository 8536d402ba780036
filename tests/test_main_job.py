"""What the main job (``unet-zoo bench``) leaves and says: finished runs without checkpoints, weights
stored once, a progress line per run with an estimate of the time left."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch

import zoo.harness.training as train_module
from zoo.harness import Tracker, load_suite, run_suite, train
from zoo.harness.suites import estimate_seconds_left, format_duration
from zoo.harness.tracking import default_tracking_uri

from .helpers import seed_store, tiny_run


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> str:
    """One SQLite store for the module's tests; each test its own experiment, whose artifacts and run
    folders lie in that test's workdir."""
    return default_tracking_uri(seed_store(store_template, tmp_path_factory.mktemp("store")))


def _unique_bytes(paths: Iterable[Path]) -> int:
    """The bytes ``paths`` take, a file with several names (hard links) counted once, as ``du`` counts."""
    seen: dict[tuple[int, int], int] = {}
    for path in paths:
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


@pytest.mark.parametrize(
    ("durations", "left", "jobs", "expected"),
    [
        ([40.0, 42.0, 41.0], 11, 1, 41.0 * 11),  # the mean of the finished runs, times the runs left
        ([30.0, 50.0], 6, 2, 40.0 * 6 / 2),  # two at a time
        ([30.0, 50.0], 1, 4, 40.0),  # one left: four workers do not make it faster
        ([30.0], 0, 1, 0.0),  # the suite is done
        ([], 5, 1, None),  # nothing to go by yet
    ],
)
def test_estimate_of_the_time_left(
    durations: list[float], left: int, jobs: int, expected: float | None
) -> None:
    assert estimate_seconds_left(durations, left, jobs=jobs) == (
        pytest.approx(expected) if expected is not None else None
    )


def test_durations_read_as_a_person_writes_them() -> None:
    assert format_duration(41.4) == "41 s"
    assert format_duration(130) == "2 min 10 s"
    assert format_duration(120) == "2 min"
    assert format_duration(3900) == "1 h 5 min"
    assert format_duration(290, coarse=True) == "5 min"
    assert format_duration(40, coarse=True) == "40 s"


@pytest.mark.parametrize("keep", [False, True])
def test_a_finished_run_drops_its_checkpoint_unless_asked_to_keep_it(
    tmp_path: Path, store: str, keep: bool
) -> None:
    tracker = Tracker(f"finished-{keep}", workdir=tmp_path, tracking_uri=store)
    result = train(tiny_run(keep_checkpoint=keep), tracker=tracker, workdir=tmp_path, progress=False)
    assert tracker.run_status(result.run_id) == "FINISHED"
    kept = {p.name for p in result.run_dir.iterdir()}
    assert {"best.safetensors", "config.json", "run.json", "overlays"} <= kept
    assert ("checkpoint.pt" in kept) == keep
    # nothing resumes a finished run, with or without its checkpoint
    with pytest.raises(ValueError, match=r"has FINISHED; there is nothing to resume"):
        train(None, tracker=tracker, workdir=tmp_path, resume=result.run_dir)
    assert tracker.run_status(result.run_id) == "FINISHED"


@pytest.mark.parametrize(("error", "status"), [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_a_run_that_fails_or_is_stopped_at_its_end_keeps_its_checkpoint(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch, error: type[BaseException], status: str
) -> None:
    def broken(*args: object, **kwargs: object) -> dict[str, float]:  # the last step before FINISHED
        raise error("stopped while measuring cost")

    monkeypatch.setattr(train_module, "measure_cost", broken)
    tracker = Tracker(f"stopped-{status}", workdir=tmp_path, tracking_uri=store)
    with pytest.raises(error):
        train(tiny_run(), tracker=tracker, workdir=tmp_path, progress=False)
    (run_dir,) = (tmp_path / tracker.experiment).iterdir()
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert tracker.run_status(run_id) == status
    assert (run_dir / "checkpoint.pt").is_file()  # what --resume needs


def test_smoke_suite_stores_each_file_once_and_reports_progress(
    tmp_path: Path, store: str, caplog: pytest.LogCaptureFixture
) -> None:
    suite = load_suite("smoke", models="unet_b*", datasets=["isbi2012"])
    assert [c.model for c in suite.runs] == ["unet_bilinear", "unet_bn"]
    tracker = Tracker("disk", workdir=tmp_path, tracking_uri=store)
    with caplog.at_level(logging.INFO, logger="zoo.harness.suites"):
        outcomes = run_suite(suite, tracker=tracker, workdir=str(tmp_path), progress=False)
    assert all(hasattr(o, "run_id") for _, o in outcomes), outcomes

    lines = [r.getMessage() for r in caplog.records if r.name == "zoo.harness.suites"]
    first, second = (c.run_name for c in suite.runs)
    assert lines[0] == f"[1/2] {first}: started"
    assert lines[1].startswith(f"[1/2] {first}: done in ") and ", Dice 0." in lines[1]
    assert lines[1].endswith(" left") and "elapsed, about " in lines[1]
    assert lines[2] == f"[2/2] {second}: started"
    assert lines[3].startswith(f"[2/2] {second}: done in ") and lines[3].endswith(" elapsed")

    run_dirs = [o.run_dir for _, o in outcomes]  # type: ignore[attr-defined]
    assert not list(tmp_path.rglob("checkpoint.pt"))
    for run_dir, (_, result) in zip(run_dirs, outcomes, strict=True):
        artifact = tracker.local_artifact_dir(result.run_id)  # type: ignore[attr-defined]
        assert artifact is not None
        # the artifact that publish downloads is the run folder's file, under a second name
        assert os.path.samefile(artifact / "weights" / "best.safetensors", run_dir / "best.safetensors")
    # The bound: each run's weights once, plus what is not weights (the run folders' other files, the
    # synthetic twin) and 1 KiB for any bookkeeping file of the artifact store; a second copy of the
    # weights would exceed it by their size. The MLflow database is the module's, outside the workdir.
    weights = sum((d / "best.safetensors").stat().st_size for d in run_dirs)
    others = _unique_bytes(f for d in run_dirs for f in d.rglob("*") if f.name != "best.safetensors")
    twin = _unique_bytes((tmp_path / "synthetic").rglob("*"))
    assert others > 0 and twin > 0
    total = _unique_bytes(tmp_path.rglob("*"))
    assert weights + others + twin <= total <= weights + others + twin + 1024
    assert weights > 100_000  # far more than the slack: a second copy cannot hide in it


def test_half_precision_weights_are_half_the_file_and_carry_their_own_figures(
    tmp_path: Path, store: str
) -> None:
    """weights_dtype=float16 stores the floating tensors in float16, and the run's final figures are those
    of the file as stored: rescoring the file reproduces them exactly."""
    from safetensors import safe_open

    from zoo.harness.data import build_data
    from zoo.harness.evaluate import evaluate
    from zoo.harness.training import prepare_model, run_inferer
    from zoo.weights import read_weights

    tracker = Tracker("half", workdir=tmp_path, tracking_uri=store)
    full = train(tiny_run(), tracker=tracker, workdir=tmp_path, progress=False)
    cfg = tiny_run(weights_dtype="float16")
    half = train(cfg, tracker=tracker, workdir=tmp_path, progress=False)
    with safe_open(str(half.run_dir / "best.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    assert "F16" in dtypes and "F32" not in dtypes  # BatchNorm's counters stay integers
    full_size = (full.run_dir / "best.safetensors").stat().st_size
    half_size = (half.run_dir / "best.safetensors").stat().st_size
    assert half_size < 0.6 * full_size

    data = build_data(cfg, tmp_path)
    model, precision = prepare_model(
        cfg, data.dataset.in_channels, data.dataset.num_classes, torch.device("cpu")
    )
    model.load_state_dict(read_weights(half.run_dir / "best.safetensors")[0])
    again = evaluate(model, data.dataset, data.split.val, inferer=run_inferer(cfg, precision), max_images=1)
    assert again["dice"] == half.metrics["dice"]
    assert tracker.run_status(half.run_id) == "FINISHED"


def test_each_epoch_logs_a_line_with_its_number_loss_and_dice(
    tmp_path: Path, store: str, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = Tracker("epochs", workdir=tmp_path, tracking_uri=store)
    with caplog.at_level(logging.INFO, logger="zoo.harness.training"):
        result = train(tiny_run(epochs=2), tracker=tracker, workdir=tmp_path, progress=False)
    lines = [
        r.getMessage() for r in caplog.records if "epoch" in r.getMessage() and "val Dice" in r.getMessage()
    ]
    assert [line.split(":")[1].strip() for line in lines] == ["epoch 1 of 2", "epoch 2 of 2"]
    best = result.metrics["dice"]
    assert f"(best {best:.4f})" in lines[-1]

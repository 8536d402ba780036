"""The harness end to end: suites, MLflow records, NaN detection, kill-and-resume, an MLflow server."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors import safe_open

import zoo.harness.training as train_module
from zoo.harness import NonFiniteLossError, Tracker, TrainConfig, load_suite, run_suite, train
from zoo.harness.tracking import QUALITY_KEYS

from .helpers import TINY_RUN, seed_store, tiny_run

# the shared tiny run (tests/helpers.py) at this module's budget: two epochs of two steps
TINY = {"epochs": 2, "steps_per_epoch": 2, "max_val_images": 2, "cost_batch": 2, "cost_size": None}


def _tiny_bn(**changes: object) -> TrainConfig:
    """unet_bn at width 4 on the small EM twin, with the TINY budget and ``changes``."""
    return tiny_run(**{**TINY, **changes})


def _runs(tracker: Tracker) -> list[mlflow.entities.Run]:
    return tracker.client.search_runs([tracker.experiment_id])


@pytest.fixture(scope="module")
def smoke_runs(
    tmp_path_factory: pytest.TempPathFactory, store_template: Path
) -> tuple[Tracker, Path, list[tuple[str, object]]]:
    """Two smoke-suite runs (the paper's unet and unet_bn on the EM twin), shared by several tests."""
    workdir = seed_store(store_template, tmp_path_factory.mktemp("smoke"))
    suite = load_suite("smoke", models="unet*", datasets=["isbi2012"])
    suite.runs = [c for c in suite.runs if c.model in ("unet", "unet_bn")]
    tracker = Tracker("smoke-test", workdir=workdir)
    outcomes = run_suite(suite, tracker=tracker, workdir=str(workdir), progress=False)
    return tracker, workdir, outcomes


def test_suite_selection_narrows_by_pattern_dataset_and_seeds() -> None:
    suite = load_suite("smoke", models="unet_*", datasets=["isbi2012"], seeds=2)
    assert {c.model for c in suite.runs} == {
        "unet_bn",
        "unet_bilinear",
        "unet_resnet34",
        "unet_tu_efficientnet_b0",
    }
    assert sorted({c.seed for c in suite.runs}) == [0, 1] and len(suite.runs) == 8
    assert all(c.overrides for c in suite.runs)  # the smoke suite applies each model's tiny overrides
    with pytest.raises(TypeError, match=r"unknown config key\(s\) \['epoch'\]"):
        load_suite("smoke", extra={"epoch": 3})


def test_smoke_suite_records_complete_runs_under_a_parent(
    smoke_runs: tuple[Tracker, Path, list[tuple[str, object]]], tmp_path: Path
) -> None:
    tracker, _, outcomes = smoke_runs
    assert all(hasattr(o, "run_id") for _, o in outcomes), outcomes
    runs = {r.info.run_name: r for r in _runs(tracker)}
    parent = runs["smoke"]
    assert parent.data.tags["zoo.kind"] == "suite" and parent.info.status == "FINISHED"
    child = runs["unet-isbi2012-s0"]
    assert child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    for key in ("git_commit", "git_dirty", "torch_version", "cuda_version", "device_name"):
        assert key in child.data.tags
    params = child.data.params
    assert (
        params["cfg.model"] == "unet"
        and params["cfg.seed"] == "0"
        and params["split_method"] == "block_kfold"
    )
    assert params["train_input_size"] == "188" and params["train_output_size"] == "4"  # valid convs: 188 -> 4
    assert json.loads(params["model_args"])["padding"] == "valid"
    for key in (
        "dice",
        "iou",
        "misclassified",
        "pixel_error",
        "rand_error",
        "vrand",
        "vinfo",
        "rand_error_argmax",
        "params",
        "gflops",
        "train_images_per_s",
        "infer_images_per_s",
        "latency_ms",
        "peak_memory_mb",
        "best_epoch",
    ):
        assert key in child.data.metrics, key
    assert 0 <= child.data.metrics["dice"] <= 1
    history = tracker.client.get_metric_history(child.info.run_id, "val_dice")
    assert sorted(m.step for m in history) == [0]  # the smoke suite trains one epoch
    artifacts = {a.path for a in tracker.client.list_artifacts(child.info.run_id)}
    assert artifacts == {"config", "overlays", "weights"}
    local = Path(
        tracker.client.download_artifacts(child.info.run_id, "weights/best.safetensors", str(tmp_path))
    )
    with safe_open(str(local), "pt") as f:
        meta = f.metadata()
    assert meta["model_name"] == "unet" and json.loads(meta["metrics"])["dice"] == pytest.approx(
        child.data.metrics["dice"]
    )


def test_evaluate_cli_reproduces_the_recorded_quality(
    smoke_runs: tuple[Tracker, Path, list[tuple[str, object]]], capsys: pytest.CaptureFixture[str]
) -> None:
    from zoo.cli import main

    tracker, workdir, outcomes = smoke_runs
    result = dict(outcomes)["unet_bn-isbi2012-s0"]
    assert main(["evaluate", str(result.run_dir), "--workdir", str(workdir)]) == 0  # type: ignore[attr-defined]
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines()[: len(QUALITY_KEYS)])
    recorded = tracker.client.get_run(result.run_id).data.metrics  # type: ignore[attr-defined]
    for key in QUALITY_KEYS:
        assert float(printed[key]) == pytest.approx(recorded[key], abs=6e-5), key


def test_evaluate_record_rescores_a_run_whose_weights_reproduce(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fresh_store: Callable[[Path], Path]
) -> None:
    from zoo.cli import main

    tracker = Tracker("rescore", workdir=fresh_store(tmp_path))
    result = train(_tiny_bn(epochs=1), tracker=tracker, workdir=tmp_path, progress=False)
    truth = tracker.client.get_run(result.run_id).data.metrics
    step = int(truth["best_epoch"])
    # as a run recorded under an older definition would read
    tracker.log_metrics(result.run_id, {"pixel_error": 0.5}, step=step)
    args = ["evaluate", str(result.run_dir), "--workdir", str(tmp_path), "--record"]
    assert main(args) == 0
    assert "recorded in run" in capsys.readouterr().out
    run = tracker.client.get_run(result.run_id)
    assert run.data.metrics["pixel_error"] == pytest.approx(truth["pixel_error"], abs=6e-5)
    assert run.data.tags["metrics_rescored_at"]
    # weights that are not the run's (its recorded Dice does not reproduce): nothing is recorded
    tracker.log_metrics(result.run_id, {"dice": 0.123, "pixel_error": 0.5}, step=step)
    assert main(args) == 2
    assert "does not reproduce the run's recorded 0.123000" in capsys.readouterr().err
    assert tracker.client.get_run(result.run_id).data.metrics["pixel_error"] == 0.5


def test_early_stopping_ends_a_run_that_stops_improving(
    tmp_path: Path, fresh_store: Callable[[Path], Path]
) -> None:
    tracker = Tracker("early", workdir=fresh_store(tmp_path))
    cfg = _tiny_bn(epochs=6, lr=0.0, patience=2)
    result = train(cfg, tracker=tracker, workdir=tmp_path, progress=False)
    steps = sorted(m.step for m in tracker.client.get_metric_history(result.run_id, "val_dice"))
    assert steps == [0, 1, 2]  # lr 0: no epoch beats epoch 0; two bad epochs end it
    run = tracker.client.get_run(result.run_id)
    assert run.data.params["stopped_early"] == "True" and run.data.metrics["best_epoch"] == 0


def test_nan_loss_stops_the_run_marks_it_failed_and_keeps_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_store: Callable[[Path], Path]
) -> None:
    real_augment = train_module.augment_batch
    calls = {"n": 0}

    def poisoned(image, mask, weight, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        image, mask, weight = real_augment(image, mask, weight, **kw)
        if calls["n"] > 2:  # epoch 1: NaN pixels reach the network
            image = image.clone()
            image[0, 0, 5, 5] = float("nan")
        return image, mask, weight

    monkeypatch.setattr(train_module, "augment_batch", poisoned)
    tracker = Tracker("nan-test", workdir=fresh_store(tmp_path))
    cfg = _tiny_bn()
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at epoch 1, batch 0"):
        train(cfg, tracker=tracker, workdir=tmp_path, progress=False)
    (run,) = _runs(tracker)
    assert run.info.status == "FAILED"
    run_dir = next((tmp_path / "nan-test").iterdir())
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 0  # the last good epoch is kept
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def _train_args(workdir: Path) -> list[str]:
    """``unet-zoo train`` of the module's tiny run over three epochs (width 4, 64 px crops)."""
    shared = {k: v for k, v in TINY_RUN.items() if k not in ("model", "dataset", "overrides")}
    settings = {**shared, **TINY, "epochs": 3}
    sets = [f"--set={k}={json.dumps(v)}" for k, v in settings.items()]
    return [
        "train",
        "--model",
        "unet_bn",
        "--dataset",
        "isbi2012",
        "--override",
        "base_channels=4",
        "--workdir",
        str(workdir),
        "--experiment",
        "resume-test",
        *sets,
    ]


def _train_held(argv: list[str]) -> None:
    """In a forked child: ``unet-zoo ARGV``, held still once epoch 0's checkpoint is on disk."""
    from zoo.cli import main

    from .hold_at_checkpoint import hold_at_checkpoint

    hold_at_checkpoint()
    main(argv)


def test_killed_run_resumes_into_the_same_run_and_finishes(
    tmp_path: Path, fresh_store: Callable[[Path], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from zoo.cli import main

    killed = fresh_store(tmp_path / "killed")
    # a process of its own, SIGKILLed once epoch 0's checkpoint is on disk (held there: see the script);
    # forked, not started afresh, which would spend seconds importing torch and the zoo again
    proc = multiprocessing.get_context("fork").Process(target=_train_held, args=(_train_args(killed),))
    proc.start()
    runs_root = killed / "resume-test"
    deadline = time.monotonic() + 240
    try:
        while not any(runs_root.glob("*/checkpoint.pt")):
            assert proc.is_alive(), f"the run ended by itself (exit code {proc.exitcode})"
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
    assert proc.exitcode == -signal.SIGKILL  # the kill, not the end of the run, stopped it
    (run_dir,) = runs_root.iterdir()
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    tracker = Tracker("resume-test", workdir=killed)
    assert tracker.run_status(run_id) == "RUNNING"  # killed without a chance to say so
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 0
    assert tracker.client.get_metric_history(run_id, "val_dice") == []  # killed before the upload
    args = ["train", "--resume", str(run_dir), "--workdir", str(killed), "--experiment", "resume-test"]
    assert main(args) == 0, capsys.readouterr().err
    assert tracker.run_status(run_id) == "FINISHED"
    assert len(_runs(tracker)) == 1  # the same run, not a new one
    history = tracker.client.get_metric_history(run_id, "val_dice")
    assert sorted(m.step for m in history) == [0, 1, 2]  # every epoch once, epoch 0's from its checkpoint
    # and the resumed run ends exactly where an uninterrupted one does
    straight = fresh_store(tmp_path / "straight")
    assert main(_train_args(straight)) == 0, capsys.readouterr().err
    other = Tracker("resume-test", workdir=straight)
    (ref,) = _runs(other)
    ref_history = {m.step: m.value for m in other.client.get_metric_history(ref.info.run_id, "val_dice")}
    assert {m.step: m.value for m in history} == pytest.approx(ref_history, abs=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", autouse=True)
def _mlflow_server_starting(
    tmp_path_factory: pytest.TempPathFactory, store_template: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """An MLflow server on 127.0.0.1, started as the module's first test starts: its seconds of start-up
    (two Python processes importing MLflow's server) pass while the module's other tests run."""
    folder = tmp_path_factory.mktemp("server")
    shutil.copyfile(store_template, folder / "server.db")  # the server's store, its tables built
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination",
            (folder / "server-artifacts").as_uri(),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # nothing of the server's is checked after its test
        proc.wait(timeout=30)


@pytest.fixture
def mlflow_server(_mlflow_server_starting: tuple[subprocess.Popen[bytes], str]) -> str:
    """The module's MLflow server, once it answers."""
    import urllib.request

    proc, url = _mlflow_server_starting
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail("mlflow server did not come up on 127.0.0.1")
        time.sleep(0.2)


def test_a_run_logged_through_an_mlflow_server_reads_back_complete(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    tracker = Tracker("server-test", workdir=tmp_path / "work")
    assert tracker.uri == mlflow_server
    cfg = _tiny_bn(dataset="carvana", synthetic={"count": 32, "size": 96}, val_fraction=0.5)
    result = train(cfg, tracker=tracker, workdir=tmp_path / "work", progress=False)
    mlflow.set_tracking_uri(mlflow_server)
    frame = mlflow.search_runs(experiment_names=["server-test"])
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["run_id"] == result.run_id and row["status"] == "FINISHED"
    assert row["params.cfg.model"] == "unet_bn" and row["params.split_method"] == "group_split"
    assert row["metrics.dice"] == pytest.approx(result.metrics["dice"])
    assert row["tags.torch_version"] == torch.__version__
    assert "metrics.rand_error" not in frame.columns or frame["metrics.rand_error"].isna().all()
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "weights")}
    assert artifacts == {"weights/best.safetensors"}


@pytest.mark.slow
def test_compiled_training_matches_the_eager_record_format(tmp_path: Path) -> None:
    # torch.compile on CPU builds C++ kernels (a minute or more): slow, so outside the default run
    tracker = Tracker("compiled", workdir=tmp_path)
    cfg = _tiny_bn(compile=True)
    result = train(cfg, tracker=tracker, workdir=tmp_path, progress=False)
    run = tracker.client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["cfg.compile"] == "True"
    assert 0 <= run.data.metrics["dice"] <= 1

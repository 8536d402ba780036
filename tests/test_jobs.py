"""Parallel suites (``run_suite(jobs=N)``, ``unet-zoo bench --jobs N``): worker processes, one store."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

import zoo.harness.tracking as tracking_module
from zoo.harness import RunResult, Suite, Tracker, TrainConfig, load_suite, run_suite
from zoo.harness.suites import WorkerDiedError
from zoo.harness.tracking import QUALITY_KEYS, is_database_locked

from .helpers import seed_store

JOBS = 2


def _good_runs() -> list[TrainConfig]:
    """unet_bilinear and unet_bn at tiny width on the small EM twin (the smoke budget): one run for each
    of the JOBS workers."""
    return load_suite("smoke", models="unet_b*", datasets=["isbi2012"]).runs


class _Unpicklable(Exception):
    """An error that pickles but cannot be rebuilt from its pickle (a keyword-only argument)."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Sabotage(int):
    """A ``base_channels`` value that, unpickled in a worker, makes that worker's next run die or raise.

    Spawned workers do not see this process's monkeypatches, so the sabotage travels inside the pickled
    config and arms itself on arrival, where it stands for the plain number.
    """

    fate: str

    def __new__(cls, value: int, fate: str) -> _Sabotage:
        obj = super().__new__(cls, value)
        obj.fate = fate
        return obj

    def __reduce__(self) -> tuple[Any, tuple[int, str]]:
        return _arm, (int(self), self.fate)


def _arm(value: int, fate: str) -> int:
    import zoo.harness.training as training

    real = training.augment_batch

    def sabotaged(*args: Any, **kwargs: Any) -> Any:  # called first inside the training loop
        training.augment_batch = real  # one run only: the worker goes on to train later runs
        if fate == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise _Unpicklable("sabotaged in the worker", code=3)

    training.augment_batch = sabotaged
    return value


def _sabotaged(fate: str, seed: int) -> TrainConfig:
    cfg = _good_runs()[0]
    return TrainConfig.from_dict(
        {**cfg.to_dict(), "seed": seed, "overrides": {**cfg.overrides, "base_channels": _Sabotage(4, fate)}}
    )


def _children(tracker: Tracker, parent_name: str) -> tuple[Run, list[Run]]:
    runs = tracker.client.search_runs([tracker.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == parent_name]
    return parent, [r for r in runs if r is not parent]


@dataclass
class Parallel:
    """What ``unet-zoo bench --jobs 2`` left: its store, what it printed, its exit code, and what
    ``run_suite`` returned to it."""

    tracker: Tracker
    printed: str
    code: int
    runs: list[TrainConfig]
    outcomes: list[tuple[str, object]]


@pytest.fixture(scope="module")
def parallel(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Parallel:
    """The good runs and two sabotaged ones (one raises in its worker, one kills its worker) through
    ``unet-zoo bench --jobs 2``, two at a time into one SQLite store. The suite the CLI loads gains the
    sabotaged runs here (they cannot be written in a suite file), and ``run_suite``'s outcomes are kept
    on their way back to the CLI; all else is the command's own."""
    import zoo.harness
    from zoo.cli import main

    workdir = seed_store(store_template, tmp_path_factory.mktemp("parallel"))
    real_load, real_run = zoo.harness.load_suite, zoo.harness.run_suite
    kept: dict[str, Any] = {}

    def load_with_sabotage(*args: Any, **kwargs: Any) -> Suite:
        suite = real_load(*args, **kwargs)
        suite.runs = [*suite.runs, _sabotaged("raise", seed=8), _sabotaged("kill", seed=7)]
        kept["runs"] = list(suite.runs)
        return suite

    def run_and_keep(*args: Any, **kwargs: Any) -> list[tuple[str, object]]:
        kept["outcomes"] = real_run(*args, **kwargs)
        return kept["outcomes"]  # type: ignore[no-any-return]

    argv = ["bench", "--suite", "smoke", "--models", "unet_b*", "--datasets", "isbi2012"]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(zoo.harness, "load_suite", load_with_sabotage)
        patch.setattr(zoo.harness, "run_suite", run_and_keep)
        code = main([*argv, "--workdir", str(workdir), "--jobs", str(JOBS)])
    return Parallel(Tracker("suite-smoke", workdir=workdir), printed.getvalue(), code, **kept)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> list[tuple[str, object]]:
    workdir = seed_store(store_template, tmp_path_factory.mktemp("sequential"))
    tracker = Tracker("jobs-test", workdir=workdir)
    return run_suite(Suite("jobs", "", _good_runs()), tracker=tracker, workdir=str(workdir), progress=False)


def test_parallel_runs_are_each_recorded_once_under_one_parent(parallel: Parallel) -> None:
    names = [c.run_name for c in parallel.runs]
    assert names[: len(_good_runs())] == [c.run_name for c in _good_runs()]
    assert parallel.code == 1  # some runs failed
    table = [
        words[0] for words in map(str.split, parallel.printed.splitlines()) if words and words[0] in names
    ]
    assert table == names  # the results table keeps the suite's order, whatever finished first
    tracker = parallel.tracker
    parent, children = _children(tracker, "smoke")
    assert parent.info.status == "FAILED"  # not every run finished
    assert sorted(r.info.run_name for r in children) == sorted(names)  # each run once: no duplicates
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    good = {c.run_name for c in _good_runs()}
    for run in children:
        name = run.info.run_name
        if name not in good:
            continue
        assert run.info.status == "FINISHED", name
        assert sorted(m.step for m in tracker.client.get_metric_history(run.info.run_id, "val_dice")) == [0]
        for key in (*QUALITY_KEYS, "train_images_per_s", "infer_images_per_s", "best_epoch"):
            assert key in run.data.metrics, (name, key)
        weights = [a.path for a in tracker.client.list_artifacts(run.info.run_id, "weights")]
        assert weights == ["weights/best.safetensors"], name
    assert "leaderboard: " in parallel.printed  # of the runs that finished


def test_parallel_quality_equals_a_sequential_run(
    parallel: Parallel, sequential: list[tuple[str, object]]
) -> None:
    # Seeded crops, augmentation and initialisation make a run's numbers a function of its config; the
    # process it runs in and the runs beside it must not change them (nor its thread count, which the
    # test run holds at one everywhere: tests/conftest.py)
    _, children = _children(parallel.tracker, "smoke")
    recorded = {r.info.run_name: r.data.metrics for r in children}
    for name, result in sequential:
        assert isinstance(result, RunResult), result
        for key in (*QUALITY_KEYS, "best_epoch"):
            assert recorded[name][key] == result.metrics[key], (name, key)


def test_a_killed_worker_and_a_failing_run_are_reported_and_others_unaffected(
    parallel: Parallel, sequential: list[tuple[str, object]]
) -> None:
    runs, outcomes = parallel.runs, parallel.outcomes
    assert [name for name, _ in outcomes] == [c.run_name for c in runs]
    _, children = _children(parallel.tracker, "smoke")
    status = {r.info.run_name: r.info.status for r in children}
    *finished, (raised_name, raised), (killed_name, killed) = outcomes
    # _Unpicklable cannot cross back to the parent, so its type and message come as text
    assert isinstance(raised, RuntimeError) and str(raised) == "_Unpicklable: sabotaged in the worker"
    assert status[raised_name] == "FAILED"  # by train() in the worker
    assert isinstance(killed, WorkerDiedError) and "worker process died" in str(killed)
    assert status[killed_name] == "FAILED"  # by the parent: the worker could not
    expected = dict(sequential)
    for name, result in finished:
        assert isinstance(result, RunResult) and status[name] == "FINISHED"
        assert result.metrics["dice"] == expected[name].metrics["dice"]  # type: ignore[attr-defined]


def test_bench_cli_rejects_a_job_count_below_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fresh_store: Callable[[Path], Path]
) -> None:
    from zoo.cli import main

    assert main(["bench", "--suite", "smoke", "--workdir", str(fresh_store(tmp_path)), "--jobs", "0"]) == 2
    assert "jobs=0: the number of runs trained at once must be 1 or more" in capsys.readouterr().err


def _locked_error() -> MlflowException:
    """The error MLflow's SQL store raises when SQLite stays locked past its busy timeout."""
    try:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as orig:
            raise sqlalchemy.exc.OperationalError("INSERT INTO metrics ...", {}, orig) from orig
    except sqlalchemy.exc.OperationalError as err:
        locked = MlflowException(str(err), error_code=TEMPORARILY_UNAVAILABLE)
        locked.__cause__ = err
        return locked


def test_tracker_retries_a_write_that_found_the_database_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_store: Callable[[Path], Path]
) -> None:
    tracker = Tracker("locked", workdir=fresh_store(tmp_path))
    run_id = tracker.start_run("r")
    real_log_batch = tracker.client.log_batch
    calls = {"n": 0}

    def flaky_log_batch(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise _locked_error()
        real_log_batch(*args, **kwargs)

    monkeypatch.setattr(tracking_module, "LOCKED_RETRY_DELAYS", (0.0, 0.0, 0.0))
    monkeypatch.setattr(tracker.client, "log_batch", flaky_log_batch)
    tracker.log_metrics(run_id, {"dice": 0.5}, step=0)
    assert calls["n"] == 3
    assert [m.value for m in tracker.client.get_metric_history(run_id, "dice")] == [0.5]  # logged once

    calls["n"] = -10  # locked on every try: after the last retry the error reaches the caller
    with pytest.raises(MlflowException, match="database is locked"):
        tracker.log_metrics(run_id, {"dice": 0.6}, step=1)
    assert calls["n"] == -10 + 4


def test_only_sqlite_lock_errors_count_as_locked() -> None:
    assert is_database_locked(_locked_error())
    assert not is_database_locked(MlflowException("RESOURCE_ALREADY_EXISTS: experiment 'x' exists"))
    assert not is_database_locked(sqlite3.OperationalError("no such table: runs"))


def test_mlflow_traceback_for_a_retried_lock_is_dropped_and_others_kept(
    tmp_path: Path, fresh_store: Callable[[Path], Path]
) -> None:
    import logging

    Tracker("quiet", workdir=fresh_store(tmp_path))  # installs the filter on MLflow's SQL-store logger
    logger = logging.getLogger("mlflow.store.db.utils")
    locked = _locked_error().__cause__
    assert isinstance(locked, sqlalchemy.exc.OperationalError)

    def record(err: BaseException) -> logging.LogRecord:
        exc_info = (type(err), err, None)
        return logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "db error", (), exc_info)

    assert not logger.filter(record(locked))  # Tracker retries it and says so itself
    other = sqlalchemy.exc.OperationalError("SELECT ...", {}, sqlite3.OperationalError("disk I/O error"))
    assert logger.filter(record(other))
    assert logger.filter(logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "plain", (), None))

"""Studies and suites on Ray: a local cluster of two nodes on this machine (Ray's own test utility), the
trials spread over it, every trial recorded in the one MLflow store the driver names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from zoo.harness import Suite, Tracker
from zoo.harness.engines import Engine
from zoo.harness.ray_engine import run_study_on_ray, run_suite_on_ray
from zoo.harness.spaces import load_spaces
from zoo.harness.training import RunResult
from zoo.harness.tuning import Study, make_studies

from .helpers import tiny_run, write_space

ray = pytest.importorskip("ray")
pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """A Ray head and one worker node, one CPU each, on this machine; yields the head's address. Its
    workers run at the tests' priority (Ray's default niceness, 15, starves them on a busy machine)."""
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_worker_niceness", "0")
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        try:
            yield cluster.address
        finally:
            ray.shutdown()
            cluster.shutdown()


def test_a_study_runs_as_ray_trials_on_two_nodes_and_every_trial_reaches_mlflow(
    two_nodes: str, tmp_path: Path, fresh_store: Callable[[Path], Path]
) -> None:
    fresh_store(tmp_path)
    space = write_space(tmp_path)
    study = make_studies(
        [tiny_run(epochs=2)],
        suite="ray",
        settings={"trials": 2, "max_images": 4, "pruner": "asha"},
        space=load_spaces(space),
    )[0]
    tracker = Tracker("tune-ray", workdir=tmp_path)
    result = run_study_on_ray(study, tracker=tracker, workdir=tmp_path, engine=Engine("ray", two_nodes))
    assert result.engine == "ray" and len(result.trials) == 2
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    # one CPU per trial, one CPU per node: the two trials ran at once, one on each node
    children = tracker.child_runs(result.parent_run_id)
    assert len(children) == 2
    assert all(c.data.tags["zoo.kind"] == "trial" for c in children)
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)  # complete, or pruned by ASHA
    done = [t for t in result.trials if t.state == "complete"]
    assert done and {t.run_id for t in done} <= {c.info.run_id for c in children}
    for trial in done:
        run = tracker.client.get_run(trial.run_id)
        assert run.data.metrics["dice"] == pytest.approx(trial.value)
        assert float(run.data.params["cfg.lr"]) == pytest.approx(trial.values["lr"])
    parent = tracker.client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["engine"] == "ray"


@pytest.mark.slow  # two more Ray workers importing torch and the zoo: the study above covers the engine
def test_a_suite_runs_as_ray_trials_into_one_store(
    two_nodes: str, tmp_path: Path, fresh_store: Callable[[Path], Path]
) -> None:
    fresh_store(tmp_path)
    runs = [tiny_run(seed=0), tiny_run(seed=1)]
    tracker = Tracker("suite-ray", workdir=tmp_path)
    outcomes: list[tuple[str, Any]] = run_suite_on_ray(
        Suite("ray", "two seeds on Ray", runs),
        tracker=tracker,
        workdir=tmp_path,
        engine=Engine("ray", two_nodes),
    )
    assert [name for name, _ in outcomes] == ["unet_bn-isbi2012-s0", "unet_bn-isbi2012-s1"]
    assert all(isinstance(o, RunResult) for _, o in outcomes)
    recorded = tracker.client.search_runs([tracker.experiment_id], "tags.`zoo.kind` = 'run'")
    assert sorted(r.data.params["cfg.seed"] for r in recorded) == ["0", "1"]
    assert all(r.info.status == "FINISHED" and "dice" in r.data.metrics for r in recorded)


_KILLED_RAY_SWEEP = """
import sys
from pathlib import Path
from zoo.harness import Tracker
from zoo.harness.engines import Engine
from zoo.harness.ray_engine import run_study_on_ray
from tests.test_ray_engine import three_trial_study

tmp, address = Path(sys.argv[1]), sys.argv[2]
run_study_on_ray(three_trial_study(tmp), tracker=Tracker("tune-ray-kill", workdir=tmp), workdir=tmp,
                 engine=Engine("ray", address))
"""


def three_trial_study(tmp: Path) -> Study:
    """Three trials of two epochs, no pruning: the sweep a killed driver leaves half done."""
    return make_studies(
        [tiny_run(epochs=2)],
        suite="ray-kill",
        settings={"trials": 3, "max_images": 8, "pruner": "none"},
        space=load_spaces(write_space(tmp)),
    )[0]


@pytest.mark.slow
def test_a_killed_ray_sweep_resumes_where_it_stopped(
    two_nodes: str, tmp_path: Path, fresh_store: Callable[[Path], Path]
) -> None:
    """The driver SIGKILLed once a trial has finished: the same call again restores Ray's experiment,
    keeps the finished trial, runs the rest, and ends the study's one parent run."""
    fresh_store(tmp_path)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "TUNE_GLOBAL_CHECKPOINT_S": "0"}  # state saved each step
    driver = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RAY_SWEEP, str(tmp_path), two_nodes], cwd=root, env=env
    )
    tracker = Tracker("tune-ray-kill", workdir=tmp_path)
    deadline = time.monotonic() + 300
    finished: list[str] = []
    while not finished:
        assert driver.poll() is None, "the sweep ended before it was killed"
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(1)
        trials = tracker.client.search_runs([tracker.experiment_id], "tags.`zoo.kind` = 'trial'")
        finished = [r.info.run_id for r in trials if r.info.status == "FINISHED"]
    time.sleep(3)  # Ray's experiment state records the trial's end
    driver.send_signal(signal.SIGKILL)
    driver.wait()

    result = run_study_on_ray(
        three_trial_study(tmp_path), tracker=tracker, workdir=tmp_path, engine=Engine("ray", two_nodes)
    )
    assert [t.state for t in result.trials] == ["complete"] * 3
    assert set(finished) <= {t.run_id for t in result.trials}  # kept, not trained again
    parents = tracker.client.search_runs([tracker.experiment_id], "tags.`zoo.kind` = 'study'")
    assert [p.info.run_id for p in parents] == [result.parent_run_id]
    assert parents[0].info.status == "FINISHED"
    runs = tracker.child_runs(result.parent_run_id)
    assert sum(r.info.status == "FINISHED" for r in runs) == 3  # each trial trained to its end once

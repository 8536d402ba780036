"""Studies and suites as Ray Tune trials: one machine or a cluster, the same code.

Ray is an optional extra (``pip install 'unet-zoo[tune]'``); nothing else in the zoo imports it. Each
trial is an ordinary run of the harness in a Ray worker process, recorded into the one MLflow store the
driver names (an SQLite file on one machine; a tracking server's URI, ``MLFLOW_TRACKING_URI``, when the
trials run on several), under the study's or the suite's parent run.

- Where: a local Ray started on demand, or the cluster at ``address`` (or ``RAY_ADDRESS``).
- Resources per trial: a GPU on GPU nodes (a config on ``cuda``, or ``auto`` on a cluster that has
  GPUs), else CPU threads (one by default, so a 16-core node trains 16 trials at once); the trial's
  torch threads follow its CPUs.
- Searching (studies): Ray's ``OptunaSearch`` asks the study's space (the same define-by-run function as
  the local engine) with the study's Optuna sampler; Ray's scheduler prunes: ASHA (``pruner="asha"``),
  the median stopping rule (``"median"``) or none. A stopped trial's run is recorded as stopped.
- Resume: a sweep or suite killed midway resumes from Ray's experiment folder
  (``<workdir>/ray/<name>``): finished trials are kept, unfinished ones run again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError
from zoo.harness.config import TrainConfig
from zoo.harness.engines import Engine
from zoo.harness.suites import Suite, prepare_synthetic_twins, start_suite_run
from zoo.harness.tracking import Tracker
from zoo.harness.training import RunResult, RunStopped, train
from zoo.harness.tuning import (
    OBJECTIVE,
    Study,
    StudyResult,
    TrialOutcome,
    end_orphan_trials,
    record_study,
    run_trial,
    study_parent_run,
    sweeping,
)

__all__ = ["connect", "run_study_on_ray", "run_suite_on_ray", "trial_resources"]

log = logging.getLogger(__name__)

METRIC = f"best_val_{OBJECTIVE}"
"""What trials report each epoch: the best validation Dice so far (the last report is the objective)."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ConfigError(
            "--backend ray needs Ray Tune: pip install 'unet-zoo[tune]' on every machine that runs trials"
        ) from err
    return ray


def connect(address: str | None) -> str:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray; returns where."""
    ray = _ray()
    if ray.is_initialized():
        return "the Ray already started in this process"
    address = address or os.environ.get("RAY_ADDRESS")
    # trials must see the paths the driver was given (relative ones included), not Ray's trial folder
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    logging.getLogger("ray").setLevel(logging.WARNING)
    if address:
        ray.init(address=address, log_to_driver=True)
        return f"the Ray cluster at {address}"
    ray.init(include_dashboard=False, log_to_driver=True)
    return "a local Ray on this machine"


def trial_resources(cfg: TrainConfig, engine: Engine) -> dict[str, float]:
    """What one trial asks of Ray: the engine's GPUs (default: one where the config trains on CUDA, or
    on ``auto`` where the cluster has GPUs) and CPUs (default: 2 beside a GPU, for its data, else 1)."""
    cpus, gpus = engine.cpus_per_trial, engine.gpus_per_trial
    if gpus is None:
        ray = _ray()
        on_cuda = cfg.device.startswith("cuda")
        gpus = 1.0 if on_cuda or (cfg.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0) else 0.0
    if cpus is None:
        cpus = 2.0 if gpus else 1.0
    if cpus <= 0 or gpus < 0:
        raise ConfigError(f"cpus={cpus}, gpus={gpus}: a trial needs at least some CPU and no negative GPU")
    return {"cpu": float(cpus), "gpu": float(gpus)}


def _absolute(cfg: TrainConfig) -> TrainConfig:
    """Paths as every worker must read them: absolute (a worker may start in another folder)."""
    data_root = str(Path(cfg.data_root).resolve()) if cfg.data_root else None
    dataset = str(Path(cfg.dataset).resolve()) if Path(cfg.dataset).suffix == ".toml" else cfg.dataset
    return dataclasses.replace(cfg, data_root=data_root, dataset=dataset)


@dataclass(frozen=True)
class _Job:
    """What a trial needs to record where the driver records: the store, experiment, folder, parent."""

    tracking_uri: str
    experiment: str
    workdir: str
    parent: str
    threads: int

    def tracker(self) -> Tracker:
        import torch

        torch.set_num_threads(self.threads)
        return Tracker(self.experiment, workdir=self.workdir, tracking_uri=self.tracking_uri)


def _job(tracker: Tracker, workdir: str | Path, parent: str, resources: Mapping[str, float]) -> _Job:
    return _Job(
        tracker.uri, tracker.experiment, str(Path(workdir).resolve()), parent, max(1, int(resources["cpu"]))
    )


# -- studies ----------------------------------------------------------------------------------------------
def _study_trial(config: dict[str, Any], *, study: Study, job: _Job) -> None:
    """One trial of a study, in a Ray worker: train, report the best Dice so far after each epoch."""
    from ray import tune

    context = tune.get_context()
    values = {k: config[k] for k in study.space.keys}

    def report(epoch: int, best: float) -> bool:
        try:
            tune.report({METRIC: best, "epoch": epoch})
        except SystemExit:  # Ray's scheduler stopped the trial while it waited here
            return True
        return False

    try:
        result = run_trial(
            study,
            values,
            context.get_trial_id(),
            tracker=job.tracker(),
            workdir=job.workdir,
            parent=job.parent,
            report=report,
        )
    except RunStopped:
        return
    tune.report({METRIC: float(result.metrics[OBJECTIVE]), "run_id": result.run_id, "complete": 1})


def _scheduler(study: Study) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    if study.pruner == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            metric=METRIC,
            mode="max",
            max_t=study.base.epochs + 1,
            grace_period=1,
        )
    if study.pruner == "median":
        return MedianStoppingRule(
            time_attr="training_iteration",
            metric=METRIC,
            mode="max",
            grace_period=1,
            min_samples_required=study.startup_trials,
        )
    return FIFOScheduler()


def run_study_on_ray(
    study: Study,
    *,
    tracker: Tracker,
    workdir: str | Path = "runs",
    engine: Engine,
) -> StudyResult:
    """``study`` as Ray Tune trials (module docstring); resumes a killed sweep of the same study."""
    where = connect(engine.address)
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    start = time.perf_counter()
    study = dataclasses.replace(study, base=_absolute(study.base))
    prepare_synthetic_twins([study.base], str(Path(workdir).resolve()))
    resources = trial_resources(study.base, engine)
    with sweeping(workdir, tracker.experiment, study.name):  # one sweep of a study at a time
        parent = study_parent_run(tracker, study)
        end_orphan_trials(tracker, parent)
        job = _job(tracker, workdir, parent, resources)
        trainable = tune.with_resources(tune.with_parameters(_study_trial, study=study, job=job), resources)
        path = Path(workdir).resolve() / "ray" / study.name
        if tune.Tuner.can_restore(path):
            log.info("%s: resuming the Ray sweep in %s", study.name, path)
            tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
        else:
            log.info("%s: %s on %s, %s per trial", study.name, study.budget.describe(), where, resources)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=OptunaSearch(
                        space=study.space.sample, metric=METRIC, mode="max", sampler=study.make_sampler()
                    ),
                    scheduler=_scheduler(study),
                    num_samples=study.budget.trials,
                    time_budget_s=study.budget.seconds,
                    reuse_actors=True,  # a worker imports torch and the zoo once, not once per trial
                ),
                run_config=tune.RunConfig(name=study.name, storage_path=str(path.parent), verbose=0),
            )
        try:
            grid = tuner.fit()
        except BaseException:
            tracker.finish(parent, "KILLED")
            raise
        # a trial whose worker ended before it could record its end (stopped by the scheduler mid-write)
        end_orphan_trials(tracker, parent, reason="stopped by the Ray scheduler")
        result = StudyResult(study, parent, "ray", seconds=time.perf_counter() - start)
        for number in range(len(grid)):
            trial = grid[number]
            metrics = trial.metrics or {}
            values = {k: v for k, v in (trial.config or {}).items() if k in study.space.keys}
            if trial.error is not None:
                state, value = "failed", None
            elif metrics.get("complete"):
                state, value = "complete", float(metrics[METRIC])
            else:
                state, value = "pruned", None
            run_id = metrics.get("run_id") if isinstance(metrics.get("run_id"), str) else None
            epochs = int(metrics.get("training_iteration", 0)) - (1 if state == "complete" else 0)
            result.trials.append(TrialOutcome(number, values, state, value, run_id, epochs))
        record_study(tracker, result)
        return result


# -- suites -------------------------------------------------------------------------------------------------
def _suite_run(config: dict[str, Any], *, runs: list[TrainConfig], job: _Job, suite: str) -> None:
    from ray import tune

    result = train(
        runs[config["run"]],
        tracker=job.tracker(),
        workdir=job.workdir,
        parent_run_id=job.parent,
        tags={"suite": suite},
        progress=False,
    )
    tune.report({OBJECTIVE: float(result.metrics[OBJECTIVE]), "run_id": result.run_id})


def run_suite_on_ray(
    suite: Suite, *, tracker: Tracker, workdir: str | Path = "runs", engine: Engine
) -> list[tuple[str, object]]:
    """Each of ``suite``'s runs as one Ray Tune trial under the suite's parent run (as
    :func:`zoo.harness.suites.run_suite` records them); ``(run name, RunResult or the error)`` per run, in
    the suite's order. A suite killed midway resumes: finished runs are not redone."""
    parent = start_suite_run(suite, tracker)
    try:
        outcomes = _suite_on_ray(suite.name, suite.runs, tracker, parent, workdir, engine)
    except BaseException:
        tracker.finish(parent, "KILLED")
        raise
    failed = any(not isinstance(o, RunResult) for _, o in outcomes)
    tracker.finish(parent, "FAILED" if failed else "FINISHED")
    return outcomes


def _suite_on_ray(
    name: str, runs: list[TrainConfig], tracker: Tracker, parent: str, workdir: str | Path, engine: Engine
) -> list[tuple[str, object]]:
    where = connect(engine.address)
    from ray import tune

    runs = [_absolute(cfg) for cfg in runs]
    prepare_synthetic_twins(runs, str(Path(workdir).resolve()))
    resources = trial_resources(runs[0], engine)
    job = _job(tracker, workdir, parent, resources)
    trainable = tune.with_resources(
        tune.with_parameters(_suite_run, runs=runs, job=job, suite=name), resources
    )
    path = Path(workdir).resolve() / "ray" / f"suite-{name}"
    if tune.Tuner.can_restore(path):
        log.info("suite %s: resuming the Ray run in %s", name, path)
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
    else:
        log.info("suite %s: %d runs as Ray trials on %s, %s each", name, len(runs), where, resources)
        tuner = tune.Tuner(
            trainable,
            param_space={"run": tune.grid_search(list(range(len(runs))))},
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(name=path.name, storage_path=str(path.parent), verbose=0),
        )
    grid = tuner.fit()
    outcomes: dict[int, object] = {}
    for i in range(len(grid)):
        trial = grid[i]
        k = int((trial.config or {})["run"])
        metrics = trial.metrics or {}
        if trial.error is not None or "run_id" not in metrics:
            outcomes[k] = trial.error or RuntimeError(f"{runs[k].run_name}: the trial ended without a result")
            continue
        run = tracker.client.get_run(metrics["run_id"])
        final = {k2: float(v) for k2, v in run.data.metrics.items()}
        folder = Path(job.workdir) / tracker.experiment
        run_dir = next(folder.glob(f"{runs[k].run_name}-{metrics['run_id'][:8]}"), folder)
        outcomes[k] = RunResult(metrics["run_id"], run_dir, final)
    return [(cfg.run_name, outcomes.get(k, RuntimeError("not run"))) for k, cfg in enumerate(runs)]

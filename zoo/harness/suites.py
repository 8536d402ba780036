"""Suites: which models x datasets x seeds, with which budgets. Suite files are TOML: the built-in ones
ship inside the package (``zoo/suites/``, package data, so an installed wheel has them); a user's own go in
``./benchmarks/suites/`` of the folder the command runs in, or anywhere as a ``.toml`` path
(:func:`find_suite` gives the lookup order).

Format::

    name = "smoke"
    description = "..."
    models = ["*"]                # registry patterns
    datasets = ["isbi2012", "carvana"]
    seeds = [0]
    tiny = true                   # apply each model's `tiny` overrides (smoke runs)
    recipes = ["short-isbi2012"]  # each run starts from the first recipe made for its model and dataset

    [train]                       # TrainConfig fields for every run
    epochs = 1
    [dataset.carvana]             # fields for runs on one dataset
    resize = [96, 144]
    [model.unet]                  # fields for runs of one model (overrides merge)
    crop = 188
    [tune]                        # a study per (model, dataset): `unet-zoo tune` (zoo.harness.tuning)
    trials = 8
    max_images = 480
    tuned = true                  # `bench` runs start from the tuned recipes the suite's studies wrote

Fields apply from the lowest to the highest: the run's recipe, ``[train]``, ``[dataset.X]``, ``[model.X]``,
the CLI's ``--set``; model ``overrides`` merge key by key in that order (a ``tiny`` suite's just above the
recipe's). In a ``tuned`` suite each run starts from the tuned recipe of its model and dataset
(:func:`zoo.harness.tuning.tuned_recipe_name`), which already holds the suite's fields: only the seed,
the data root and ``--set`` go on top; ``unet-zoo tune`` expands the same file without them.

``run_suite(..., jobs=N)`` (``unet-zoo bench --jobs N``) trains N runs at once in worker processes that
share the cores and record into the same store and parent run.

Progress is logged at INFO (the CLI shows it), one line as each run starts and one as it ends::

    [3/14] unet_bn-isbi2012-s0: started
    [3/14] unet_bn-isbi2012-s0: done in 41 s, Dice 0.812; suite 2 min 10 s elapsed, about 5 min left

``[k/N]``: the k-th run to start, or to end; the estimate is :func:`estimate_seconds_left`'s.
"""

from __future__ import annotations

import difflib
import json
import logging
import multiprocessing
import os
import pickle
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from zoo.errors import ConfigError, ZooError, close_names
from zoo.harness.config import TrainConfig
from zoo.harness.data import build_data
from zoo.harness.recipes import get_recipe, recipe_for, resolve_recipe
from zoo.harness.tracking import Tracker
from zoo.harness.training import RunResult, train
from zoo.harness.tuning import tuned_recipe_name
from zoo.registry import get_entry, list_models

__all__ = [
    "Suite",
    "UnknownSuiteError",
    "WorkerDiedError",
    "estimate_seconds_left",
    "find_suite",
    "format_duration",
    "load_suite",
    "run_suite",
    "start_suite_run",
    "suite_dirs",
]

log = logging.getLogger(__name__)

BUILTIN_SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"
"""The suites shipped with the package (``smoke``, ``default``, ``cpu``, ``gpu``, ``tuned-cpu``)."""
USER_SUITES_DIR = Path("benchmarks") / "suites"
"""Where a user keeps their own suites, relative to the folder a command runs in."""


def suite_dirs() -> tuple[Path, Path]:
    """The folders :func:`find_suite` searches by name, first to last: the user's (``./benchmarks/suites``
    of the current folder, read at each call, not at import) and then the built-in ones."""
    return Path.cwd() / USER_SUITES_DIR, BUILTIN_SUITES_DIR


class UnknownSuiteError(ZooError, FileNotFoundError):
    """No suite file of that name or path; the message lists the close and the known suites."""


@dataclass
class Suite:
    name: str
    description: str
    runs: list[TrainConfig]


def find_suite(name_or_path: str) -> Path:
    """The suite file for a path or a name.

    Lookup order: ``name_or_path`` itself when it is an existing ``.toml`` file; then ``NAME.toml`` in
    ``./benchmarks/suites`` of the current folder (a user's own suite, which may shadow a built-in one
    of the same name); then the built-in suites shipped in the package.

    Raises:
        UnknownSuiteError: none of these; the message lists the built-in and the user's suites, a close
            name if there is one, and the folders searched.
    """
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        return path
    user_dir, builtin_dir = suite_dirs()
    for folder in (user_dir, builtin_dir):
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    builtin = sorted(p.stem for p in builtin_dir.glob("*.toml"))
    own = sorted(p.stem for p in user_dir.glob("*.toml")) if user_dir.is_dir() else []
    close = difflib.get_close_matches(path.stem, sorted({*builtin, *own}), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    where = f"{path}: no such file. " if path.suffix == ".toml" else ""
    yours = f"; yours: {', '.join(own)}" if own else ""
    raise UnknownSuiteError(
        f"{where}suite {name_or_path!r} not found.{hint} Known suites: built-in "
        f"{', '.join(builtin) or 'none'}{yours} (looked in {user_dir}, then {builtin_dir}); "
        f"add your own as ./{USER_SUITES_DIR.as_posix()}/NAME.toml or pass a .toml path"
    )


def read_suite_file(path: Path) -> dict[str, Any]:
    """A suite file's TOML, its top-level keys checked (a misspelt key would be ignored silently).

    Raises:
        ConfigError: unreadable TOML (the message names the file, line and column) or an unknown key.
    """
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: not a valid TOML suite file ({err}); fix it there") from err
    unknown = sorted(set(spec) - set(SUITE_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown suite key(s) {unknown}. {close_names(unknown, SUITE_KEYS)} Suite keys: "
            f"{', '.join(SUITE_KEYS)} (TrainConfig fields go under [train])"
        )
    for key, value in spec.items():
        if not isinstance(value, _SUITE_TYPES[key][0]) or (
            isinstance(value, list) and not all(isinstance(v, _SUITE_TYPES[key][1]) for v in value)
        ):
            plural = f" (the list is {key}s = [...])" if key in ("model", "dataset") else ""
            raise ConfigError(f"{path}: {key} = {value!r} must be {_SUITE_TYPES[key][2]}{plural}")
    return spec


# per suite key: its type, the type of a list's items, and how to say it
_SUITE_TYPES: dict[str, tuple[type, type, str]] = {
    "name": (str, str, "a string"),
    "description": (str, str, "a string"),
    "models": (list, str, 'a list of registry patterns, e.g. ["unet*"]'),
    "datasets": (list, str, 'a list of datasets, e.g. ["isbi2012"]'),
    "seeds": (list, int, "a list of whole numbers, e.g. [0, 1, 2]"),
    "tiny": (bool, bool, "true or false"),
    "recipes": (list, str, "a list of recipe names"),
    "train": (dict, object, "a table: [train] with TrainConfig fields"),
    "dataset": (dict, object, "tables [dataset.NAME] with TrainConfig fields"),
    "model": (dict, object, "tables [model.NAME] with TrainConfig fields"),
    "tune": (dict, object, "a table: [tune] with trials, max_images ... (zoo.harness.tuning)"),
    "tuned": (bool, bool, "true or false"),
}
SUITE_KEYS = tuple(_SUITE_TYPES)
"""The keys of a suite file (module docstring); a misspelt one would otherwise be ignored silently."""


def load_suite(
    name_or_path: str,
    *,
    models: str | None = None,
    datasets: Sequence[str] | None = None,
    seeds: int | None = None,
    data_root: str | None = None,
    extra: dict[str, Any] | None = None,
    tuned: bool | None = None,
) -> Suite:
    """Expand a suite file into run configs, narrowed by the CLI's ``--models/--datasets/--seeds``.

    ``tuned``: start each run from its tuned recipe (default: the file's ``tuned`` key); False gives the
    configs a study starts from.
    """
    path = find_suite(name_or_path)
    spec = read_suite_file(path)
    suite_name = spec.get("name", path.stem)
    if tuned is None:
        tuned = spec.get("tuned", False)
    patterns = [models] if models else spec.get("models", ["*"])
    names = sorted({n for p in patterns for n in list_models(p)})
    if not names:
        raise ConfigError(f"no registered model matches {patterns}; see `unet-zoo models`")
    chosen_datasets = list(datasets) if datasets else spec.get("datasets", ["isbi2012"])
    seed_list = list(range(seeds)) if seeds is not None else spec.get("seeds", [0])
    base = dict(spec.get("train", {}))
    recipe_names = spec.get("recipes", [])
    for recipe_name in recipe_names:
        get_recipe(recipe_name)  # an unknown name fails here, with the close ones, before any run
    runs = []
    for dataset in chosen_datasets:
        for name in names:
            if tuned:
                runs.extend(_tuned_runs(suite_name, name, dataset, seed_list, data_root, extra))
                continue
            recipe = recipe_for(recipe_names, name, dataset)
            for seed in seed_list:
                fields: dict[str, Any] = dict(recipe.fields) if recipe else {}
                recipe_overrides = fields.pop("overrides", {})
                fields.update(base)
                fields.update(spec.get("dataset", {}).get(dataset, {}))
                per_model = dict(spec.get("model", {}).get(name, {}))
                overrides = {
                    **recipe_overrides,
                    **(get_entry(name).tiny if spec.get("tiny") else {}),
                    **fields.pop("overrides", {}),
                    **per_model.pop("overrides", {}),
                }
                fields.update(per_model)
                fields.update(extra or {})
                fields.update(
                    model=name,
                    dataset=dataset,
                    seed=seed,
                    overrides=overrides,
                    data_root=data_root,
                    recipe=recipe.name if recipe else None,
                )
                runs.append(TrainConfig.from_dict(fields))
    return Suite(suite_name, spec.get("description", ""), runs)


def _tuned_runs(
    suite: str,
    model: str,
    dataset: str,
    seeds: Sequence[int],
    data_root: str | None,
    extra: dict[str, Any] | None,
) -> list[TrainConfig]:
    name = tuned_recipe_name(suite, model, dataset)
    try:
        get_recipe(name)
    except ZooError as err:
        raise ConfigError(
            f"suite {suite!r} runs tuned recipes, and {name!r} does not exist yet: tune it first with "
            f"`unet-zoo tune --suite {suite} --models {model} --datasets {dataset}` (its recipe goes to "
            "WORKDIR/tuned-recipes.toml, which bench reads), or pass the file with --recipes"
        ) from err
    return [
        resolve_recipe(name, {**(extra or {}), "seed": seed, "data_root": data_root, "dataset": dataset})
        for seed in seeds
    ]


def format_duration(seconds: float, *, coarse: bool = False) -> str:
    """``41 s``, ``2 min 10 s``, ``1 h 5 min``; ``coarse``: whole minutes above one (``about 5 min``)."""
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    if coarse:
        total = round(seconds / 60) * 60
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if secs else f"{minutes} min"


def estimate_seconds_left(durations: Sequence[float], runs_left: int, *, jobs: int = 1) -> float | None:
    """The time a suite still needs: the mean of its finished runs' ``durations`` times ``runs_left``
    (those running included), shared among ``jobs`` runs at a time, never more at once than are left.
    None while no run has finished: there is nothing to go by yet."""
    if runs_left <= 0:
        return 0.0
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    return mean * runs_left / min(jobs, runs_left)


class _Progress:
    """The suite's progress lines (module docstring): a count, the elapsed time and an estimate."""

    def __init__(self, total: int, jobs: int) -> None:
        self.total, self.jobs = total, jobs
        self.start = time.perf_counter()
        self.started_runs = 0
        self.ended_runs = 0
        self.durations: list[float] = []  # of finished runs only: a run that failed early is no guide

    def started(self, name: str) -> None:
        self.started_runs += 1
        log.info("[%d/%d] %s: started", self.started_runs, self.total, name)

    def ended(self, name: str, seconds: float, outcome: object) -> None:
        self.ended_runs += 1
        suite = f"suite {format_duration(time.perf_counter() - self.start)} elapsed"
        if isinstance(outcome, RunResult):
            self.durations.append(seconds)
        left = estimate_seconds_left(self.durations, self.total - self.ended_runs, jobs=self.jobs)
        if left:
            suite += f", about {format_duration(left, coarse=True)} left"
        head = f"[{self.ended_runs}/{self.total}] {name}"
        if isinstance(outcome, RunResult):
            dice = outcome.metrics.get("dice", float("nan"))
            log.info("%s: done in %s, Dice %.3f; %s", head, format_duration(seconds), dice, suite)
        else:
            log.error("%s: failed after %s: %s; %s", head, format_duration(seconds), outcome, suite)


def start_suite_run(suite: Suite, tracker: Tracker) -> str:
    """The suite's parent run, with what the suite is (its runs are recorded under it)."""
    parent = tracker.start_run(suite.name, tags={"zoo.kind": "suite", "suite": suite.name})
    tracker.log_params(
        parent,
        {
            "suite": suite.name,
            "description": suite.description,
            "runs": len(suite.runs),
            "models": ",".join(sorted({c.model for c in suite.runs})),
            "datasets": ",".join(sorted({c.dataset for c in suite.runs})),
            "seeds": ",".join(str(s) for s in sorted({c.seed for c in suite.runs})),
            "data_root": str(suite.runs[0].data_root) if suite.runs else "",
        },
    )
    return parent


def run_suite(
    suite: Suite,
    *,
    tracker: Tracker,
    workdir: str = "runs",
    progress: bool = True,
    jobs: int = 1,
) -> list[tuple[str, object]]:
    """Run every config of ``suite`` under one parent MLflow run; a failing run is recorded and skipped.

    Args:
        jobs: runs trained at once, each in its own process (1: one after another, in this process).

    Returns ``(run name, RunResult or the exception)`` per run, in the suite's order.
    """
    if jobs < 1:
        raise ConfigError(f"jobs={jobs}: the number of runs trained at once must be 1 or more")
    parent = start_suite_run(suite, tracker)
    outcomes: list[tuple[str, object]] = []
    report = _Progress(len(suite.runs), jobs)
    try:
        if jobs > 1:
            outcomes = _run_parallel(
                suite, tracker=tracker, workdir=workdir, parent=parent, jobs=jobs, report=report
            )
            return outcomes
        for cfg in suite.runs:
            report.started(cfg.run_name)
            start = time.perf_counter()
            outcome: object
            try:
                outcome = train(
                    cfg,
                    tracker=tracker,
                    workdir=workdir,
                    parent_run_id=parent,
                    tags={"suite": suite.name},
                    progress=progress,
                )
            except Exception as err:  # recorded as FAILED in MLflow by train(); the suite goes on
                outcome = err
            outcomes.append((cfg.run_name, outcome))
            report.ended(cfg.run_name, time.perf_counter() - start, outcome)
    finally:
        failed = any(isinstance(o, Exception) for _, o in outcomes) or len(outcomes) < len(suite.runs)
        tracker.finish(parent, "FAILED" if failed else "FINISHED")
    return outcomes


class WorkerDiedError(RuntimeError):
    """A parallel run's process ended without reporting back (killed, out of memory, a native crash)."""


@dataclass(frozen=True)
class _Job:
    """What a worker process needs to train one config into the suite's store, under its parent run."""

    cfg: TrainConfig
    tracking_uri: str
    experiment: str
    workdir: str
    parent_run_id: str
    suite: str


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # the cores this process may use (containers, taskset)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _start_worker(threads: int, log_levels: tuple[tuple[str, int], ...]) -> None:
    """A worker process's setup: its share of the cores, and the parent's logging levels."""
    import mlflow  # noqa: F401  (imported first: importing mlflow resets the levels of its loggers)
    import torch

    logging.basicConfig(format="%(levelname)s %(name)s [worker %(process)d]: %(message)s")
    for name, level in log_levels:
        logging.getLogger(name).setLevel(level)
    torch.set_num_threads(threads)


def _train_job(job: _Job) -> RunResult:
    """Run in a worker process: one run, recorded in the shared store exactly as a sequential one."""
    tracker = Tracker(job.experiment, workdir=job.workdir, tracking_uri=job.tracking_uri)
    try:
        return train(
            job.cfg,
            tracker=tracker,
            workdir=job.workdir,
            parent_run_id=job.parent_run_id,
            tags={"suite": job.suite},
            progress=False,  # bars from several processes would interleave; the parent logs progress
        )
    except Exception as err:
        try:  # the error travels back pickled; one that cannot be rebuilt there would break the worker
            pickle.loads(pickle.dumps(err))
        except Exception:
            raise RuntimeError(f"{type(err).__name__}: {err}") from err
        raise


def prepare_synthetic_twins(runs: Sequence[TrainConfig], workdir: str) -> None:
    # A twin is written on first use; write each one here, before the workers start, so that they only
    # read it: two workers writing the same twin at once would each see the other's half-written files.
    seen = set()
    for cfg in runs:
        key = (cfg.dataset, json.dumps(cfg.synthetic, sort_keys=True))
        if cfg.data_root is None and key not in seen:
            seen.add(key)
            try:
                build_data(cfg, workdir)
            except Exception as err:  # not fatal to the suite: that run meets the error again and fails
                log.warning("%s: preparing its synthetic data failed: %s", cfg.run_name, err)


def _run_parallel(
    suite: Suite, *, tracker: Tracker, workdir: str, parent: str, jobs: int, report: _Progress
) -> list[tuple[str, object]]:
    """Train ``suite.runs`` in ``jobs`` worker processes; outcomes in the suite's order.

    Each worker is a single-process pool of its own (spawned: forking a process that has used torch is
    unsafe) with one run in flight at a time, so a worker that dies takes only its own run with it: that
    run is reported, marked FAILED in MLflow from here, and a fresh worker takes the next run.
    """
    total = len(suite.runs)
    workers = max(1, min(jobs, total))
    cores = _usable_cores()
    threads = max(1, cores // workers)
    log.info(
        "%d runs, %d at a time in worker processes with %d torch thread(s) each (%d cores)",
        total,
        workers,
        threads,
        cores,
    )
    prepare_synthetic_twins(suite.runs, workdir)
    levels = tuple((n, logging.getLogger(n).getEffectiveLevel()) for n in ("", "mlflow", "alembic"))
    context = multiprocessing.get_context("spawn")
    pools: list[ProcessPoolExecutor | None] = [None] * workers
    waiting = deque(enumerate(suite.runs))
    running: dict[Future[RunResult], tuple[int, int, float]] = {}  # future -> (run index, worker, start)
    results: dict[int, object] = {}
    try:
        while waiting or running:
            busy = {w for _, w, _ in running.values()}
            for w in range(workers):
                if w in busy or not waiting:
                    continue
                pool = pools[w]
                if pool is None:
                    pool = pools[w] = ProcessPoolExecutor(
                        max_workers=1,
                        mp_context=context,
                        initializer=_start_worker,
                        initargs=(threads, levels),
                    )
                k, cfg = waiting.popleft()
                job = _Job(cfg, tracker.uri, tracker.experiment, workdir, parent, suite.name)
                running[pool.submit(_train_job, job)] = (k, w, time.perf_counter())
                report.started(cfg.run_name)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: running[f][0]):
                k, w, start = running.pop(future)
                cfg = suite.runs[k]
                outcome: object
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    broken = pools[w]
                    assert broken is not None
                    broken.shutdown()
                    pools[w] = None  # the next run gets a fresh process
                    err: Exception = WorkerDiedError(
                        f"{cfg.run_name}: its worker process died without reporting back (killed, out of "
                        "memory, or a crash in native code); rerun it alone with `unet-zoo train` to see why"
                    )
                    _fail_orphans(tracker, parent, cfg.run_name)
                    outcome = err
                except Exception as err:  # recorded as FAILED in MLflow by train() in the worker
                    outcome = err
                results[k] = outcome
                report.ended(cfg.run_name, time.perf_counter() - start, outcome)
    finally:
        # Interrupted (Ctrl-C reaches the workers too; each marks its run KILLED): let them end cleanly.
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    return [(cfg.run_name, results[k]) for k, cfg in enumerate(suite.runs)]


def _fail_orphans(tracker: Tracker, parent: str, name: str) -> None:
    # a killed worker never marked its run; left RUNNING it would look like a run still in progress
    for run in tracker.child_runs(parent, name=name):
        if run.info.status == "RUNNING":
            tracker.finish(run.info.run_id, "FAILED")

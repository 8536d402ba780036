"""Studies: a hyperparameter search per (model, dataset) with the same, stated budget for every variant.

A study is data (:class:`Study`): the run every trial starts from (a suite's config of that model and
dataset, its recipe resolved), the search space (:mod:`zoo.harness.spaces`), the budget (:class:`Budget`:
trials x at most so many training images per trial, the same for every variant of a suite), the sampler
and the pruner. Optuna decides what to try (TPE by default) and which trials to stop from their
per-epoch validation Dice (median pruning by default, or ASHA); each trial is an ordinary run of the
harness, recorded as an MLflow child run of the study's parent run; the best trial's configuration
becomes a tuned recipe (:func:`write_tuned_recipe`) with its provenance, which ``unet-zoo recipes`` lists
and ``train --recipe`` and a tuned suite's seeds start from.

Two engines run the trials; the project writes neither a sampler nor a scheduler:

- ``local`` (default): Optuna in this process, one trial after another, its study kept in an SQLite
  file (``<workdir>/tune/<experiment>.db``), so a killed sweep resumes where it stopped: the trial that
  was running is recorded as failed and tried again with the same values, the finished ones count.
- ``ray``: Ray Tune trials (:mod:`zoo.harness.ray_engine`): ``OptunaSearch`` with the same space and
  sampler, Ray's ASHA or median-stopping scheduler, a local Ray or a cluster by address.

A suite file holds a study's settings in its ``[tune]`` table (``trials``, ``max_images``, ``seconds``,
``sampler``, ``pruner``, ``seed``); the built-in ``zoo/suites/tuned-cpu.toml`` is the published one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomllib

from zoo.data.registry import get_dataset
from zoo.errors import ConfigError, close_names
from zoo.harness.config import TrainConfig
from zoo.harness.recipes import get_recipe, recipe_files, use_recipe_files
from zoo.harness.spaces import SearchSpace, apply, space_for
from zoo.harness.tracking import Tracker, git_state, open_client, store_lock
from zoo.harness.training import EpochCallback, RunResult, RunStopped, train

if TYPE_CHECKING:
    import optuna

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "Budget",
    "Study",
    "StudyResult",
    "TrialOutcome",
    "make_studies",
    "run_study",
    "tuned_recipe_name",
    "write_tuned_recipe",
]

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "asha", "none")
OBJECTIVE = "dice"
"""What a study maximises: the run's best validation Dice (per epoch: ``val_dice``)."""
_TUNE_KEYS = ("trials", "max_images", "seconds", "sampler", "pruner", "seed", "startup_trials")
# fields a tuned recipe does not carry: what a run is of, and the trial's own budget cap
_IDENTITY = ("model", "dataset", "recipe", "data_root", "seed", "budget_images", "budget_seconds")


@dataclass(frozen=True)
class Budget:
    """A study's budget: ``trials`` trials of at most ``max_images`` training images each (the trial's
    ``budget_images``), the same for every variant; ``seconds``: a wall-clock limit of the whole study on
    top (no trial starts after it; a stated, machine-dependent budget, not an equal one)."""

    trials: int
    max_images: int
    seconds: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"trials={self.trials!r}: a study needs a whole number of trials, at least 1")
        if isinstance(self.max_images, bool) or not isinstance(self.max_images, int) or self.max_images < 1:
            raise ConfigError(
                f"max_images={self.max_images!r}: the training images per trial must be a whole number >= 1"
            )
        if self.seconds is not None and not (isinstance(self.seconds, int | float) and self.seconds > 0):
            raise ConfigError(
                f"seconds={self.seconds!r}: the study's wall-clock limit must be > 0 (or unset)"
            )

    def describe(self) -> str:
        text = f"{self.trials} trials x at most {self.max_images} training images"
        return text + (f", at most {self.seconds:g} s of wall clock" if self.seconds else "")


@dataclass(frozen=True)
class Study:
    """One search: ``base`` (the run every trial starts from), ``space``, ``budget``, sampler, pruner.

    ``suite`` names the suite the study belongs to: its tuned recipe is
    :func:`tuned_recipe_name` ``(suite, model, dataset)``."""

    suite: str
    base: TrainConfig
    space: SearchSpace
    budget: Budget
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    startup_trials: int = 2
    """Trials that run whole before the pruner judges (median pruning needs others to compare with)."""

    def __post_init__(self) -> None:
        for key, value, choices in (("sampler", self.sampler, SAMPLERS), ("pruner", self.pruner, PRUNERS)):
            if value not in choices:
                raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, choices))}")
        self.space.check(self.base)
        self.trial_config({})  # the budget fits the run: at least one optimiser step

    @property
    def name(self) -> str:
        return f"{self.suite}-{self.base.model}-{get_dataset(self.base.dataset).name}"

    @property
    def recipe_name(self) -> str:
        return tuned_recipe_name(self.suite, self.base.model, self.base.dataset)

    def trial_config(self, values: Mapping[str, Any]) -> TrainConfig:
        """The config of a trial that sets ``values``: the base with them, capped at the budget's images."""
        cfg = apply(self.base, values)
        return dataclasses.replace(cfg, budget_images=self.budget.max_images, budget_seconds=None)

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        """The study's sampler, seeded. Its start-up values come from :meth:`planned_values` instead,
        queued in the study: Optuna does not store a sampler's random stream, so a resumed study would
        draw its first values again."""
        import optuna

        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=max(self.startup_trials, 1))

    def planned_values(self) -> list[dict[str, Any]]:
        """The values of the trials that do not depend on earlier results, drawn once from the seeded
        random stream: TPE's start-up trials, or every trial of a random search. The same for every
        variant (common random numbers), and the same after a resume."""
        import optuna

        count = self.budget.trials if self.sampler == "random" else max(self.startup_trials, 1)
        scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=self.seed))
        planned = []
        for _ in range(min(count, self.budget.trials)):
            trial = scratch.ask()
            self.space.sample(trial)
            planned.append(dict(trial.params))  # Optuna's names and values, as enqueue_trial takes them
        return planned

    def make_pruner(self) -> optuna.pruners.BasePruner:
        import optuna

        if self.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.startup_trials, n_warmup_steps=1)
        if self.pruner == "asha":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
        return optuna.pruners.NopPruner()

    def params(self) -> dict[str, Any]:
        """What the study's parent run records."""
        return {
            "study": self.name,
            "suite": self.suite,
            "model": self.base.model,
            "dataset": get_dataset(self.base.dataset).name,
            "base_recipe": self.base.recipe or "",
            "space": self.space.name,
            "searched": self.space.describe(),
            "budget": self.budget.describe(),
            "trials": self.budget.trials,
            "max_images": self.budget.max_images,
            "seconds": self.budget.seconds,
            "sampler": self.sampler,
            "pruner": self.pruner,
            "sampler_seed": self.seed,
            "objective": f"max val {OBJECTIVE}",
            "data_root": str(self.base.data_root),
        }


def tuned_recipe_name(suite: str, model: str, dataset: str) -> str:
    """The name of the recipe a suite's study of ``model`` on ``dataset`` writes."""
    return f"{model}-{get_dataset(dataset).name}-{suite}"


def tune_settings(spec: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """A suite's ``[tune]`` table, its keys checked."""
    table = spec.get("tune", {})
    unknown = sorted(set(table) - set(_TUNE_KEYS))
    if unknown:
        raise ConfigError(
            f"{origin}: unknown [tune] key(s) {unknown} {close_names(unknown, _TUNE_KEYS)}; [tune] keys: "
            f"{', '.join(_TUNE_KEYS)}"
        )
    return dict(table)


def make_studies(
    runs: Sequence[TrainConfig],
    *,
    suite: str,
    settings: Mapping[str, Any],
    space: Mapping[str, SearchSpace] | None = None,
) -> list[Study]:
    """One study per (model, dataset) of a suite's ``runs`` (their first seed's config is the base; the
    trials all train with seed 0 of the sampler's choice), each with the same budget.

    Args:
        settings: the ``[tune]`` table with the CLI's values on top: trials and max_images are required.
        space: spaces to pick from (default: the built-in ones).
    """
    missing = [k for k in ("trials", "max_images") if settings.get(k) is None]
    if missing:
        raise ConfigError(
            f"a study needs {' and '.join(missing)}: set them in the suite's [tune] table or with "
            "--trials N --max-images M (the budget every variant gets)"
        )
    budget = Budget(int(settings["trials"]), int(settings["max_images"]), settings.get("seconds"))
    studies, seen = [], set()
    for cfg in runs:
        key = (cfg.model, get_dataset(cfg.dataset).name)
        if key in seen:
            continue
        seen.add(key)
        studies.append(
            Study(
                suite=suite,
                base=dataclasses.replace(cfg, seed=0),
                space=space_for(cfg.model, cfg.dataset, space),
                budget=budget,
                sampler=settings.get("sampler", "tpe"),
                pruner=settings.get("pruner", "median"),
                seed=int(settings.get("seed", 0)),
                startup_trials=int(settings.get("startup_trials", 2)),
            )
        )
    return studies


# -- what a study returns ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialOutcome:
    """One trial as the study saw it: its values, state ("complete", "pruned", "failed"; "not run": its
    values could not be drawn; "killed": a sweep was killed during it, and it was tried again), its best
    validation Dice (None unless complete) and its MLflow run."""

    number: int
    values: Mapping[str, Any]
    state: str
    value: float | None
    run_id: str | None = None
    epochs: int = 0


@dataclass
class StudyResult:
    study: Study
    parent_run_id: str
    engine: str
    trials: list[TrialOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def best(self) -> TrialOutcome | None:
        done = [t for t in self.trials if t.state == "complete" and t.value is not None]
        return max(done, key=lambda t: (t.value, -t.number)) if done else None

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)


# -- the local engine: Optuna in this process -------------------------------------------------------------
def storage_path(workdir: str | Path, experiment: str, study: str) -> Path:
    """The Optuna store of one study: an SQLite file of its own (two studies run at once never wait for
    each other's lock), under the workdir beside the MLflow store."""
    folder = Path(workdir).resolve() / "tune" / experiment
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{study}.db"


def storage_uri(workdir: str | Path, experiment: str, study: str) -> str:
    """:func:`storage_path` as Optuna's storage URL."""
    return f"sqlite:///{storage_path(workdir, experiment, study).as_posix()}"


@contextlib.contextmanager
def sweeping(workdir: str | Path, experiment: str, study: str) -> Iterator[None]:
    """Hold the study for this process while it runs: a second sweep of the same study (another terminal,
    a lane started twice) would take the first one's running trial for a killed one and retry it."""
    db = storage_path(workdir, experiment, study)
    held = contextlib.ExitStack()
    try:
        held.enter_context(store_lock(db, wait=False))
    except BlockingIOError:
        raise ConfigError(
            f"study {study!r} is being run by another process (it holds {db}.lock): wait for it to end, or "
            "stop it first; a rerun then resumes the study where it stopped"
        ) from None
    with held:
        yield


def study_parent_run(tracker: Tracker, study: Study) -> str:
    """The study's parent run: the one a killed sweep left (resumed), else a new one."""
    query = f"tags.`zoo.kind` = 'study' and tags.`zoo.study` = '{study.name}'"
    found = tracker.client.search_runs([tracker.experiment_id], query, max_results=1)
    if found:
        run_id = str(found[0].info.run_id)
        tracker.resume_run(run_id)
        return run_id
    run_id = tracker.start_run(study.name, tags={"zoo.kind": "study", "zoo.study": study.name, **git_state()})
    tracker.log_params(run_id, study.params())
    return run_id


def end_orphan_trials(tracker: Tracker, parent: str, *, reason: str = "sweep killed") -> int:
    """Trial runs left RUNNING (by a killed sweep, or a worker ended mid-record), marked KILLED with
    ``reason``; how many."""
    orphans = [r for r in tracker.child_runs(parent) if r.info.status == "RUNNING"]
    for run in orphans:
        tracker.set_tags(run.info.run_id, {"zoo.stopped": reason})
        tracker.finish(run.info.run_id, "KILLED")
    return len(orphans)


def trial_tags(study: Study, number: int | str) -> dict[str, str]:
    return {"zoo.kind": "trial", "zoo.study": study.name, "zoo.trial": str(number), "suite": study.suite}


def run_trial(
    study: Study,
    values: Mapping[str, Any],
    number: int | str,
    *,
    tracker: Tracker,
    workdir: str | Path,
    parent: str,
    report: Callable[[int, float], bool],
) -> RunResult:
    """Train one trial as an ordinary run of the harness under the study's parent run.

    ``report(epoch, val_dice)`` is called after each epoch; it returns True when the engine prunes the
    trial, which then ends recorded as stopped (:class:`~zoo.harness.training.RunStopped`). The value
    reported is the best validation Dice so far: the curve the pruner compares, whose last point is the
    trial's objective on both engines."""
    best = -math.inf

    def judge(epoch: int, metrics: Mapping[str, float]) -> None:
        nonlocal best
        best = max(best, metrics[f"val_{OBJECTIVE}"])
        if report(epoch, best):
            raise RunStopped("pruned")

    on_epoch: EpochCallback = judge
    return train(
        study.trial_config(values),
        tracker=tracker,
        workdir=workdir,
        parent_run_id=parent,
        tags=trial_tags(study, number),
        progress=False,
        on_epoch=on_epoch,
    )


def _optuna_state(trial: optuna.trial.FrozenTrial) -> str:
    import optuna

    states = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned"}
    if trial.state == optuna.trial.TrialState.FAIL and not trial.params:
        return "not run"  # it failed drawing its values: nothing was trained
    return states.get(trial.state, "failed")


class TrialFailed(Exception):
    """A trial's training failed: an outcome of the search, recorded, and the study goes on. Anything
    else a trial raises (its sampler failing) stops the sweep rather than spend the budget on it."""


def queue_planned_values(opt: optuna.Study, study: Study) -> None:
    """Queue the :meth:`Study.planned_values` that ``opt`` has not queued yet: all of them in a new
    study, none again on a resume."""
    queued = opt.user_attrs.get("planned_queued")
    if queued is None:  # a study begun before values were planned: its first sampled trials drew them
        queued = sum(
            1 for t in opt.get_trials(deepcopy=False) if t.params and "fixed_params" not in t.system_attrs
        )
    planned = study.planned_values()
    for values in planned[queued:]:
        opt.enqueue_trial(values, skip_if_exists=False)
    opt.set_user_attr("planned_queued", max(queued, len(planned)))


def run_study(
    study: Study,
    *,
    tracker: Tracker,
    workdir: str | Path = "runs",
) -> StudyResult:
    """Run ``study`` to its budget in this process, resuming a killed sweep of the same study; the
    result lists every trial. On Ray: :func:`zoo.harness.ray_engine.run_study_on_ray`."""
    _import_optuna()
    import optuna

    with sweeping(workdir, tracker.experiment, study.name):
        start = time.perf_counter()
        parent = study_parent_run(tracker, study)
        orphans = end_orphan_trials(tracker, parent)
        opt = optuna.create_study(
            study_name=study.name,
            storage=storage_uri(workdir, tracker.experiment, study.name),
            pruner=study.make_pruner(),
            direction="maximize",
            load_if_exists=True,
        )
        opt.sampler = study.make_sampler()
        queue_planned_values(opt, study)
        # A sweep killed mid-trial left that trial RUNNING: it is closed as failed and its values are tried
        # again; it does not count against the budget. Every other trial that trained does, a failed one
        # too (a learning rate that diverges is an outcome of the search, and spent its images).
        retried = list(opt.user_attrs.get("retried_trials", []))
        for stale in opt.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            opt.tell(stale.number, state=optuna.trial.TrialState.FAIL)
            opt.enqueue_trial(dict(stale.params), skip_if_exists=False)
            retried.append(stale.number)
        opt.set_user_attr("retried_trials", retried)
        ended = [
            t for t in opt.get_trials(deepcopy=False) if t.state.is_finished() and t.number not in retried
        ]
        done = sum(_optuna_state(t) != "not run" for t in ended)
        if done or orphans:
            log.info("%s: resuming with %d of %d trials done", study.name, done, study.budget.trials)

        def objective(trial: optuna.Trial) -> float:
            values = study.space.sample(trial)

            def report(epoch: int, value: float) -> bool:
                trial.report(value, epoch)
                return trial.should_prune()

            try:
                result = run_trial(
                    study,
                    values,
                    trial.number,
                    tracker=tracker,
                    workdir=workdir,
                    parent=parent,
                    report=report,
                )
            except RunStopped as stop:
                trial.set_user_attr("run_id", stop.run_id)
                raise optuna.TrialPruned(stop.reason) from None
            except Exception as err:  # recorded as a FAILED run by train(); the study goes on
                raise TrialFailed(f"{type(err).__name__}: {err}") from err
            trial.set_user_attr("run_id", result.run_id)
            return float(result.metrics[OBJECTIVE])

        class _Progress:
            def __call__(self, _: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                value = "-" if trial.value is None else f"{trial.value:.4f}"
                log.info("%s: trial %d %s (Dice %s)", study.name, trial.number, _optuna_state(trial), value)

        left = study.budget.trials - done
        try:
            if left > 0:
                opt.optimize(
                    objective,
                    n_trials=left,
                    timeout=study.budget.seconds,
                    callbacks=[_Progress()],
                    catch=(TrialFailed,),
                    # no full collection after each trial: its tensors go with their last reference, and a
                    # collection walks the whole heap (torch, MLflow, SQLAlchemy): seconds per trial
                    gc_after_trial=False,
                )
        except BaseException:
            tracker.finish(parent, "KILLED")
            raise
        result = StudyResult(study, parent, "local", seconds=time.perf_counter() - start)
        for t in opt.get_trials(deepcopy=False):
            state = "killed" if t.number in retried else _optuna_state(t)
            outcome = TrialOutcome(
                t.number,
                dict(t.params),
                state,
                t.value,
                t.user_attrs.get("run_id"),
                len(t.intermediate_values),
            )
            result.trials.append(outcome)
        record_study(tracker, result)
        return result


def _import_optuna() -> None:
    """Optuna, or the extra to install; its own log quieted (the study logs a line per trial itself)."""
    try:
        import optuna
    except ImportError as err:
        raise ConfigError(
            "`unet-zoo tune` needs Optuna: pip install 'unet-zoo[tune]' (Optuna, and Ray for --backend ray)"
        ) from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def record_study(tracker: Tracker, result: StudyResult) -> None:
    """The study's outcome on its parent run (counts, the best trial, the trials table), then FINISHED
    when it has a best trial, FAILED when none completed."""
    best = result.best
    metrics: dict[str, float] = {
        "trials_complete": result.count("complete"),
        "trials_pruned": result.count("pruned"),
        "trials_failed": result.count("failed"),
        "study_seconds": result.seconds,
    }
    if best is not None and best.value is not None:
        metrics.update(best_dice=best.value, best_trial=best.number)
        tracker.set_tags(result.parent_run_id, {"zoo.best_run": best.run_id or "", "engine": result.engine})
    tracker.log_metrics(result.parent_run_id, metrics)
    rows = [dataclasses.asdict(t) for t in result.trials]
    path = Path(tracker.workdir) / "tune" / f"{result.study.name}-trials.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1, default=str) + "\n", encoding="utf-8")
    tracker.log_artifact(result.parent_run_id, path, "study")
    tracker.finish(result.parent_run_id, "FINISHED" if best is not None else "FAILED")


# -- tuned recipes -----------------------------------------------------------------------------------------
def tuned_recipe(result: StudyResult, *, tracking_uri: str, experiment: str) -> dict[str, Any]:
    """The best trial's configuration as a recipe table (fields and provenance)."""
    best = result.best
    study = result.study
    if best is None:
        raise ConfigError(
            f"{study.name}: no trial completed ({result.count('pruned')} pruned, {result.count('failed')} "
            "failed): there is no configuration to save; see the trials' runs in MLflow"
        )
    cfg = study.trial_config(best.values)
    fields = {k: v for k, v in cfg.to_dict().items() if k not in _IDENTITY}
    dataset = get_dataset(cfg.dataset).name
    # the code the study started on (its parent run's tags), not the one that writes the file
    commit = {**git_state(), **open_client(tracking_uri).get_run(result.parent_run_id).data.tags}
    provenance = {
        "study": study.name,
        "experiment": experiment,
        "tracking_uri": tracking_uri,
        "parent_run_id": result.parent_run_id,
        "engine": result.engine,
        "base_recipe": study.base.recipe or "",
        "space": study.space.name,
        "searched": [p.describe() for p in study.space.params],
        "budget": study.budget.describe(),
        "trials_complete": result.count("complete"),
        "trials_pruned": result.count("pruned"),
        "trials_failed": result.count("failed"),
        "sampler": study.sampler,
        "pruner": study.pruner,
        "best_trial": best.number,
        "best_run_id": best.run_id or "",
        "best_val_dice": round(float(best.value or math.nan), 6),
        "best_values": {k: v for k, v in best.values.items()},
        "data": str(cfg.data_root) if cfg.data_root else "synthetic twin",
        "date": datetime.date.today().isoformat(),
        "commit": commit["git_commit"][:10] + ("+dirty" if commit["git_dirty"] == "True" else ""),
        "hours": round(result.seconds / 3600, 3),
    }
    description = (
        f"{cfg.model} on {dataset}, tuned by study {study.name}: the best of {study.budget.describe()} "
        f"({result.count('complete')} complete, {result.count('pruned')} pruned), validation Dice "
        f"{best.value:.4f} at the trial budget. Seeds train it without the trial's image cap."
    )
    reference = (
        f"MLflow experiment {experiment}, study run {result.parent_run_id}, best trial {best.number} "
        f"(run {best.run_id}); searched: {study.space.describe()}"
    )
    return {
        "description": description,
        "models": [cfg.model],
        "dataset": dataset,
        "reference": reference,
        **fields,
        "tuned": provenance,
    }


def write_tuned_recipe(result: StudyResult, path: str | Path, *, tracking_uri: str, experiment: str) -> str:
    """Add (or replace) the study's tuned recipe in the recipes file ``path`` and make it known to
    every lookup; returns its name."""
    path = Path(path)
    table = tuned_recipe(result, tracking_uri=tracking_uri, experiment=experiment)
    name = result.study.recipe_name
    path.parent.mkdir(parents=True, exist_ok=True)
    with store_lock(path):  # studies running at once add to the same file: one at a time
        existing: dict[str, Any] = {}
        if path.is_file():
            try:
                existing = tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(f"{path}: not a valid recipes file ({err}); fix or move it") from err
        existing[name] = table
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(
            _TUNED_HEADER + "".join(_toml_table(n, t) for n, t in sorted(existing.items())), encoding="utf-8"
        )
        tmp.replace(path)
    use_recipe_files(*recipe_files(), path)
    get_recipe(name)  # read back through the one parser: a file it cannot read is never left behind
    return name


_TUNED_HEADER = (
    "# Tuned recipes, written by `unet-zoo tune` (zoo/harness/tuning.py); each table's `tuned` holds its\n"
    "# provenance. Regenerated by a study: edit the search space or the suite, not this file.\n"
)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if value is None:
        raise ConfigError("TOML has no null: a None field is left out")
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def _toml_table(name: str, table: Mapping[str, Any]) -> str:
    lines = [f"\n[{_toml_key(name)}]"]
    nested = {k: v for k, v in table.items() if isinstance(v, Mapping) and k == "tuned"}
    for key, value in table.items():
        if key in nested or value is None:
            continue
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in nested.items():
        lines.append(f"\n[{_toml_key(name)}.{key}]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None)
    return "\n".join(lines) + "\n"

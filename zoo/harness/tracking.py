"""MLflow, the record of every run. The schema (what is logged under which key) is defined here only.

Default store: a SQLite file (embedded; nothing to start): ``sqlite:///<workdir>/mlflow.db`` with
artifacts in ``<workdir>/mlartifacts``. ``MLFLOW_TRACKING_URI`` points it at a server instead.

Several processes may write to one SQLite store (``unet-zoo bench --jobs N``). MLflow waits up to 20 s
for another writer's lock (``PRAGMA busy_timeout``); a write that still finds the database locked is
retried with backoff here rather than failing the run. The store's schema is created by the first
``Tracker`` (MLflow creates and migrates the tables of an empty database then); two processes doing it
at once would race ("table ... already exists"), so a ``Tracker`` opens a SQLite store, and creates its
experiment, holding an exclusive lock on the file ``<db>.lock`` beside it (``fcntl.flock``; where there is
no ``fcntl`` the lock is skipped and a parallel suite still creates its Tracker before starting workers).
A file that is not an SQLite database (damaged, or something else) is a :class:`StoreError` naming it.
The store's URI, that lock and the locked client (:func:`open_client`) are :mod:`zoo.mlflow_store`'s,
re-exported here: the factory reads MLflow's model registry through them without importing the harness.

Schema, per (model, dataset, seed) run, nested under a parent run per suite:
- params: the resolved :class:`TrainConfig` (``cfg.<field>``), the split (``split_*``), the model's
  resolved arguments (``model_args``), crop and output sizes, device, dtype, memory format,
  ``world_size`` (processes under torchrun), the dataset's ``class_names`` (:data:`CLASS_NAMES_PARAM`: a
  JSON list, index = class; :func:`class_names_param` writes it); at the end of the run, ``cost_size``,
  ``cost_batch``, ``planned_epochs`` (the epochs the learning-rate schedule was planned for: ``epochs``,
  or fewer under a budget), ``stop_reason`` (why the run stopped: "epochs", "patience",
  "budget_seconds" or "budget_images"; :mod:`zoo.harness.budget` gives the rules) and
  ``stopped_early`` (True when ``stop_reason`` is "patience": early stopping);
- tags: ``git_commit``, ``git_dirty``, ``torch_version``, ``cuda_version``, ``device_name``, ``suite``,
  ``zoo.kind`` ("suite" or "run"; a study's parent run "study", its trials "trial", with ``zoo.study``
  and ``zoo.trial``: :mod:`zoo.harness.tuning`), ``zoo.stopped`` on a run a study stopped (status
  KILLED: "pruned", or "sweep killed" for the trial a killed sweep left running);
- param ``recipe_tuning``: for a run from a tuned recipe, how the recipe was found (study, engine, budget,
  what was searched, date; ``Recipe.tuning``), "-" otherwise;
- metrics per epoch (step = epoch): ``train_loss``, ``val_`` + each quality key below, ``lr``,
  ``train_seconds`` and ``train_steps`` (the training loop alone: micro-batches), ``epoch_seconds``
  (with validation; the checkpoint, which holds these metrics, is written after it; a time budget
  counts this figure), ``grad_norm`` (mean global gradient norm per optimiser step, before clipping);
- final metrics: the quality keys (``zoo.metrics``) ``dice``, ``iou``, ``misclassified`` and, on ISBI,
  the challenge's ``pixel_error``, ``rand_error``, ``vrand``, ``vinfo`` and ``rand_error_argmax``, of
  the best epoch's weights on the validation split, ``best_epoch``; on datasets of more than two
  classes, also ``dice_<class>`` and ``iou_<class>`` for each foreground class (per epoch as
  ``val_dice_<class>``, ``val_iou_<class>``), ``<class>`` the class name as
  :func:`zoo.metrics.class_metric_keys` turns it into a key (lower case, ``[a-z0-9_]``; ``class<k>``
  when nothing is left): :func:`quality_keys` with the dataset's ``class_names`` lists them; cost:
  ``params``, ``gflops``, ``train_images_per_s``, ``infer_images_per_s``, ``latency_ms``,
  ``peak_memory_mb``;
- artifacts: ``weights/best.safetensors``, ``config/config.json``, ``overlays/*.png``.

Artifacts and run folders, each file stored once. The run's artifact in MLflow is the canonical copy:
``unet-zoo weights publish`` and the report download it, and against a server it is the only copy that
others see. The run folder (``<workdir>/<experiment>/<run name>-<id>``; the experiment's name is one
plain folder name, :func:`check_experiment_name`, so that it stays inside the workdir) holds the same
files under the names that ``unet-zoo evaluate RUN_DIR``, ``predict --weights`` and ``train --resume`` read:
``best.safetensors``, ``config.json``, ``overlays/``. On a local store (artifacts under a ``file:``
location, the default ``mlartifacts``) :meth:`Tracker.log_artifact` makes the artifact a hard link to the
run folder's file instead of a copy: one file on disk with two names, so that deleting either name
leaves the other whole (a symbolic link would dangle) and ``du`` counts it once. Both names show the
same bytes because the harness changes none of these files once logged (a run resumed after a kill
writes its weights and overlays anew and logs them again). Where a hard link cannot be made (the
artifact store on another filesystem) the artifact is copied as MLflow copies it; against a server it
is uploaded, and the run folder keeps the local copy.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

from zoo.errors import ConfigError
from zoo.metrics import class_metric_keys
from zoo.mlflow_store import StoreError, default_tracking_uri, open_client, sqlite_path, store_lock

if TYPE_CHECKING:
    from mlflow.entities import Run

__all__ = [
    "CLASS_NAMES_PARAM",
    "METRIC_KEYS",
    "QUALITY_KEYS",
    "StoreError",
    "Tracker",
    "check_experiment_name",
    "class_names_param",
    "default_tracking_uri",
    "git_state",
    "is_database_locked",
    "open_client",
    "quality_keys",
    "sqlite_path",
    "store_lock",
]

log = logging.getLogger(__name__)

ISBI_QUALITY_KEYS = ("pixel_error", "rand_error", "vrand", "vinfo", "rand_error_argmax")
QUALITY_KEYS = ("dice", "iou", "misclassified", *ISBI_QUALITY_KEYS)


def quality_keys(*, isbi: bool, class_names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The quality figures an evaluation reports: the ISBI challenge's only where they were asked for (a
    run recorded under older definitions may hold stale ones under those names); with the dataset's
    ``class_names`` (index = class) and more than two classes, also the per-class ``dice_<class>``,
    ``iou_<class>`` (:func:`zoo.metrics.class_metric_keys`). Without ``class_names``: the base keys only."""
    base = QUALITY_KEYS if isbi else tuple(k for k in QUALITY_KEYS if k not in ISBI_QUALITY_KEYS)
    return base if class_names is None else (*base, *class_metric_keys(class_names))


CLASS_NAMES_PARAM = "class_names"
"""The run parameter holding the dataset's class names (a JSON list, index = class): the report orders
and labels the per-class columns by it."""


def class_names_param(class_names: Sequence[str]) -> dict[str, str]:
    """The params entry that records a dataset's class names (:data:`CLASS_NAMES_PARAM`)."""
    return {CLASS_NAMES_PARAM: json.dumps(list(class_names))}


COST_KEYS = ("params", "gflops", "train_images_per_s", "infer_images_per_s", "latency_ms", "peak_memory_mb")
METRIC_KEYS = (*QUALITY_KEYS, *COST_KEYS, "best_epoch")

# seconds to wait before each retry of a write that found the database locked (after MLflow's own 20 s)
LOCKED_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)

T = TypeVar("T")

# An experiment's name names folders: WORKDIR/<experiment>/ (its run folders), WORKDIR/reports/<experiment>/
# and WORKDIR/tune/<experiment>/. One plain path component, so that no name reaches outside the workdir.
_SAFE_EXPERIMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_experiment_name(name: str, *, fix: str = "choose another (--experiment NAME)") -> None:
    """Refuse an experiment name that is not a plain folder name (``..``, a slash, a space, a newline):
    letters, digits, '_', '-' and '.', beginning with a letter or digit, at most 100 characters. Called
    wherever a name becomes a folder name (:class:`Tracker`, the report's default folder)."""
    if not _SAFE_EXPERIMENT.fullmatch(name):
        raise ConfigError(
            f"experiment name {name!r}: an experiment name is 1 to 100 letters, digits, '_', '-' or '.', "
            "beginning with a letter or digit (it names folders inside the workdir: WORKDIR/EXPERIMENT/ "
            f"for its runs, WORKDIR/reports/EXPERIMENT/ for its report); {fix}"
        )


def is_database_locked(err: BaseException) -> bool:
    """Whether ``err`` (an MLflow or SQLAlchemy error) comes from SQLite's "database is locked"."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, sqlite3.OperationalError) and "database is locked" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _QuietLockedRetries(logging.Filter):
    """Drops MLflow's own ERROR traceback for a "database is locked" write: :class:`Tracker` retries
    it and logs one line; if the retries run out the error is raised with its traceback anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        return not (err is not None and is_database_locked(err))


_QUIET = _QuietLockedRetries()


def git_state(cwd: str | Path | None = None) -> dict[str, str]:
    """The commit of the working tree and whether it has uncommitted changes ("unknown" outside git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        return {"git_commit": commit, "git_dirty": str(bool(status.strip()))}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


class Tracker:
    """A thin layer over ``MlflowClient``: explicit run ids, no global active-run state."""

    def __init__(
        self, experiment: str, *, workdir: str | Path = "runs", tracking_uri: str | None = None
    ) -> None:
        check_experiment_name(experiment)  # before anything is written: it names the run folders
        logging.getLogger("mlflow.store.db.utils").addFilter(_QUIET)  # a set: added once
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.uri = tracking_uri or default_tracking_uri(self.workdir)
        self.client = open_client(self.uri)
        # the experiment too is created under the lock: two first runs at once make it once
        with store_lock(sqlite_path(self.uri)):
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                artifacts = None
                if self.uri.startswith("sqlite:") or self.uri.startswith("file:"):
                    artifacts = (self.workdir.resolve() / "mlartifacts").as_uri()
                self.experiment_id = self._create_experiment(experiment, artifacts)
            else:
                self.experiment_id = found.experiment_id
        self.experiment = experiment

    def _create_experiment(self, name: str, artifacts: str | None) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return str(self._write(self.client.create_experiment, name, artifact_location=artifacts))
        except MlflowException:  # created meanwhile by a parallel job
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def start_run(
        self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str:
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self._write(self.client.create_run, self.experiment_id, run_name=name, tags=all_tags)
        return str(run.info.run_id)

    def child_runs(self, parent_run_id: str, *, name: str | None = None) -> list[Run]:
        """The runs started under ``parent_run_id`` (those named ``name`` only, if given)."""
        query = f"tags.mlflow.parentRunId = '{parent_run_id}'"
        if name is not None:
            query += f" and attributes.run_name = '{name}'"
        return list(self.client.search_runs([self.experiment_id], query, max_results=50_000))

    def resume_run(self, run_id: str) -> None:
        self._write(self.client.update_run, run_id, status="RUNNING")

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self._write(self.client.log_batch, run_id, params=items[start : start + 100])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._write(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], *, step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._write(self.client.log_batch, run_id, metrics=batch)

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    def log_artifact(self, run_id: str, path: str | Path, subdir: str | None = None) -> None:
        """Record ``path`` as the run's artifact ``subdir/<name>``: on a local store a hard link to it,
        else a copy or an upload (the module docstring says why)."""
        path = Path(path)
        folder = self.local_artifact_dir(run_id)
        if folder is not None:
            target = folder / subdir / path.name if subdir else folder / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)  # logged again by a resumed run: the new file replaces it
            try:
                os.link(path, target)
                return
            except OSError as err:  # another filesystem, or one without hard links
                log.debug("%s: no hard link into %s (%s); copying it", path, target.parent, err)
        self.client.log_artifact(run_id, str(path), artifact_path=subdir)

    def local_artifact_dir(self, run_id: str) -> Path | None:
        """The folder holding the run's artifacts when it is on this machine (a ``file:`` location), else
        None (a server, a cloud bucket)."""
        uri = urlparse(str(self.client.get_run(run_id).info.artifact_uri))
        if uri.scheme != "file" or uri.netloc not in ("", "localhost"):
            return None
        return Path(url2pathname(uri.path))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self._write(self.client.set_terminated, run_id, status=status)

    def run_status(self, run_id: str) -> str:
        return str(self.client.get_run(run_id).info.status)

    def _write(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # A write that fails on a locked database was rolled back whole, so repeating it is safe.
        for delay in (*LOCKED_RETRY_DELAYS, None):
            try:
                return call(*args, **kwargs)
            except Exception as err:
                if delay is None or not is_database_locked(err):
                    raise
                log.warning(
                    "%s: the MLflow store %s is locked by another writer; retrying in %.1f s",
                    getattr(call, "__name__", "write"),
                    self.uri,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

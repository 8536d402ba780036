"""Suites: which models x datasets x seeds, with which budgets. Suite files are TOML in benchmarks/suites/.

Format::

    name = "smoke"
    description = "..."
    models = ["*"]                # registry patterns
    datasets = ["isbi2012", "carvana"]
    seeds = [0]
    tiny = true                   # apply each model's `tiny` overrides (smoke runs)

    [train]                       # TrainConfig fields for every run
    epochs = 1
    [dataset.carvana]             # fields for runs on one dataset
    resize = [96, 144]
    [model.unet]                  # fields for runs of one model (overrides merge)
    crop = 188
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from zoo.harness.config import TrainConfig
from zoo.harness.tracking import Tracker
from zoo.harness.training import train
from zoo.registry import get_entry, list_models

__all__ = ["Suite", "find_suite", "load_suite", "run_suite"]

log = logging.getLogger(__name__)

SUITE_DIRS = (
    Path.cwd() / "benchmarks" / "suites",
    Path(__file__).resolve().parents[2] / "benchmarks" / "suites",
)


@dataclass
class Suite:
    name: str
    description: str
    runs: list[TrainConfig]


def find_suite(name_or_path: str) -> Path:
    """A suite file by path, or by name in ``./benchmarks/suites`` or the repository's suites folder."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        return path
    for folder in SUITE_DIRS:
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in SUITE_DIRS if d.is_dir() for p in d.glob("*.toml")})
    raise FileNotFoundError(
        f"suite {name_or_path!r} not found; known suites: {', '.join(known) or 'none'} "
        f"(looked in {', '.join(str(d) for d in SUITE_DIRS)}); or pass a .toml path"
    )


def load_suite(
    name_or_path: str,
    *,
    models: str | None = None,
    datasets: Sequence[str] | None = None,
    seeds: int | None = None,
    data_root: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Suite:
    """Expand a suite file into run configs, narrowed by the CLI's ``--models/--datasets/--seeds``."""
    path = find_suite(name_or_path)
    spec = tomllib.loads(path.read_text())
    patterns = [models] if models else spec.get("models", ["*"])
    names = sorted({n for p in patterns for n in list_models(p)})
    if not names:
        raise ValueError(f"no registered model matches {patterns}; see `unet-zoo models`")
    chosen_datasets = list(datasets) if datasets else spec.get("datasets", ["isbi2012"])
    seed_list = list(range(seeds)) if seeds is not None else spec.get("seeds", [0])
    base = dict(spec.get("train", {}))
    runs = []
    for dataset in chosen_datasets:
        for name in names:
            for seed in seed_list:
                fields: dict[str, Any] = {**base, **spec.get("dataset", {}).get(dataset, {})}
                per_model = dict(spec.get("model", {}).get(name, {}))
                overrides = {
                    **(get_entry(name).tiny if spec.get("tiny") else {}),
                    **fields.pop("overrides", {}),
                    **per_model.pop("overrides", {}),
                }
                fields.update(per_model)
                fields.update(extra or {})
                fields.update(
                    model=name, dataset=dataset, seed=seed, overrides=overrides, data_root=data_root
                )
                runs.append(TrainConfig.from_dict(fields))
    return Suite(spec.get("name", path.stem), spec.get("description", ""), runs)


def run_suite(
    suite: Suite, *, tracker: Tracker, workdir: str = "runs", progress: bool = True
) -> list[tuple[str, object]]:
    """Run every config of ``suite`` under one parent MLflow run; a failing run is recorded and skipped.

    Returns ``(run name, RunResult or the exception)`` per run, in order.
    """
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
    outcomes: list[tuple[str, object]] = []
    try:
        for k, cfg in enumerate(suite.runs, start=1):
            try:
                start = time.perf_counter()
                result = train(
                    cfg,
                    tracker=tracker,
                    workdir=workdir,
                    parent_run_id=parent,
                    tags={"suite": suite.name},
                    progress=progress,
                )
                outcomes.append((cfg.run_name, result))
                log.info(
                    "[%d/%d] %s: dice %.4f in %.0f s",
                    k,
                    len(suite.runs),
                    cfg.run_name,
                    result.metrics.get("dice", float("nan")),
                    time.perf_counter() - start,
                )
            except Exception as err:  # recorded as FAILED in MLflow by train(); the suite goes on
                log.error("%s failed: %s", cfg.run_name, err)
                outcomes.append((cfg.run_name, err))
    finally:
        failed = any(isinstance(o, Exception) for _, o in outcomes) or len(outcomes) < len(suite.runs)
        tracker.finish(parent, "FAILED" if failed else "FINISHED")
    return outcomes

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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from zoo.harness.config import TrainConfig
from zoo.registry import get_entry, list_models

__all__ = ["Suite", "find_suite", "load_suite"]

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

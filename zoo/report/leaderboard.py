"""The leaderboard: MLflow runs -> pandas -> aggregated over seeds, ranked per dataset.

Only finished runs with every quality and cost figure count; every other run is left out with a line
saying which and why. Quality metrics follow ``zoo.metrics`` (per image, then mean over images; the
ISBI challenge figures as the challenge's script computes them). Runs of datasets with more than two
classes also carry per-class figures (``dice_<class>``, ``iou_<class>``); they are aggregated over seeds
as the others are, in class order where the run records its class names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from zoo.harness.tracking import CLASS_NAMES_PARAM, COST_KEYS, QUALITY_KEYS
from zoo.metrics import class_metric_keys, split_class_key

__all__ = [
    "CONVERGED_WITHIN",
    "Leaderboard",
    "aggregate",
    "class_columns",
    "converged_epoch",
    "load_runs",
    "pareto_front",
]

CONVERGED_WITHIN = 0.005
"""A run has converged at the first epoch whose validation Dice is within this of its best."""

REQUIRED = ("dice", "iou", "misclassified", *COST_KEYS)
GROUP = ["dataset", "model", "overrides"]


@dataclass
class Leaderboard:
    runs: pd.DataFrame
    """One row per included run: model, overrides, dataset, seed, device, dtype, metrics, run_id."""
    table: pd.DataFrame
    """One row per (dataset, model, overrides): n, mean and std of each metric, rank, run ids."""
    excluded: list[str] = field(default_factory=list)


def converged_epoch(curve: dict[int, float], within: float = CONVERGED_WITHIN) -> int:
    """The first epoch whose validation Dice came within ``within`` of the run's best (``curve``: epoch ->
    Dice). Near the last epoch, the run was still improving when it stopped: its rank is one of speed of
    learning, not of converged quality."""
    if not curve:
        raise ValueError("an empty validation curve has no convergence epoch")
    best = max(curve.values())
    return min(epoch for epoch, dice in curve.items() if dice >= best - within)


def load_runs(experiment: str, tracking_uri: str) -> tuple[pd.DataFrame, list[str]]:
    """Finished, complete child runs of ``experiment`` and a line for each run left out."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments())
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking_uri}; experiments there: {names}")
    rows, excluded = [], []
    # the per-class columns in class order: that of runs recording their class names first, so that a
    # run recorded without them (its keys sorted) does not decide it
    named_order: list[str] = []
    found_order: list[str] = []
    for run in client.search_runs([exp.experiment_id], "tags.`zoo.kind` = 'run'", max_results=50_000):
        name = run.info.run_name or run.info.run_id
        if run.info.status != "FINISHED":
            excluded.append(f"{name} ({run.info.run_id[:8]}): status {run.info.status}, not FINISHED")
            continue
        missing = [k for k in REQUIRED if k not in run.data.metrics]
        if missing:
            excluded.append(f"{name} ({run.info.run_id[:8]}): incomplete, missing {', '.join(missing)}")
            continue
        p = run.data.params
        try:
            per_class, named = _class_keys(p, run.data.metrics)
        except ValueError as err:
            excluded.append(f"{name} ({run.info.run_id[:8]}): {err}")
            continue
        (named_order if named else found_order).extend(per_class)
        overrides = json.loads(p.get("cfg.overrides", "{}") or "{}")
        curve = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_dice")}
        rows.append(
            {
                "dataset": p.get("dataset_name") or p.get("cfg.dataset", "?"),  # a file: its name
                "model": p.get("cfg.model", "?"),
                "overrides": ",".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "-",
                "seed": int(p.get("cfg.seed", 0)),
                "device": run.data.tags.get("device_name", p.get("device", "?")),
                "dtype": p.get("dtype", "?"),
                "cost_size": p.get("cost_size", "?"),
                "cost_batch": p.get("cost_batch", "?"),
                "run_id": run.info.run_id,
                **{k: run.data.metrics.get(k) for k in (*QUALITY_KEYS, *COST_KEYS)},
                **{k: run.data.metrics[k] for k in per_class},
                "converged_epoch": converged_epoch(curve) if curve else None,
                "epochs": len(curve),
            }
        )
    runs = pd.DataFrame(rows)
    per_class_columns = list(dict.fromkeys([*named_order, *found_order]))
    others = [c for c in runs.columns if c not in set(per_class_columns)]
    return runs[[*others, *per_class_columns]], excluded


def _class_keys(params: Mapping[str, str], metrics: Mapping[str, float]) -> tuple[list[str], bool]:
    """The per-class metric keys a run holds and whether they are in class order: by its recorded class
    names, else (runs recorded without them) every key of the per-class form, sorted."""
    recorded = params.get(CLASS_NAMES_PARAM)
    if recorded is None:
        return sorted(k for k in metrics if split_class_key(k) is not None), False
    try:
        names = json.loads(recorded)
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list):
        raise ValueError(f"param {CLASS_NAMES_PARAM}={recorded!r} is not a JSON list of class names")
    return [k for k in class_metric_keys(names) if k in metrics], True


def class_columns(frame: pd.DataFrame, *, metric: str = "dice", suffix: str = "") -> list[str]:
    """The per-class keys of ``metric`` whose columns ``<key><suffix>`` ``frame`` has, in column order
    (class order where the runs recorded their class names): of the runs with ``suffix=""``
    (``dice_disc``), of the aggregated table with ``suffix="_mean"`` (``dice_disc_mean``)."""
    found = []
    for column in map(str, frame.columns):
        key = column.removesuffix(suffix) if suffix else column
        split = split_class_key(key) if column.endswith(suffix) else None
        if split is not None and split[0] == metric:
            found.append(key)
    return found


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1; 0 for a single seed) and n per (dataset, model, overrides),
    ranked by mean Dice within each dataset (1 = best). Per-class figures (where runs have them) are
    aggregated the same way; a group's mean and spread are over its runs that have them."""
    per_class = [*class_columns(runs, metric="dice"), *class_columns(runs, metric="iou")]
    keys = (*QUALITY_KEYS, *per_class, *COST_KEYS, "converged_epoch", "epochs")
    metrics = [k for k in keys if k in runs.columns and runs[k].notna().any()]
    grouped = runs.groupby(GROUP, sort=False)
    table = grouped.size().rename("n").to_frame()
    for m in metrics:
        table[f"{m}_mean"] = grouped[m].mean()
        table[f"{m}_std"] = grouped[m].std(ddof=1).fillna(0.0)
    for col in ("device", "dtype", "cost_size", "cost_batch"):
        table[col] = grouped[col].agg(lambda s: ",".join(sorted(set(map(str, s)))))
    table["run_ids"] = grouped["run_id"].agg(lambda s: ",".join(sorted(s)))
    table = table.reset_index()
    table["rank"] = table.groupby("dataset")["dice_mean"].rank(ascending=False, method="min").astype(int)
    return table.sort_values(["dataset", "rank", "model"]).reset_index(drop=True)


def pareto_front(quality: pd.Series, speed: pd.Series) -> pd.Series:
    """True where no other entry is at least as good on both axes and better on one."""
    q, s = quality.to_numpy(), speed.to_numpy()
    flags = [
        not any((q[j] >= q[i] and s[j] >= s[i]) and (q[j] > q[i] or s[j] > s[i]) for j in range(len(q)))
        for i in range(len(q))
    ]
    return pd.Series(flags, index=quality.index)


def build(experiment: str, tracking_uri: str) -> Leaderboard:
    runs, excluded = load_runs(experiment, tracking_uri)
    if runs.empty:
        raise ValueError(f"experiment {experiment!r} has no finished, complete runs; left out: {excluded}")
    table = aggregate(runs)
    table["pareto"] = False
    for _, part in table.groupby("dataset"):
        table.loc[part.index, "pareto"] = pareto_front(part["dice_mean"], part["infer_images_per_s_mean"])
    return Leaderboard(runs, table, excluded)

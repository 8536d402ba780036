"""The leaderboard: MLflow runs -> pandas -> aggregated over seeds, ranked per dataset and data.

A section of the board is one dataset on one data source (a synthetic twin and the real data are never
ranked together). Within it, a row is a model with its overrides; its figures are over distinct seeds
(``cfg.seed``): reruns of one seed are averaged first, so that ``n`` counts seeds and a rerun never
passes for one more seed. Spread: the standard deviation over seeds (ddof 1) from two seeds, and from
three a 95% confidence interval of the mean from the t-distribution. Each row carries where it came from:
the data, split, recipe, budget, device, dtype, git commit, date and a link to each MLflow run.

Only finished runs with every quality and cost figure count; every other run is left out with a line
saying which and why. Quality metrics follow ``zoo.metrics`` (per image, then mean over images; the
ISBI challenge figures as the challenge's script computes them). Runs of datasets with more than two
classes also carry per-class figures (``dice_<class>``, ``iou_<class>``); they are aggregated over seeds
as the others are, in class order where the run records its class names.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd
from scipy import stats

from zoo.errors import ZooError
from zoo.harness.tracking import CLASS_NAMES_PARAM, COST_KEYS, QUALITY_KEYS, open_client, sqlite_path
from zoo.metrics import class_metric_keys, split_class_key

__all__ = [
    "CONVERGED_WITHIN",
    "PROVENANCE",
    "SECTION",
    "SYNTHETIC_PREFIX",
    "ExperimentError",
    "Leaderboard",
    "aggregate",
    "ci95_halfwidth",
    "class_columns",
    "compare",
    "converged_epoch",
    "describe_data",
    "load_runs",
    "pareto_front",
    "run_link",
]

CONVERGED_WITHIN = 0.005
"""A run has converged at the first epoch whose validation Dice is within this of its best."""

REQUIRED = ("dice", "iou", "misclassified", *COST_KEYS)
SECTION = ["dataset", "data"]
"""One section of the board, ranked on its own: a dataset on one data source."""
GROUP = [*SECTION, "model", "overrides"]

SYNTHETIC_PREFIX = "synthetic twin of"
"""How the harness's ``data_source`` param begins for a generated twin (else it is the data's path)."""

PROVENANCE = {
    "split": "split",
    "recipe": "recipe",
    "tuning": "tuning",
    "budget": "budget",
    "device": "device",
    "dtype": "dtype",
    "git_commit": "git commit",
    "date": "date",
}
"""Per-run facts saying where a row's figures came from (column: label); a row lists its runs' values."""

JOIN = "; "  # between the differing values of a row's runs (budgets hold commas)


class ExperimentError(ZooError, ValueError):
    """An experiment that is not in the store, or has no finished runs to rank."""


@dataclass
class Leaderboard:
    runs: pd.DataFrame
    """One row per included run: model, overrides, dataset, data, seed, :data:`PROVENANCE`, metrics,
    run_id, run_link."""
    table: pd.DataFrame
    """One row per (dataset, data, model, overrides): ``n`` (seeds), ``runs``, ``reruns``; mean, std and
    (quality figures) ``_ci95`` of each metric; ``rank``, ``tied`` and ``placing``; provenance; run ids
    and links."""
    excluded: list[str] = field(default_factory=list)


def converged_epoch(curve: dict[int, float], within: float = CONVERGED_WITHIN) -> int:
    """The first epoch whose validation Dice came within ``within`` of the run's best (``curve``: epoch ->
    Dice). Near the last epoch, the run was still improving when it stopped: its rank is one of speed of
    learning, not of converged quality."""
    if not curve:
        raise ValueError("an empty validation curve has no convergence epoch")
    best = max(curve.values())
    return min(epoch for epoch, dice in curve.items() if dice >= best - within)


def describe_data(source: str | None, fingerprint: str | None = None) -> str:
    """What a run was trained and scored on, from its ``data_source`` param: a synthetic twin says so,
    real data gives its path and, when the run recorded it, the first 12 hex digits of the fingerprint
    of the files it read (``dataset_files_fingerprint``: their paths and sizes), so that two boards on
    different files under one path are never mixed."""
    if not source:
        return "data not recorded (the run has no data_source param)"
    if source.startswith(SYNTHETIC_PREFIX):
        return source
    return f"real data ({source}; files {fingerprint[:12]})" if fingerprint else f"real data ({source})"


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI where the store is an MLflow server; else the run id (a local
    store has no page to link to: ``mlflow ui --backend-store-uri`` serves it under its own address)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return run_id


def ci95_halfwidth(sd: float, n: int) -> float:
    """Half-width of the 95% confidence interval of a mean of ``n`` values of standard deviation ``sd``
    (Student's t, n - 1 degrees of freedom); NaN below three values, where it is too wide to mean much."""
    if n < 3 or math.isnan(sd):
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def _param(params: Mapping[str, str], key: str) -> str | None:
    """A param as recorded, None where absent or recorded as None."""
    value = params.get(key)
    return None if value in (None, "", "None", "null") else value


def _budget(params: Mapping[str, str]) -> str:
    """Epochs x steps x batch and crop, with the images or seconds budget where the run had one."""
    steps = _param(params, "cfg.steps_per_epoch")
    text = (
        f"{params.get('cfg.epochs', '?')} epochs x {f'{steps} steps' if steps else 'one pass'} x batch "
        f"{params.get('cfg.batch_size', '?')}, crop {params.get('cfg.crop', '?')}"
    )
    if images := _param(params, "cfg.budget_images"):
        text += f", at most {images} images"
    if seconds := _param(params, "cfg.budget_seconds"):
        text += f", at most {seconds} s"
    return text


def _split(params: Mapping[str, str]) -> str:
    method, detail = _param(params, "split_method"), _param(params, "split_detail")
    if method is None:
        return "?"
    return f"{method} ({detail})" if detail else method


def _commit(tags: Mapping[str, str]) -> str:
    commit = tags.get("git_commit", "?")
    short = commit[:10] if commit not in ("?", "unknown") else commit
    return short + ("+dirty" if tags.get("git_dirty") == "True" else "")


def load_runs(experiment: str, tracking_uri: str) -> tuple[pd.DataFrame, list[str]]:
    """Finished, complete child runs of ``experiment`` and a line for each run left out."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():  # opening it would create an empty store: say so instead
        raise ExperimentError(
            f"no MLflow store at {db}: nothing has been recorded there; run `unet-zoo bench` or `unet-zoo "
            "train` first, or pass the --workdir (or MLFLOW_TRACKING_URI) that holds the runs"
        )
    client = open_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        close = difflib.get_close_matches(experiment, names, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ExperimentError(
            f"no MLflow experiment {experiment!r} at {tracking_uri}.{hint} Experiments there: "
            f"{', '.join(sorted(names)) or 'none'}"
        )
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
        started = datetime.fromtimestamp(run.info.start_time / 1000, UTC)
        rows.append(
            {
                "dataset": p.get("dataset_name") or p.get("cfg.dataset", "?"),  # a file: its name
                "data": describe_data(p.get("data_source"), p.get("dataset_files_fingerprint")),
                "model": p.get("cfg.model", "?"),
                "overrides": ",".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "-",
                "seed": int(p.get("cfg.seed", 0)),
                "split": _split(p),
                "recipe": _param(p, "cfg.recipe") or "-",
                "tuning": _param(p, "recipe_tuning") or "-",
                "budget": _budget(p),
                "device": run.data.tags.get("device_name", p.get("device", "?")),
                "dtype": p.get("dtype", "?"),
                "git_commit": _commit(run.data.tags),
                "date": started.date().isoformat(),
                "cost_size": p.get("cost_size", "?"),
                "cost_batch": p.get("cost_batch", "?"),
                "run_id": run.info.run_id,
                "run_link": run_link(tracking_uri, exp.experiment_id, run.info.run_id),
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
        raise ExperimentError(f"param {CLASS_NAMES_PARAM}={recorded!r} is not a JSON list of class names")
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
    """Per (dataset, data, model, overrides): ``n`` distinct seeds, ``runs`` and ``reruns`` (runs beyond
    one per seed); of each metric the mean over seeds and the standard deviation (ddof 1; 0 for a single
    seed), reruns of a seed averaged first; of the quality figures also ``_ci95``, the half-width of the
    95% interval of the mean (:func:`ci95_halfwidth`; NaN below three seeds). Ranked by mean Dice within
    each section (1 = best); ``tied``: the row's Dice interval overlaps the best row's (both of three or
    more seeds), ``placing``: the rank as shown ("=1" for the best and the rows tied with it). Per-class
    figures (where runs have them) are aggregated the same way, over the seeds that have them."""
    per_class = [*class_columns(runs, metric="dice"), *class_columns(runs, metric="iou")]
    keys = (*QUALITY_KEYS, *per_class, *COST_KEYS, "converged_epoch", "epochs")
    metrics = [k for k in keys if k in runs.columns and runs[k].notna().any()]
    quality = {*QUALITY_KEYS, *per_class}
    # one value per seed first: a seed run three times is one sample of the seed-to-seed spread
    per_seed = runs.groupby([*GROUP, "seed"], sort=False)[metrics].mean().reset_index()
    by_seed = per_seed.groupby(GROUP, sort=False)
    grouped = runs.groupby(GROUP, sort=False)
    table = by_seed.size().rename("n").to_frame()
    table["runs"] = grouped.size()
    table["reruns"] = table["runs"] - table["n"]
    for m in metrics:
        table[f"{m}_mean"] = by_seed[m].mean()
        table[f"{m}_std"] = by_seed[m].std(ddof=1).fillna(0.0)
        if m in quality:
            count = by_seed[m].count()
            table[f"{m}_ci95"] = [
                ci95_halfwidth(sd, int(k)) for sd, k in zip(table[f"{m}_std"], count, strict=True)
            ]
    for col in (*PROVENANCE, "cost_size", "cost_batch"):
        table[col] = grouped[col].agg(lambda s: JOIN.join(sorted(set(map(str, s)))))
    table["run_ids"] = grouped["run_id"].agg(lambda s: ",".join(sorted(s)))
    table["run_links"] = grouped[["run_id", "run_link"]].apply(
        lambda g: ",".join(g.sort_values("run_id")["run_link"])
    )
    table = table.reset_index()
    table["rank"] = table.groupby(SECTION)["dice_mean"].rank(ascending=False, method="min").astype(int)
    table["tied"] = False
    for _, part in table.groupby(SECTION):
        table.loc[part.index, "tied"] = _tied_with_best(part)
    best_tied = table.groupby(SECTION)["tied"].transform("any") & (table["rank"] == 1)
    table["placing"] = [
        "=1" if tied or shared else str(rank)
        for tied, shared, rank in zip(table["tied"], best_tied, table["rank"], strict=True)
    ]
    return table.sort_values([*SECTION, "rank", "model"]).reset_index(drop=True)


def _tied_with_best(part: pd.DataFrame) -> pd.Series:
    """True for the rows of one section whose Dice interval overlaps the best row's (not the best row
    itself); no row is tied with a best row of fewer than three seeds, which has no interval."""
    best = part.loc[part["dice_mean"].idxmax()]
    half = part["dice_ci95"] if "dice_ci95" in part else pd.Series(math.nan, index=part.index)
    best_half = half[best.name]
    if math.isnan(best_half):
        return pd.Series(False, index=part.index)
    overlaps = (part["dice_mean"] + half >= best["dice_mean"] - best_half) & half.notna()
    return overlaps & (part.index != best.name)


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
        raise ExperimentError(
            f"experiment {experiment!r} has no finished, complete runs to rank; left out: {excluded}. Let "
            "its runs finish (or run the suite again), then report"
        )
    table = aggregate(runs)
    table["pareto"] = False
    for _, part in table.groupby(SECTION):
        table.loc[part.index, "pareto"] = pareto_front(part["dice_mean"], part["infer_images_per_s_mean"])
    return Leaderboard(runs, table, excluded)


COMPARED = ("data", "n", "dice_mean", "dice_std", "dice_ci95", "infer_images_per_s_mean")


def compare(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Two boards' tables side by side per (dataset, model, overrides): of each, :data:`COMPARED` with
    the suffix ``_a`` (``first``) or ``_b``; ``dice_change`` = B - A of the mean Dice and
    ``infer_change`` = B - A of the mean inference images/s (NaN where one board lacks the row);
    ``same_data``: both rows are on the same data. A row in one board only is kept, its other side
    empty. Where a board has a dataset on several data sources, each of its rows meets each of the
    other's."""
    keys = ["dataset", "model", "overrides"]
    cols = [c for c in COMPARED if c in first.columns or c in second.columns]
    a = first.reindex(columns=[*keys, *cols])
    b = second.reindex(columns=[*keys, *cols])
    both = a.merge(b, on=keys, how="outer", suffixes=("_a", "_b"))
    both["dice_change"] = both["dice_mean_b"] - both["dice_mean_a"]
    both["infer_change"] = both["infer_images_per_s_mean_b"] - both["infer_images_per_s_mean_a"]
    both["same_data"] = both["data_a"] == both["data_b"]
    return both.sort_values([*keys]).reset_index(drop=True)

"""Export a tuning experiment's trials from MLflow to one CSV row per trial, for tracing quoted numbers.

    python benchmarks/summarize_studies.py --experiment tune-tuned-cpu [--workdir runs]

Writes ``benchmarks/results/<experiment>-trials-<machine>.csv``: study, model, dataset, trial, state
("complete", "pruned", "failed", "killed"), the best validation Dice of its curve, the epochs it trained,
the searched values as its run recorded them (``cfg.*``), its minutes and run id; and prints one line per
study (trials by state, best Dice, hours of wall clock).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from _common import benchmark_parser

from zoo.harness.tracking import default_tracking_uri, open_client
from zoo.machine import machine_slug

_STATES = {"FINISHED": "complete", "FAILED": "failed"}


def _state(status: str, stopped: str | None) -> str:
    if status == "KILLED":
        return "pruned" if stopped == "pruned" else "killed"
    return _STATES.get(status, status.lower())


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--experiment", default="tune-tuned-cpu")
    parser.add_argument("--workdir", default="runs")
    args = parser.parse_args(argv)
    client = open_client(default_tracking_uri(args.workdir))
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        print(f"no experiment {args.experiment!r}", file=sys.stderr)
        return 1
    rows = []
    for study in client.search_runs([exp.experiment_id], "tags.`zoo.kind` = 'study'", max_results=1000):
        searched = [s.split(" in ")[0] for s in study.data.params.get("searched", "").split("; ") if s]
        query = f"tags.mlflow.parentRunId = '{study.info.run_id}'"
        for trial in client.search_runs([exp.experiment_id], query, max_results=10_000):
            p = trial.data.params
            curve = [m.value for m in client.get_metric_history(trial.info.run_id, "val_dice")]
            overrides = json.loads(p.get("cfg.overrides", "{}"))
            augment = json.loads(p.get("cfg.augment", "{}"))
            values = {}
            for key in searched:
                table, dot, name = key.partition(".")
                source = {"overrides": overrides, "augment": augment}.get(table, {}) if dot else None
                values[key] = source.get(name) if source is not None else p.get(f"cfg.{key}")
            end = trial.info.end_time or trial.info.start_time
            rows.append(
                {
                    "study": study.data.params.get("study"),
                    "model": p.get("cfg.model"),
                    "dataset": study.data.params.get("dataset"),
                    "trial": int(trial.data.tags.get("zoo.trial", -1)),
                    "state": _state(trial.info.status, trial.data.tags.get("zoo.stopped")),
                    "best_val_dice": max(curve) if curve else None,
                    "epochs": len(curve),
                    **values,
                    "budget": study.data.params.get("budget"),
                    "minutes": (end - trial.info.start_time) / 60_000,
                    "run_id": trial.info.run_id,
                }
            )
    if not rows:
        print(f"no trials in {args.experiment!r}", file=sys.stderr)
        return 1
    table = pd.DataFrame(rows).sort_values(["dataset", "model", "trial"])
    for study, part in table.groupby("study", sort=True):
        counts = part["state"].value_counts().to_dict()
        done = part[part["state"] == "complete"]
        best = f"{done['best_val_dice'].max():.4f}" if len(done) else "-"
        print(f"{study}: {counts}, best Dice {best}, {part['minutes'].sum() / 60:.2f} h of trials")
    out = Path(args.out) / f"{args.experiment}-trials-{machine_slug()}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.6g")
    print(f"written {out} ({len(table)} trials)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

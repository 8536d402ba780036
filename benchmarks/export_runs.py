"""Export a suite experiment's finished runs from MLflow to one CSV row per run, for tracing quoted numbers.

    python benchmarks/export_runs.py --experiment suite-tuned-cpu [--workdir runs]

Writes ``benchmarks/results/<experiment>-runs-<machine>.csv``: the rows the leaderboard aggregates
(:func:`zoo.report.leaderboard.load_runs`: model, dataset, seed, recipe, budget, device, the quality and
cost metrics, the convergence epoch, run id), so that a seed's figures survive a lost MLflow store; and
prints each model and dataset's seeds with their mean Dice.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import benchmark_parser

from zoo.harness.tracking import default_tracking_uri
from zoo.machine import machine_slug
from zoo.report.leaderboard import load_runs


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--experiment", default="suite-tuned-cpu")
    parser.add_argument("--workdir", default="runs")
    args = parser.parse_args(argv)
    runs, excluded = load_runs(args.experiment, default_tracking_uri(args.workdir))
    for line in excluded:
        print(f"left out: {line}", file=sys.stderr)
    runs = runs.drop(columns=["run_link"]).sort_values(["dataset", "model", "seed"])
    out = Path(args.out) / f"{args.experiment}-runs-{machine_slug()}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out, index=False)
    for (dataset, model), part in runs.groupby(["dataset", "model"]):
        seeds = ", ".join(f"s{s} {d:.4f}" for s, d in zip(part["seed"], part["dice"], strict=True))
        print(f"{dataset:<11} {model:<24} {len(part)} runs, mean Dice {part['dice'].mean():.4f} ({seeds})")
    print(f"written {out} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

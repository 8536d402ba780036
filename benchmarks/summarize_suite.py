"""Export a suite's included runs from MLflow to one CSV row per run, for tracing quoted numbers.

    python benchmarks/summarize_suite.py --experiment suite-cpu [--workdir runs]

Writes ``benchmarks/results/<experiment>-runs-<machine>.csv`` (model, overrides, dataset, seed, device,
dtype, cost conditions, quality and cost metrics, run id). Which runs count, and the aggregated
leaderboard, come from ``zoo.report`` (``unet-zoo report``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import benchmark_parser

from zoo.harness.tracking import default_tracking_uri
from zoo.machine import machine_slug
from zoo.report import load_runs


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--experiment", default="suite-cpu")
    parser.add_argument("--workdir", default="runs")
    args = parser.parse_args(argv)
    runs, excluded = load_runs(args.experiment, default_tracking_uri(args.workdir))
    for line in excluded:
        print(f"left out: {line}", file=sys.stderr)
    runs = runs.sort_values(["dataset", "model", "seed"])
    out = Path(args.out) / f"{args.experiment}-runs-{machine_slug()}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out, index=False, float_format="%.6g")
    print(f"written {out} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

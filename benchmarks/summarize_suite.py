"""Export a suite's finished runs from MLflow to CSV and print them aggregated over seeds (Markdown).

    python benchmarks/summarize_suite.py --experiment suite-cpu [--workdir runs]

Writes ``benchmarks/results/<experiment>-runs-<machine>.csv`` (one row per run: model, dataset, seed,
quality, cost, run id) so the numbers quoted in notes and README can be traced to their runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow
import pandas as pd

from zoo.harness.tracking import default_tracking_uri
from zoo.machine import machine_slug

QUALITY = ["dice", "iou", "pixel_error", "rand_error"]
COST = ["params", "gflops", "train_images_per_s", "infer_images_per_s", "latency_ms", "peak_memory_mb"]


def markdown(table: pd.DataFrame) -> str:
    header = [table.index.name or "", *map(str, table.columns)]
    rows = [[str(i), *map(str, r)] for i, r in zip(table.index, table.itertuples(index=False), strict=True)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="suite-cpu")
    parser.add_argument("--workdir", default="runs")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    mlflow.set_tracking_uri(default_tracking_uri(args.workdir))
    frame = mlflow.search_runs(experiment_names=[args.experiment], filter_string="tags.`zoo.kind` = 'run'")
    finished = frame[frame["status"] == "FINISHED"]
    if len(finished) < len(frame):
        print(f"left out {len(frame) - len(finished)} run(s) not FINISHED", file=sys.stderr)
    cols = {
        "params.cfg.model": "model",
        "params.cfg.dataset": "dataset",
        "params.cfg.seed": "seed",
        "params.cfg.overrides": "overrides",
        "params.train_input_size": "crop",
        "params.dtype": "dtype",
        "params.cost_batch": "cost_batch",
        "params.cost_size": "cost_size",
        "run_id": "run_id",
    }
    cols.update({f"metrics.{k}": k for k in [*QUALITY, *COST, "best_epoch"]})
    runs = finished[[c for c in cols if c in finished.columns]].rename(columns=cols)
    runs = runs.sort_values(["dataset", "model", "seed"])
    out = Path(args.out) / f"{args.experiment}-runs-{machine_slug()}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out, index=False, float_format="%.6g")
    print(f"written {out} ({len(runs)} runs)\n")
    metrics = [m for m in [*QUALITY, "train_images_per_s", "infer_images_per_s"] if m in runs.columns]
    for dataset, part in runs.groupby("dataset"):
        grouped = part.groupby("model")
        table = pd.DataFrame({"n": grouped.size()})
        for m in metrics:
            if part[m].notna().any():
                mean, std = grouped[m].mean(), grouped[m].std(ddof=1)
                table[m] = [
                    f"{a:.4f} ± {b:.4f}" if m in QUALITY else f"{a:.1f} ± {b:.1f}"
                    for a, b in zip(mean, std.fillna(0), strict=True)
                ]
        table["params (M)"] = (grouped["params"].first() / 1e6).map("{:.2f}".format)
        table = table.sort_values("dice", ascending=False)
        print(f"### {dataset}\n")
        print(markdown(table))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

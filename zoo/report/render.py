"""Leaderboard files: Markdown, CSV, and one self-contained HTML page (sortable table, embedded plots).

Nothing in the page needs the network: plots are PNGs inlined as data URIs, the sorting script is
inline.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import pandas as pd
from PIL import Image

from zoo.metrics import PAPER_FIGURES, REDUCTION, split_class_key
from zoo.report.leaderboard import CONVERGED_WITHIN, Leaderboard, class_columns

__all__ = ["write_report"]

COLUMNS = [
    ("rank", "rank", "{}"), ("model", "model", "{}"), ("overrides", "overrides", "{}"), ("n", "seeds", "{}"),
    ("dice", "Dice", "q"), ("iou", "IoU", "q"), ("misclassified", "misclassified", "q"),
    ("pixel_error", "pixel error (ISBI)", "q"), ("rand_error", "Rand error (ISBI)", "q"),
    ("vrand", "V_Rand", "q"), ("vinfo", "V_Info", "q"), ("converged_epoch", "converged at epoch", "conv"),
    ("params", "params (M)", "m"), ("gflops", "GFLOPs", "f1"), ("train_images_per_s", "train img/s", "f1"),
    ("infer_images_per_s", "infer img/s", "f1"), ("latency_ms", "latency ms", "f1"),
    ("peak_memory_mb", "peak MB", "f0"), ("device", "device", "{}"), ("dtype", "dtype", "{}"),
    ("run_ids", "runs", "ids"),
]  # fmt: skip


def _cell(row: pd.Series, key: str, fmt: str) -> str:
    if fmt == "{}":
        return str(row[key])
    if fmt == "ids":
        return " ".join(r[:8] for r in str(row[key]).split(","))
    mean = row.get(f"{key}_mean")
    if mean is None or pd.isna(mean):
        return "-"
    std = row.get(f"{key}_std", 0.0)
    if fmt == "q":
        return f"{mean:.4f} ± {std:.4f}"
    if fmt == "conv":  # mean over seeds of (first epoch within CONVERGED_WITHIN of the best) / epochs run
        return f"{mean + 1:.0f} of {row['epochs_mean']:.0f}"
    if fmt == "m":
        return f"{mean / 1e6:.2f}"
    digits = int(fmt[1:])
    return f"{mean:.{digits}f}"


def _columns(part: pd.DataFrame) -> list[tuple[str, str, str]]:
    """:data:`COLUMNS` with a Dice column per class after the mean Dice, for the classes the table has."""
    per_class = [
        (k, f"Dice {split[1]}", "q")
        for k in class_columns(part, metric="dice", suffix="_mean")
        if (split := split_class_key(k)) is not None
    ]
    out = []
    for column in COLUMNS:
        out.append(column)
        if column[0] == "dice":
            out += per_class
    return out


def _rows(part: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    cols = [
        (k, label, fmt)
        for k, label, fmt in _columns(part)
        if fmt in ("{}", "ids") or f"{k}_mean" in part.columns
    ]
    # the ISBI figures are absent on other datasets, and the per-class figures on binary ones: no column
    # of dashes for them
    cols = [c for c in cols if c[2] != "q" or not part[f"{c[0]}_mean"].isna().all()]
    header = [label for _, label, _ in cols]
    rows = [
        [_cell(row, k, fmt) + (" ★" if k == "model" and row["pareto"] else "") for k, _, fmt in cols]
        for _, row in part.iterrows()
    ]
    return header, rows


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def pareto_plot(board: Leaderboard, dataset: str, path: Path | None = None) -> str:
    """Mean Dice against inference images/s, seeds' spread as error bars, the Pareto front joined."""
    part = board.table[board.table["dataset"] == dataset]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.errorbar(part["infer_images_per_s_mean"], part["dice_mean"], yerr=part["dice_std"], fmt="o", capsize=3)
    for _, r in part.iterrows():
        ax.annotate(
            r["model"],
            (r["infer_images_per_s_mean"], r["dice_mean"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    front = part[part["pareto"]].sort_values("infer_images_per_s_mean")
    ax.plot(front["infer_images_per_s_mean"], front["dice_mean"], "--", color="tab:red", label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("inference images/s (log scale)")
    ax.set_ylabel("Dice (mean over seeds)")
    ax.set_title(f"{dataset}: quality against throughput")
    ax.legend(loc="lower left")
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return _png(fig)


def curves_plot(board: Leaderboard, dataset: str, tracking_uri: str) -> str:
    """Validation Dice per epoch, mean over seeds, one line per model."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (model, _), part in board.runs[board.runs["dataset"] == dataset].groupby(["model", "overrides"]):
        series = [
            pd.Series({m.step: m.value for m in client.get_metric_history(r, "val_dice")})
            for r in part["run_id"]
        ]
        mean = pd.concat(series, axis=1).mean(axis=1).sort_index()
        ax.plot(mean.index, mean.to_numpy(), marker=".", label=model)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Dice")
    ax.set_title(f"{dataset}: validation curves")
    ax.legend(fontsize=7)
    return _png(fig)


def overlay_images(board: Leaderboard, dataset: str, tracking_uri: str) -> dict[str, str]:
    """One sample overlay (image | truth | prediction) per model, from the first seed's run artifacts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    out: dict[str, str] = {}
    with _quiet_downloads():
        for model, part in board.runs[board.runs["dataset"] == dataset].groupby("model"):
            _add_overlay(client, str(model), part, out)
    return out


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No MLflow progress bar per small artifact (one line each in a bench log), unless a user asked."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _add_overlay(client: Any, model: str, part: pd.DataFrame, out: dict[str, str]) -> None:
    run_id = part.sort_values("seed")["run_id"].iloc[0]
    files = [a.path for a in client.list_artifacts(run_id, "overlays")]
    if not files:
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(run_id, sorted(files)[0], tmp))
        with Image.open(local) as im:
            small = im.convert("RGB")
            small.thumbnail((540, 540))  # a page of thumbnails, not of full-size panels
            buf = io.BytesIO()
            small.save(buf, format="JPEG", quality=82)
        out[model] = base64.b64encode(buf.getvalue()).decode()


_SORT_JS = """
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  document.body.dataset.rows = document.querySelectorAll('table.board tbody tr').length;
  document.body.dataset.images = imgs.length;
  document.body.dataset.imagesRendered = imgs.filter(function (i) { return i.naturalWidth > 0; }).length;
});
document.querySelectorAll('table.board').forEach(function (t) {
  t.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = t.tBodies[0], rows = Array.from(body.rows), asc = th.dataset.asc !== '1';
      var key = function (r) { var v = r.cells[col].textContent.split(' ')[0]; var n = parseFloat(v);
                               return isNaN(n) ? v : n; };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
      th.dataset.asc = asc ? '1' : '0';
    });
  });
});
"""


def _paper_line(dataset: str) -> str:
    figures = PAPER_FIGURES.get(dataset)
    if not figures:
        return ""
    listed = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in figures.items())
    return (
        f"Beside: the U-Net paper's figures (Ronneberger et al. 2015, Table 1), {listed}, scored by the "
        "challenge on its test volume; the rows above are on this project's validation split."
    )


def write_report(
    board: Leaderboard, out: str | Path, *, experiment: str, tracking_uri: str
) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.html`` and ``pareto-<dataset>.png``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": folder / "leaderboard.csv",
        "md": folder / "leaderboard.md",
        "html": folder / "leaderboard.html",
    }
    board.table.to_csv(paths["csv"], index=False, float_format="%.6g")
    note = (
        f"Experiment `{experiment}`; {len(board.runs)} runs. Quality: {REDUCTION}; mean ± standard deviation "
        "over seeds. ★ = on the Pareto front of Dice against inference images/s. Throughput at the stated "
        "size and batch (columns cost_size, cost_batch in the CSV). Converged at epoch: the first epoch "
        f"whose validation Dice came within {CONVERGED_WITHIN} of the run's best (mean over seeds, counted "
        "from 1), of the epochs run; near the last epoch, the run was still improving and its rank is one "
        "of speed of learning, not of converged quality."
    )
    md = ["# Leaderboard", "", note, ""]
    body = []
    for dataset in sorted(board.table["dataset"].unique()):
        part = board.table[board.table["dataset"] == dataset]
        header, rows = _rows(part)
        md += [f"## {dataset}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        reference = _paper_line(dataset)
        if reference:
            md += ["", reference]
        png = folder / f"pareto-{dataset}.png"
        pareto_b64 = pareto_plot(board, dataset, png)
        paths[f"pareto-{dataset}"] = png
        md += ["", f"![Dice against throughput, {dataset}]({png.name})", ""]
        curves = curves_plot(board, dataset, tracking_uri)
        overlays = overlay_images(board, dataset, tracking_uri)
        table_html = "<table class='board'><thead><tr>" + "".join(
            f"<th>{html.escape(h)}</th>" for h in header
        )
        table_html += (
            "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</tbody></table>"
        )
        figs = "".join(
            f"<figure><img alt='{html.escape(alt)}' src='data:image/png;base64,{b64}'><figcaption>"
            f"{html.escape(alt)}</figcaption></figure>"
            for alt, b64 in [(f"Pareto: {dataset}", pareto_b64), (f"validation curves: {dataset}", curves)]
        )
        figs += "".join(
            f"<figure><img alt='overlay {html.escape(m)}' src='data:image/jpeg;base64,{b64}'>"
            f"<figcaption>{html.escape(m)}: image | truth | prediction</figcaption></figure>"
            for m, b64 in overlays.items()
        )
        paper = f"<p>{html.escape(reference)}</p>" if reference else ""
        body.append(f"<h2>{html.escape(dataset)}</h2>{table_html}{paper}<div class='figs'>{figs}</div>")
    if board.excluded:
        md += ["## Left out", ""] + [f"- {line}" for line in board.excluded]
        body.append(
            "<h2>Left out</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in board.excluded) + "</ul>"
        )
    paths["md"].write_text("\n".join(md) + "\n")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>unet-zoo leaderboard</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
        "padding:3px 6px;font-size:13px}th{cursor:pointer;background:#eee}"
        "figure{display:inline-block;margin:8px}"
        "img{max-width:560px}</style></head><body><h1>unet-zoo leaderboard</h1>"
        f"<p>{html.escape(note)}</p>{''.join(body)}<script>{_SORT_JS}</script></body></html>"
    )
    paths["html"].write_text(page)
    return paths

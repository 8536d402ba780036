"""Leaderboard files: Markdown, CSV, and one self-contained HTML page (sortable table, embedded plots).

Nothing in the page needs the network: plots are PNGs inlined as data URIs, the sorting script is
inline (links to runs on an MLflow server are links, not resources the page loads). The HTML page says
everything the Markdown says: both are written from the same lines and cells.

A report folder records which experiment it holds (:data:`MARKER`); writing another experiment's report
over it is refused unless forced, so that regenerating one board never replaces another by surprise.

Names in the runs (models, overrides, datasets, data paths, devices, experiments) are data, not markup:
the page escapes them as HTML, the Markdown as Markdown (:func:`md_text`), so that a name holding
``<img onerror=...>``, ``[x](javascript:...)``, ``|`` or a newline shows as written and never splits a
table row. Every file is written as UTF-8 (the reports hold ★, ± and ≠ whatever the locale); a file
that cannot be written is a :class:`ReportWriteError` naming it and the reason.
"""

from __future__ import annotations

import base64
import errno
import html
import io
import json
import logging
import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import pandas as pd
from PIL import Image

from zoo.errors import ZooError
from zoo.metrics import PAPER_FIGURES, REDUCTION, split_class_key
from zoo.report.leaderboard import (
    CONVERGED_WITHIN,
    PROVENANCE,
    SECTION,
    SYNTHETIC_PREFIX,
    Leaderboard,
    class_columns,
    compare,
)

__all__ = [
    "MARKER",
    "ReportFolderError",
    "ReportWriteError",
    "check_folder",
    "md_code",
    "md_text",
    "write_comparison",
    "write_report",
]

log = logging.getLogger(__name__)

MARKER = "report.json"
"""Beside the report files: ``{"experiment": NAME, "files": [the files the report wrote]}``."""

REPORT_FILES = ("leaderboard.md", "leaderboard.html", "leaderboard.csv", MARKER)


class ReportFolderError(ZooError, ValueError):
    """The output folder holds another experiment's report (or a report of unknown origin), or is not a
    folder."""


class ReportWriteError(ZooError, OSError):
    """A report file could not be written (a full disk, no permission): the message names it and why."""


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` (a report file, or the folder) into a
    :class:`ReportWriteError` naming the file and the reason."""
    try:
        yield
    except OSError as err:
        elsewhere = "write the report elsewhere (--out FOLDER)"
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = f"free some space there, or {elsewhere}"
        elif err.errno in (errno.EACCES, errno.EPERM):
            fix = f"make it writable, or {elsewhere}"
        else:
            fix = elsewhere
        raise ReportWriteError(
            f"cannot write the report: {err.filename or path}: {err.strerror or err}; {fix}"
        ) from err


def _write_text(path: Path, text: str) -> None:
    with _writing(path):
        path.write_text(text, encoding="utf-8")


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    with _writing(path):
        table.to_csv(path, index=False, float_format="%.6g", encoding="utf-8")


def _make_folder(folder: Path) -> None:
    with _writing(folder):
        folder.mkdir(parents=True, exist_ok=True)


# CommonMark lets a backslash escape any ASCII punctuation; these are the characters that can start
# markup in a name: links and images, code, emphasis, strikethrough, table cells. '_' only where it can
# open or close emphasis (not inside a word: unet_bn stays as it is). '&', '<' and '>' become entities,
# as in the page: raw HTML in Markdown is HTML.
_MD_SPECIAL = re.compile(r"[\\`*\[\]|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_text(text: str) -> str:
    """``text`` as Markdown that shows it as written, on one line: HTML and Markdown markup escaped,
    newlines (which would end a table row or a paragraph) as spaces."""
    one_line = " ".join(text.splitlines())
    escaped = html.escape(one_line, quote=False)
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), escaped)


def md_code(text: str) -> str:
    """``text`` as a Markdown code span (shown as written; no escape works inside one), on one line and
    fenced by more backticks than it holds in a row. Not for table cells: a '|' there still splits."""
    one_line = " ".join(text.splitlines())
    fence = "`" * (max((len(run) for run in re.findall("`+", one_line)), default=0) + 1)
    pad = " " if one_line.startswith("`") or one_line.endswith("`") else ""
    return f"{fence}{pad}{one_line}{pad}{fence}"


class Link(NamedTuple):
    text: str
    href: str | None  # None: the text alone (a run in a local store has no page to link to)


Cell = str | list[Link]

COLUMNS = [
    ("placing", "rank", "{}"), ("model", "model", "{}"), ("overrides", "overrides", "{}"),
    ("n", "seeds", "seeds"),
    ("dice", "Dice", "q"), ("iou", "IoU", "q"), ("misclassified", "misclassified", "q"),
    ("pixel_error", "pixel error (ISBI)", "q"), ("rand_error", "Rand error (ISBI)", "q"),
    ("vrand", "V_Rand", "q"), ("vinfo", "V_Info", "q"), ("converged_epoch", "converged at epoch", "conv"),
    ("params", "params (M)", "m"), ("gflops", "GFLOPs", "f1"), ("train_images_per_s", "train img/s", "f1"),
    ("infer_images_per_s", "infer img/s", "f1"), ("latency_ms", "latency ms", "f1"),
    ("peak_memory_mb", "peak MB", "f0"), ("run_links", "runs", "links"),
]  # fmt: skip


def _cell(row: pd.Series, key: str, fmt: str) -> Cell:
    if fmt == "{}":
        return str(row[key])
    if fmt == "seeds":
        n, runs = int(row["n"]), int(row["runs"])
        return str(n) if runs == n else f"{n} seed{'s' if n > 1 else ''}, {runs} runs"
    if fmt == "links":
        return [
            Link(run_id[:8], link if link != run_id else None)
            for run_id, link in zip(str(row["run_ids"]).split(","), str(row[key]).split(","), strict=True)
        ]
    mean = row.get(f"{key}_mean")
    if mean is None or pd.isna(mean):
        return "-"
    std = row.get(f"{key}_std", 0.0)
    if fmt == "q":
        return _spread(mean, std, int(row["n"]), row.get(f"{key}_ci95"))
    if fmt == "conv":  # mean over seeds of (first epoch within CONVERGED_WITHIN of the best) / epochs run
        return f"{mean + 1:.0f} of {row['epochs_mean']:.0f}"
    if fmt == "m":
        return f"{mean / 1e6:.2f}"
    digits = int(fmt[1:])
    return f"{mean:.{digits}f}"


def _spread(mean: float, sd: float, n: int, half: float | None) -> str:
    """One seed: the value alone (there is no spread to show); two: mean ± sd; three or more, also the
    95% interval of the mean."""
    if n < 2:
        return f"{mean:.4f}"
    text = f"{mean:.4f} ± {sd:.4f}"
    if half is not None and not pd.isna(half):
        text += f" (95% CI {mean - half:.4f}–{mean + half:.4f})"
    return text


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


def _rows(part: pd.DataFrame, varying: list[str]) -> tuple[list[str], list[list[Cell]]]:
    """The section's table; ``varying``: the provenance columns whose value differs between its rows,
    shown per row before the runs (the others are said once above the table)."""
    cols = [
        (k, label, fmt)
        for k, label, fmt in _columns(part)
        if fmt in ("{}", "seeds", "links") or f"{k}_mean" in part.columns
    ]
    # the ISBI figures are absent on other datasets, and the per-class figures on binary ones: no column
    # of dashes for them
    cols = [c for c in cols if c[2] != "q" or not part[f"{c[0]}_mean"].isna().all()]
    cols[-1:-1] = [(k, PROVENANCE[k], "{}") for k in varying]
    header = [label for _, label, _ in cols]
    rows = [
        [_mark(_cell(row, k, fmt), k == "model" and bool(row["pareto"])) for k, _, fmt in cols]
        for _, row in part.iterrows()
    ]
    return header, rows


def _mark(cell: Cell, pareto: bool) -> Cell:
    return f"{cell} ★" if pareto and isinstance(cell, str) else cell


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, str):
        return md_text(cell)
    return " ".join(f"[{md_text(c.text)}]({_md_href(c.href)})" if c.href else md_text(c.text) for c in cell)


def _md_href(href: str) -> str:
    """A link target that cannot end the link early or leave the cell: spaces, parentheses, '<', '>',
    '|' and backslashes percent-encoded."""
    return urllib.parse.quote(href, safe=":/?#[]@!$&'*+,;=%~-._")


def _html_cell(cell: Cell) -> str:
    if isinstance(cell, str):
        return html.escape(cell)
    return " ".join(
        f"<a href='{html.escape(c.href)}'>{html.escape(c.text)}</a>" if c.href else html.escape(c.text)
        for c in cell
    )


@dataclass(frozen=True)
class _Section:
    """One dataset on one data source: its rows, runs, and the name its plot files carry."""

    dataset: str
    data: str
    table: pd.DataFrame
    runs: pd.DataFrame
    slug: str

    @property
    def title(self) -> str:
        return f"{self.dataset}: {self.data}"

    @property
    def synthetic(self) -> bool:
        return self.data.startswith(SYNTHETIC_PREFIX)


def _sections(board: Leaderboard) -> list[_Section]:
    keys = sorted(board.table.groupby(SECTION).groups)
    sources: dict[str, int] = {}
    for dataset, _ in keys:
        sources[dataset] = sources.get(dataset, 0) + 1
    out, used = [], set()
    for dataset, data in keys:
        kind = "synthetic" if str(data).startswith(SYNTHETIC_PREFIX) else "other"
        # the plain dataset name where it has one data source (the file names reports have had); else
        # the kind of data, numbered where that is not enough (two twins, two real folders)
        base = _file_safe(str(dataset) if sources[dataset] == 1 else f"{dataset}-{kind}")
        slug, k = base, 1
        while slug in used:
            k += 1
            slug = f"{base}-{k}"
        used.add(slug)
        table = board.table[(board.table["dataset"] == dataset) & (board.table["data"] == data)]
        runs = board.runs[(board.runs["dataset"] == dataset) & (board.runs["data"] == data)]
        out.append(_Section(str(dataset), str(data), table, runs, slug))
    return out


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _provenance(section: _Section) -> tuple[list[str], list[str]]:
    """Lines of what the whole section shares, and the provenance columns that differ between rows (a
    fact no row has, such as the tuning of hand-made recipes, "-" everywhere, is not said)."""
    shared, varying = [], []
    for key, label in PROVENANCE.items():
        values = set(section.table[key])
        if values == {"-"} and key == "tuning":
            continue
        if len(values) == 1:
            shared.append(f"{label}: {values.pop()}")
        else:
            varying.append(key)
    return shared, varying


def _section_notes(section: _Section) -> list[str]:
    """What a reader must know before comparing the section's rows: the data, its provenance, and what
    its spreads and ties rest on."""
    data = (
        f"Data: {section.data}. These are generated images standing in for {section.dataset}, not the "
        "real dataset: the figures say how the models compare on them, not how they do on the real data."
        if section.synthetic
        else f"Data: {section.data}."
    )
    shared, _ = _provenance(section)
    notes = [data]
    if shared:
        notes.append("All rows: " + "; ".join(shared) + ".")
    n = section.table["n"]
    if (n == 1).all():
        notes.append("One seed per row: no spread is shown, and no difference here is known to be real.")
    elif (n == 1).any():
        notes.append("Rows of one seed show their value alone: one seed has no spread.")
    if (n < 3).any():
        notes.append(
            "Rows of fewer than three seeds have no confidence interval and are never called tied (=1)."
        )
    if (section.table["reruns"] > 0).any():
        notes.append("Reruns of one seed are averaged into one value of that seed; n counts seeds.")
    return notes


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def pareto_plot(section: _Section, path: Path | None = None) -> str:
    """Mean Dice against inference images/s, seeds' spread as error bars, the Pareto front joined."""
    part = section.table
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
    ax.set_title(
        f"{section.dataset}{' (synthetic twin)' if section.synthetic else ''}: quality against throughput"
    )
    ax.legend(loc="lower left")
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return _png(fig)


def curves_plot(section: _Section, tracking_uri: str) -> str:
    """Validation Dice per epoch, mean over seeds, one line per model."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (model, _), part in section.runs.groupby(["model", "overrides"]):
        series = [
            pd.Series({m.step: m.value for m in client.get_metric_history(r, "val_dice")})
            for r in part["run_id"]
        ]
        mean = pd.concat(series, axis=1).mean(axis=1).sort_index()
        ax.plot(mean.index, mean.to_numpy(), marker=".", label=model)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Dice")
    ax.set_title(f"{section.dataset}{' (synthetic twin)' if section.synthetic else ''}: validation curves")
    ax.legend(fontsize=7)
    return _png(fig)


def overlay_images(section: _Section, tracking_uri: str) -> dict[str, str]:
    """One sample overlay (image | truth | prediction) per model, from the first seed's run artifacts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    out: dict[str, str] = {}
    with _quiet_downloads():
        for model, part in section.runs.groupby("model"):
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


def _paper_line(section: _Section) -> str:
    figures = PAPER_FIGURES.get(section.dataset)
    if not figures:
        return ""
    listed = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in figures.items())
    ours = (
        "a synthetic twin's validation split: not comparable with them"
        if section.synthetic
        else "this project's validation split"
    )
    return (
        f"Beside: the U-Net paper's figures (Ronneberger et al. 2015, Table 1), {listed}, scored by the "
        f"challenge on its test volume; the rows above are on {ours}."
    )


def check_folder(folder: Path, experiment: str, *, force: bool = False) -> None:
    """Refuse to write ``experiment``'s report into a folder holding another experiment's report (or a
    report that does not say whose it is) unless ``force``; the same experiment's report is replaced."""
    if folder.exists() and not folder.is_dir():  # --force replaces a report, never a file
        what = "a file" if folder.is_file() else "not a folder (a device, a pipe or a socket)"
        raise ReportFolderError(
            f"{folder} is {what}; a report is a folder of files: give --out a folder (one that does not "
            "exist yet is created)"
        )
    if force or not folder.is_dir():
        return
    marker = folder / MARKER
    if marker.is_file():
        try:
            held = json.loads(marker.read_text(encoding="utf-8")).get("experiment")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            held = None
        if held == experiment:
            return
        what = f"the report of experiment {held!r}" if held else f"a report whose {MARKER} is unreadable"
    elif any((folder / name).exists() for name in REPORT_FILES):
        what = f"a report that does not say its experiment (no {MARKER})"
    else:
        return
    raise ReportFolderError(
        f"{folder} holds {what}; not replacing it with experiment {experiment!r}'s. Write elsewhere "
        "(--out; the default is WORKDIR/reports/EXPERIMENT) or replace it with --force"
    )


def write_report(
    board: Leaderboard, out: str | Path, *, experiment: str, tracking_uri: str, force: bool = False
) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.html``, ``pareto-<section>.png`` and
    :data:`MARKER`; a folder holding another experiment's report is refused unless ``force``
    (:func:`check_folder`), and files the folder's previous report wrote and this one does not are
    removed."""
    folder = Path(out)
    check_folder(folder, experiment, force=force)
    previous = _previous_files(folder)
    _make_folder(folder)
    paths = {
        "csv": folder / "leaderboard.csv",
        "md": folder / "leaderboard.md",
        "html": folder / "leaderboard.html",
    }
    _write_csv(board.table, paths["csv"])
    sections = _sections(board)
    # the experiment's name said apart from the rest: a code span in the Markdown, escaped in the page
    about = (
        f"{len(board.runs)} runs. Quality: {REDUCTION}. n (seeds) counts distinct seeds; reruns of a seed "
        "are averaged first. Cells: one seed, the value alone (no spread); two "
        "seeds, mean ± standard deviation; three or more, mean ± standard deviation and the 95% confidence "
        "interval of the mean (t-distribution). Rank =1: the row's Dice interval overlaps the best row's "
        "(tied with it); rows of fewer than three seeds have no interval and are not called tied. "
        "★ = on the Pareto front of Dice against inference images/s. Throughput at the stated "
        "size and batch (columns cost_size, cost_batch in the CSV). Converged at epoch: the first epoch "
        f"whose validation Dice came within {CONVERGED_WITHIN} of the run's best (mean over seeds, counted "
        "from 1), of the epochs run; near the last epoch, the run was still improving and its rank is one "
        "of speed of learning, not of converged quality."
    )
    note = f"Experiment `{experiment}`; {about}"
    if all(s.synthetic for s in sections):
        headline = "Every result on this page is on synthetic twins, not on the real datasets."
    elif any(s.synthetic for s in sections):
        headline = "Some sections are on synthetic twins, not on the real datasets: each section says."
    else:
        headline = "Every result on this page is on real data: each section names it."
    md = [
        "# Leaderboard",
        "",
        f"**{headline}**",
        "",
        f"Experiment {md_code(experiment)}; {md_text(about)}",
        "",
    ]
    body = [f"<p><strong>{html.escape(headline)}</strong></p><p>{html.escape(note)}</p>"]
    for section in sections:
        _, varying = _provenance(section)
        header, rows = _rows(section.table, varying)
        notes = _section_notes(section)
        md += [f"## {md_text(section.title)}", ""] + [f"{md_text(line)}  " for line in notes] + [""]
        md += ["| " + " | ".join(map(md_text, header)) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
        reference = _paper_line(section)
        if reference:
            md += ["", md_text(reference)]
        png = folder / f"pareto-{section.slug}.png"
        with _writing(png):
            pareto_b64 = pareto_plot(section, png)
        paths[f"pareto-{section.slug}"] = png
        md += ["", f"![Dice against throughput, {md_text(section.dataset)}]({_md_href(png.name)})", ""]
        curves = curves_plot(section, tracking_uri)
        overlays = overlay_images(section, tracking_uri)
        table_html = "<table class='board'><thead><tr>" + "".join(
            f"<th>{html.escape(h)}</th>" for h in header
        )
        table_html += (
            "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</tbody></table>"
        )
        figs = "".join(
            f"<figure><img alt='{html.escape(alt)}' src='data:image/png;base64,{b64}'><figcaption>"
            f"{html.escape(alt)}</figcaption></figure>"
            for alt, b64 in [
                (f"Pareto: {section.dataset}", pareto_b64),
                (f"validation curves: {section.dataset}", curves),
            ]
        )
        figs += "".join(
            f"<figure><img alt='overlay {html.escape(m)}' src='data:image/jpeg;base64,{b64}'>"
            f"<figcaption>{html.escape(m)}: image | truth | prediction</figcaption></figure>"
            for m, b64 in overlays.items()
        )
        paper = f"<p>{html.escape(reference)}</p>" if reference else ""
        notes_html = "".join(f"<p>{html.escape(line)}</p>" for line in notes)
        body.append(
            f"<h2>{html.escape(section.title)}</h2>{notes_html}{table_html}{paper}"
            f"<div class='figs'>{figs}</div>"
        )
    if board.excluded:
        md += ["## Left out", ""] + [f"- {md_text(line)}" for line in board.excluded]
        body.append(
            "<h2>Left out</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in board.excluded) + "</ul>"
        )
    _write_text(paths["md"], "\n".join(md) + "\n")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>unet-zoo leaderboard</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
        "padding:3px 6px;font-size:13px}th{cursor:pointer;background:#eee}"
        "figure{display:inline-block;margin:8px}"
        "img{max-width:560px}</style></head><body><h1>unet-zoo leaderboard</h1>"
        f"{''.join(body)}<script>{_SORT_JS}</script></body></html>"
    )
    _write_text(paths["html"], page)
    _finish_folder(folder, experiment, paths, previous)
    return paths


def _previous_files(folder: Path) -> list[str]:
    """The files the folder's previous report wrote, as its marker lists them (none without one)."""
    try:
        files = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("files", [])
    except (OSError, json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return []
    return [f for f in files if isinstance(f, str) and "/" not in f and "\\" not in f]


def _finish_folder(folder: Path, experiment: str, paths: dict[str, Path], previous: list[str]) -> None:
    written = sorted(p.name for p in paths.values())
    # a plot of a section the board no longer has would otherwise sit beside it as if current
    for name in sorted(set(previous) - set(written) - {MARKER}):
        stale = folder / name
        if stale.is_file():
            with _writing(stale):
                stale.unlink()
            log.info("removed %s: the previous report of %s wrote it, this one does not", stale, experiment)
    marker = {"experiment": experiment, "files": written}
    _write_text(folder / MARKER, json.dumps(marker, indent=1) + "\n")
    paths["marker"] = folder / MARKER


def _number(value: Any, fmt: str, *, signed: bool = False) -> str:
    if value is None or pd.isna(value):
        return "-"
    return f"{value:+{fmt}}" if signed else f"{value:{fmt}}"


def write_comparison(
    first: Leaderboard,
    second: Leaderboard,
    out: str | Path,
    *,
    experiments: tuple[str, str],
    force: bool = False,
) -> dict[str, Path]:
    """``comparison.md``, ``comparison.csv`` and ``comparison.html``: the two boards side by side per
    (dataset, model, overrides) with the change B - A in mean Dice and inference images/s
    (:func:`zoo.report.leaderboard.compare`), each side's Dice as :func:`_spread` shows it. The folder
    is claimed for "A vs B" as a report is for its experiment (:func:`check_folder`)."""
    name_a, name_b = experiments
    label = f"{name_a} vs {name_b}"
    folder = Path(out)
    check_folder(folder, label, force=force)
    previous = _previous_files(folder)
    _make_folder(folder)
    table = compare(first.table, second.table)
    paths = {
        "csv": folder / "comparison.csv",
        "md": folder / "comparison.md",
        "html": folder / "comparison.html",
    }
    _write_csv(table, paths["csv"])
    about = (
        "Dice: per-image mean over the validation "
        "split, as on each leaderboard (one seed: the value alone; two: ± sd; three or more: also the 95% "
        "confidence interval). Change = B - A of the means; a change inside either side's spread is not "
        "known to be real. A row on different data in A and B (marked ≠) is not a like-for-like comparison."
    )
    note = f"A = experiment `{name_a}`, B = experiment `{name_b}`. {about}"
    header = ["dataset", "model", "overrides", "data A", "data B", "Dice A", "Dice B", "Dice B - A"]
    header += ["infer img/s A", "infer img/s B", "img/s B - A"]
    rows = []
    for _, r in table.iterrows():
        dice = [
            _spread(r[f"dice_mean{s}"], r[f"dice_std{s}"], int(r[f"n{s}"]), r.get(f"dice_ci95{s}"))
            if not pd.isna(r[f"n{s}"])
            else "-"
            for s in ("_a", "_b")
        ]
        data_b = "-" if pd.isna(r["data_b"]) else str(r["data_b"])
        if not r["same_data"] and not pd.isna(r["data_a"]) and not pd.isna(r["data_b"]):
            data_b = f"≠ {data_b}"
        rows.append(
            [
                str(r["dataset"]),
                str(r["model"]),
                str(r["overrides"]),
                "-" if pd.isna(r["data_a"]) else str(r["data_a"]),
                data_b,
                *dice,
                _number(r["dice_change"], ".4f", signed=True),
                _number(r["infer_images_per_s_mean_a"], ".1f"),
                _number(r["infer_images_per_s_mean_b"], ".1f"),
                _number(r["infer_change"], ".1f", signed=True),
            ]
        )
    md = [
        f"# Comparison: {md_text(label)}",
        "",
        f"A = experiment {md_code(name_a)}, B = experiment {md_code(name_b)}. {md_text(about)}",
        "",
        "| " + " | ".join(map(md_text, header)) + " |",
        "|" + "---|" * len(header),
    ]
    md += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    _write_text(paths["md"], "\n".join(md) + "\n")
    table_html = (
        "<table class='board'><thead><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in header)
        + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
        + "</tbody></table>"
    )
    _write_text(
        paths["html"],
        "<!doctype html><html><head><meta charset='utf-8'><title>unet-zoo comparison</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
        "padding:3px 6px;font-size:13px}th{cursor:pointer;background:#eee}</style></head><body>"
        f"<h1>Comparison: {html.escape(label)}</h1><p>{html.escape(note)}</p>{table_html}"
        f"<script>{_SORT_JS}</script></body></html>",
    )
    _finish_folder(folder, label, paths, previous)
    return paths

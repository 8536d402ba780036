"""The leaderboard from a throwaway MLflow store of known runs: aggregates, ranks, exclusions, files."""

from __future__ import annotations

import base64
import csv
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from zoo.cli import main
from zoo.harness.tracking import COST_KEYS, Tracker
from zoo.report import build, pareto_front, write_report
from zoo.report.leaderboard import converged_epoch

from .helpers import seed_store

COST = {"params": 1e6, "gflops": 2.0, "train_images_per_s": 10.0, "latency_ms": 5.0, "peak_memory_mb": 100.0}
KNOWN = {  # (model, dataset): [(seed, dice, infer images/s)]
    ("unet_bn", "isbi2012"): [(0, 0.80, 100.0), (1, 0.84, 110.0)],
    ("unet", "isbi2012"): [(0, 0.70, 200.0), (1, 0.74, 180.0)],
    ("unet_resnet34", "isbi2012"): [(0, 0.60, 50.0), (1, 0.62, 60.0)],
    ("unet_bn", "carvana"): [(0, 0.90, 100.0)],
}


def _log_run(
    tracker: Tracker, model: str, dataset: str, seed: int, metrics: dict[str, float], status: str = "FINISHED"
) -> str:
    run_id = tracker.start_run(
        f"{model}-{dataset}-s{seed}", tags={"zoo.kind": "run", "device_name": "test CPU"}
    )
    tracker.log_params(
        run_id,
        {
            "cfg.model": model,
            "cfg.dataset": dataset,
            "cfg.seed": seed,
            "cfg.overrides": "{}",
            "dtype": "bfloat16",
            "cost_size": 64,
            "cost_batch": 2,
        },
    )
    for epoch in range(3):
        tracker.log_metrics(run_id, {"val_dice": metrics.get("dice", 0.5) * (epoch + 1) / 3}, step=epoch)
    tracker.log_metrics(run_id, metrics, step=2)
    tracker.finish(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> tuple[Tracker, dict[str, str]]:
    """The KNOWN runs and three to leave out, logged once for the module's tests (which only read)."""
    tracker = Tracker("board", workdir=seed_store(store_template, tmp_path_factory.mktemp("board")))
    ids = {}
    for (model, dataset), seeds in KNOWN.items():
        for seed, dice, speed in seeds:
            metrics = {
                "dice": dice,
                "iou": dice - 0.1,
                "misclassified": 1 - dice,
                "infer_images_per_s": speed,
                **COST,
            }
            if dataset == "isbi2012":
                metrics.update(pixel_error=0.1, rand_error=0.3, vrand=0.8, vinfo=0.9, rand_error_argmax=0.4)
            ids[f"{model}-{dataset}-s{seed}"] = _log_run(tracker, model, dataset, seed, metrics)
    full = {"dice": 0.99, "iou": 0.9, "misclassified": 0.01, "infer_images_per_s": 1.0, **COST}
    ids["failed"] = _log_run(tracker, "attention_unet", "isbi2012", 0, full, status="FAILED")
    ids["running"] = tracker.start_run("attention_unet-isbi2012-s1", tags={"zoo.kind": "run"})
    partial = {k: v for k, v in full.items() if k != "latency_ms"}
    ids["incomplete"] = _log_run(tracker, "unet_bilinear", "isbi2012", 0, partial)
    parent = tracker.start_run("suite", tags={"zoo.kind": "suite"})
    tracker.finish(parent)
    return tracker, ids


def test_aggregates_ranks_and_exclusions(store: tuple[Tracker, dict[str, str]]) -> None:
    tracker, ids = store
    board = build("board", tracker.uri)
    isbi = board.table[board.table["dataset"] == "isbi2012"].set_index("model")
    assert list(isbi.index) == ["unet_bn", "unet", "unet_resnet34"]  # ranked by mean Dice
    assert list(isbi["rank"]) == [1, 2, 3]
    assert isbi.loc["unet_bn", "n"] == 2
    assert isbi.loc["unet_bn", "dice_mean"] == pytest.approx(0.82)
    assert isbi.loc["unet_bn", "dice_std"] == pytest.approx(0.0282843, rel=1e-5)  # sample std of 0.80, 0.84
    assert isbi.loc["unet", "infer_images_per_s_mean"] == pytest.approx(190.0)
    assert set(isbi.loc["unet_bn", "run_ids"].split(",")) == {
        ids["unet_bn-isbi2012-s0"],
        ids["unet_bn-isbi2012-s1"],
    }
    # unet_bn (best Dice) and unet (fastest) are on the front; unet_resnet34 is dominated
    assert dict(isbi["pareto"]) == {"unet_bn": True, "unet": True, "unet_resnet34": False}
    carvana = board.table[board.table["dataset"] == "carvana"]
    assert carvana["dice_std"].tolist() == [0.0] and carvana["rank"].tolist() == [1]
    reasons = "\n".join(board.excluded)
    assert f"attention_unet-isbi2012-s0 ({ids['failed'][:8]}): status FAILED" in reasons
    assert f"attention_unet-isbi2012-s1 ({ids['running'][:8]}): status RUNNING" in reasons
    assert f"unet_bilinear-isbi2012-s0 ({ids['incomplete'][:8]}): incomplete, missing latency_ms" in reasons
    assert len(board.runs) == 7 and "suite" not in set(board.runs["model"])
    assert set(COST_KEYS) <= {c.removesuffix("_mean") for c in board.table.columns}


def test_converged_epoch_is_the_first_within_the_tolerance_of_the_best() -> None:
    assert converged_epoch({0: 0.5, 1: 0.79, 2: 0.797, 3: 0.801}) == 2  # 0.797 >= 0.801 - 0.005 > 0.79
    assert converged_epoch({0: 0.5, 1: 0.80, 2: 0.79, 3: 0.801}) == 1  # the first of those within it
    assert converged_epoch({0: 0.5, 1: 0.6, 2: 0.7}) == 2  # still improving at the end
    assert converged_epoch({0: 0.9, 1: 0.5}) == 0
    assert converged_epoch({0: 0.5, 1: 0.58, 2: 0.6}, within=0.05) == 1
    with pytest.raises(ValueError, match="empty"):
        converged_epoch({})


def test_the_board_says_when_each_variant_converged(
    tmp_path: Path, fresh_store: Callable[[Path], Path]
) -> None:
    tracker = Tracker("conv", workdir=fresh_store(tmp_path))
    metrics = {"dice": 0.8, "iou": 0.7, "misclassified": 0.2, "infer_images_per_s": 1.0, **COST}
    curves = {"unet_bn": [0.5, 0.798, 0.8, 0.799], "unet": [0.3, 0.5, 0.7, 0.8]}
    for model, curve in curves.items():
        run_id = tracker.start_run(f"{model}-isbi2012-s0", tags={"zoo.kind": "run"})
        tracker.log_params(run_id, {"cfg.model": model, "cfg.dataset": "isbi2012", "cfg.seed": 0})
        for epoch, dice in enumerate(curve):
            tracker.log_metrics(run_id, {"val_dice": dice}, step=epoch)
        tracker.log_metrics(run_id, metrics, step=2)
        tracker.finish(run_id)
    table = build("conv", tracker.uri).table.set_index("model")
    assert (
        table.loc["unet_bn", "converged_epoch_mean"] == 1 and table.loc["unet", "converged_epoch_mean"] == 3
    )
    assert (table["epochs_mean"] == 4).all()
    out = tmp_path / "out"
    assert main(["report", "--experiment", "conv", "--out", str(out), "--workdir", str(tmp_path)]) == 0
    md = (out / "leaderboard.md").read_text()
    assert "converged at epoch" in md and "| 2 of 4 |" in md and "| 4 of 4 |" in md


def test_pareto_front_definition() -> None:
    import pandas as pd

    q = pd.Series([0.9, 0.8, 0.7, 0.9])
    s = pd.Series([10.0, 20.0, 5.0, 10.0])
    assert pareto_front(q, s).tolist() == [True, True, False, True]  # ties do not dominate each other


def test_report_files(
    store: tuple[Tracker, dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracker, ids = store
    out = tmp_path / "reports"
    assert (
        main(["report", "--experiment", "board", "--out", str(out), "--workdir", str(tracker.workdir)]) == 0
    )
    printed = capsys.readouterr().out
    assert printed.count("left out:") == 3
    with open(out / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["model"], r["rank"]) for r in rows] == [
        ("carvana", "unet_bn", "1"),
        ("isbi2012", "unet_bn", "1"),
        ("isbi2012", "unet", "2"),
        ("isbi2012", "unet_resnet34", "3"),
    ]
    md = (out / "leaderboard.md").read_text()
    assert "| 1 | unet_bn ★ | - | 2 | 0.8200 ± 0.0283 |" in md
    assert ids["unet_bn-isbi2012-s0"][:8] in md  # each row names its runs
    assert "Ronneberger et al. 2015, Table 1), pixel error 0.0611, rand error 0.0382" in md  # ISBI only
    assert md.count("Table 1") == 1
    assert "## Left out" in md and "![Dice against throughput, isbi2012](pareto-isbi2012.png)" in md
    assert (out / "pareto-isbi2012.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "leaderboard.html").read_text()
    assert "http://" not in page and "https://" not in page  # self-contained: nothing to fetch
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 4  # a Pareto plot and validation curves per dataset (no overlay artifacts here)
    assert all(base64.b64decode(b)[:4] == b"\x89PNG" for b in images)
    assert page.count("<tr><td>") == 4


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_html_page_renders_in_headless_chromium(
    store: tuple[Tracker, dict[str, str]], tmp_path: Path
) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip(
            "no Chromium on this machine (.ci/run installs Debian's chromium package; it failed here)"
        )
    tracker, _ = store
    board = build("board", tracker.uri)
    page = write_report(board, tmp_path / "r", experiment="board", tracking_uri=tracker.uri)["html"]
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", done.stdout)
    assert body is not None, done.stdout[:500]
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    assert attrs == {"rows": "4", "images": "4", "images-rendered": "4"}, attrs


def test_bench_ends_with_the_leaderboard(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fresh_store: Callable[[Path], Path],
) -> None:
    args = [
        "bench",
        "--suite",
        "smoke",
        "--models",
        "unet_bn",
        "--datasets",
        "isbi2012",
        "--workdir",
        str(fresh_store(tmp_path)),
    ]
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    assert main(args) == 0
    captured = capsys.readouterr()
    page = tmp_path / "reports" / "suite-smoke" / "leaderboard.html"
    assert f"leaderboard: {page}" in captured.out and page.is_file()
    assert "unet_bn" in (page.parent / "leaderboard.md").read_text()
    assert "data:image/jpeg;base64," in page.read_text()  # the run's overlay was read back from MLflow
    assert "Downloading artifacts" not in captured.err  # without a progress bar per thumbnail
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # left as it was

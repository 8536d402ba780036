"""The leaderboard's honesty: spread over distinct seeds (reruns are not seeds), intervals and ties from
hand-computed figures, the data each section is on, where each row came from, and report folders that
are never replaced by another experiment's report by surprise."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from zoo.cli import main
from zoo.harness.tracking import Tracker
from zoo.report import build, write_report
from zoo.report.leaderboard import aggregate, ci95_halfwidth, describe_data, run_link
from zoo.report.render import MARKER, ReportFolderError, _rows

from .helpers import seed_store

COST = {
    "params": 1e6,
    "gflops": 2.0,
    "train_images_per_s": 10.0,
    "infer_images_per_s": 100.0,
    "latency_ms": 5.0,
    "peak_memory_mb": 100.0,
}
TWIN = "synthetic twin of isbi2012 (isbi2012-n8-s64)"
REAL = "/data/em/isbi2012"
T_975_2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2), as printed t tables give it: 4.303


# -- aggregation against hand-computed figures, no MLflow ----------------------------------------------


def _frame(rows: list[tuple[str, int, float]], *, dataset: str = "isbi2012") -> pd.DataFrame:
    """Runs as load_runs gives them: (model, seed, dice) each, every other column fixed."""
    out: list[dict[str, Any]] = []
    for i, (model, seed, dice) in enumerate(rows):
        out.append(
            {
                "dataset": dataset,
                "data": describe_data(TWIN),
                "model": model,
                "overrides": "-",
                "seed": seed,
                "split": "blocks (fold 0 of 3)",
                "recipe": "paper",
                "tuning": "-",
                "budget": "2 epochs x 3 steps x batch 2, crop 64",
                "device": "test CPU",
                "dtype": "float32",
                "git_commit": "abcdef0123",
                "date": "2026-11-30",
                "cost_size": "64",
                "cost_batch": "2",
                "run_id": f"{model}{i:030d}",
                "run_link": f"http://mlflow:5000/#/experiments/7/runs/{model}{i:030d}",
                "dice": dice,
                "iou": dice - 0.1,
                "misclassified": 1 - dice,
                **COST,
                "converged_epoch": 1,
                "epochs": 2,
            }
        )
    return pd.DataFrame(out)


def test_three_seeds_give_mean_sd_and_the_t_interval_by_hand() -> None:
    table = aggregate(_frame([("unet_bn", 0, 0.80), ("unet_bn", 1, 0.82), ("unet_bn", 2, 0.84)]))
    [row] = table.to_dict("records")
    assert row["n"] == 3 and row["runs"] == 3 and row["reruns"] == 0
    assert row["dice_mean"] == pytest.approx(0.82)
    assert row["dice_std"] == pytest.approx(0.02)  # sqrt((0.02^2 + 0 + 0.02^2) / 2)
    assert row["dice_ci95"] == pytest.approx(T_975_2 * 0.02 / math.sqrt(3))  # 0.0497
    assert row["dice_ci95"] == pytest.approx(0.0497, abs=5e-5)
    assert ci95_halfwidth(0.02, 2) != ci95_halfwidth(0.02, 2)  # NaN: no interval below three seeds


def test_reruns_of_one_seed_are_one_seed() -> None:
    # seed 0 three times and seed 1 once: two seeds, 0.80 (the mean of seed 0's runs) and 0.90
    runs = _frame([("unet", 0, 0.78), ("unet", 0, 0.80), ("unet", 0, 0.82), ("unet", 1, 0.90)])
    [row] = aggregate(runs).to_dict("records")
    assert (row["n"], row["runs"], row["reruns"]) == (2, 4, 2)
    assert row["dice_mean"] == pytest.approx(0.85)  # not 0.825, the mean of the four runs
    assert row["dice_std"] == pytest.approx(math.sqrt(2) * 0.05)  # sd of 0.80 and 0.90
    assert math.isnan(row["dice_ci95"])
    [single] = aggregate(_frame([("unet", 3, 0.7)] * 3)).to_dict("records")
    assert (single["n"], single["runs"], single["dice_std"]) == (1, 3, 0.0)


def test_rows_whose_interval_overlaps_the_best_are_tied_with_it() -> None:
    runs = _frame(
        [
            *[("unet_bn", s, d) for s, d in enumerate((0.80, 0.82, 0.84))],  # 0.82 ± 0.0497
            *[("unet", s, d) for s, d in enumerate((0.75, 0.77, 0.79))],  # 0.77 + 0.0497 >= 0.82 - 0.0497
            *[("attention_unet", s, d) for s, d in enumerate((0.70, 0.71, 0.72))],  # 0.71 + 0.0248 < 0.7703
            *[("unet_bilinear", s, d) for s, d in enumerate((0.81, 0.81))],  # two seeds: no interval
        ]
    )
    table = aggregate(runs).set_index("model")
    assert dict(table["rank"]) == {"unet_bn": 1, "unet_bilinear": 2, "unet": 3, "attention_unet": 4}
    assert dict(table["tied"]) == {
        "unet_bn": False,
        "unet_bilinear": False,
        "unet": True,
        "attention_unet": False,
    }
    assert dict(table["placing"]) == {
        "unet_bn": "=1",
        "unet_bilinear": "2",
        "unet": "=1",
        "attention_unet": "4",
    }
    # the best row of fewer than three seeds has no interval: nobody is tied with it
    alone = aggregate(_frame([("unet_bn", 0, 0.9), *[("unet", s, 0.89) for s in range(3)]]))
    assert list(alone["placing"]) == ["1", "2"] and not alone["tied"].any()


def test_cells_show_spread_only_where_there_is_one_and_link_to_the_runs() -> None:
    runs = pd.concat(
        [
            _frame([("unet_bn", s, d) for s, d in enumerate((0.80, 0.82, 0.84))]),
            _frame([("unet", 0, 0.70), ("unet", 1, 0.74)]),
            _frame([("attention_unet", 0, 0.60)] * 3),
        ],
        ignore_index=True,
    )
    table = aggregate(runs)
    table["pareto"] = False
    header, rows = _rows(table, [])
    by_model = {r[header.index("model")]: r for r in rows}
    dice = header.index("Dice")
    assert by_model["unet_bn"][dice] == "0.8200 ± 0.0200 (95% CI 0.7703–0.8697)"
    assert by_model["unet"][dice] == "0.7200 ± 0.0283"
    assert by_model["attention_unet"][dice] == "0.6000"  # one seed: no "± 0.0000"
    assert by_model["attention_unet"][header.index("seeds")] == "1 seed, 3 runs"
    links = by_model["unet"][header.index("runs")]
    assert isinstance(links, list) and [link.href for link in links] == [
        f"http://mlflow:5000/#/experiments/7/runs/unet{i:030d}" for i in range(2)
    ]


def test_run_links_and_data_descriptions() -> None:
    assert (
        run_link("http://mlflow.lab:5000/", "3", "abc") == "http://mlflow.lab:5000/#/experiments/3/runs/abc"
    )
    assert run_link("https://m.example", "3", "abc") == "https://m.example/#/experiments/3/runs/abc"
    assert run_link("sqlite:///tmp/mlflow.db", "3", "abc") == "abc"
    assert describe_data(TWIN) == TWIN
    assert describe_data(REAL) == f"real data ({REAL})"
    assert describe_data(None).startswith("data not recorded")


# -- reports from a throwaway MLflow store ---------------------------------------------------------------


def _log(tracker: Tracker, model: str, seed: int, dice: float, source: str) -> str:
    run_id = tracker.start_run(
        f"{model}-isbi2012-s{seed}",
        tags={
            "zoo.kind": "run",
            "device_name": "test CPU",
            "git_commit": "0123456789abcdef",
            "git_dirty": "True",
        },
    )
    tracker.log_params(
        run_id,
        {
            "cfg.model": model,
            "cfg.dataset": "isbi2012",
            "cfg.seed": seed,
            "cfg.overrides": "{}",
            "cfg.recipe": "isbi-paper",
            "cfg.epochs": 2,
            "cfg.steps_per_epoch": 3,
            "cfg.batch_size": 2,
            "cfg.crop": 64,
            "cfg.budget_seconds": None,
            "data_source": source,
            "split_method": "blocks",
            "split_detail": "fold 0 of 3",
            "dtype": "float32",
        },
    )
    tracker.log_metrics(run_id, {"val_dice": dice}, step=0)
    tracker.log_metrics(run_id, {"dice": dice, "iou": dice - 0.1, "misclassified": 1 - dice, **COST}, step=0)
    tracker.finish(run_id)
    return run_id


def board_uri(workdir: Path) -> str:
    return f"sqlite:///{(workdir.resolve() / 'mlflow.db').as_posix()}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Path:
    """Experiment "twin": unet_bn three seeds, unet one seed run three times, on a synthetic twin;
    experiment "real": one run on real data."""
    root = seed_store(store_template, tmp_path_factory.mktemp("store"))
    twin = Tracker("twin", workdir=root)
    for seed, dice in enumerate((0.80, 0.82, 0.84)):
        _log(twin, "unet_bn", seed, dice, TWIN)
    for dice in (0.70, 0.71, 0.72):
        _log(twin, "unet", 0, dice, TWIN)
    _log(Tracker("real", workdir=root), "unet_bn", 0, 0.75, REAL)
    return root


def test_a_synthetic_board_says_so_everywhere(workdir: Path, tmp_path: Path) -> None:
    board = build("twin", board_uri(workdir))
    paths = write_report(board, tmp_path / "out", experiment="twin", tracking_uri=board_uri(workdir))
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert f"## isbi2012: {TWIN}" in md and f"<h2>isbi2012: {TWIN}</h2>" in page
    assert "Every result on this page is on synthetic twins" in md and "on synthetic twins" in page
    with open(paths["csv"]) as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert {r["data"] for r in rows.values()} == {TWIN}
    assert (rows["unet"]["n"], rows["unet"]["runs"], rows["unet"]["reruns"]) == ("1", "3", "2")
    assert float(rows["unet_bn"]["dice_ci95"]) == pytest.approx(T_975_2 * 0.02 / math.sqrt(3), rel=1e-5)
    assert rows["unet_bn"]["placing"] == "1"  # unet has one seed: no interval, not tied
    # provenance the rows share, said once per section, in both files
    shared = (
        "All rows: split: blocks (fold 0 of 3); recipe: isbi-paper; budget: 2 epochs x 3 steps x batch 2, "
        "crop 64; device: test CPU; dtype: float32; git commit: 0123456789+dirty; date: "
    )
    assert shared in md and shared in page
    assert "| 1 | unet_bn ★ | - | 3 | 0.8200 ± 0.0200 (95% CI 0.7703–0.8697) |" in md
    assert "| 2 | unet | - | 1 seed, 3 runs | 0.7100 |" in md
    assert "not called tied" in md and "not called tied" in page
    assert "rows above are on a synthetic twin's validation split: not comparable with them" in md
    # every line of the Markdown's notes is in the page
    for line in md.splitlines():
        if line.endswith("  "):  # a section note
            assert line.strip() in page.replace("&#x27;", "'"), line
    marker = json.loads((tmp_path / "out" / MARKER).read_text())
    assert marker["experiment"] == "twin" and "leaderboard.md" in marker["files"]


def test_a_real_data_board_names_its_path(workdir: Path, tmp_path: Path) -> None:
    board = build("real", board_uri(workdir))
    paths = write_report(board, tmp_path / "out", experiment="real", tracking_uri=board_uri(workdir))
    md, page, table = paths["md"].read_text(), paths["html"].read_text(), paths["csv"].read_text()
    assert f"## isbi2012: real data ({REAL})" in md and f"real data ({REAL})" in page
    assert f"real data ({REAL})" in table and "synthetic" not in md + page + table
    assert "One seed per row: no spread is shown" in md


def test_report_writes_under_the_workdir_and_leaves_reports_alone(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sentinel = tmp_path / "reports" / "leaderboard.md"
    sentinel.parent.mkdir()
    sentinel.write_text("the published board\n")
    assert main(["report", "--experiment", "twin", "--workdir", str(workdir)]) == 0
    assert sentinel.read_text() == "the published board\n" and sorted(sentinel.parent.iterdir()) == [sentinel]
    assert (workdir / "reports" / "twin" / "leaderboard.html").is_file()


def test_another_experiments_report_is_replaced_only_with_force(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "board"
    args = ["report", "--out", str(out), "--workdir", str(workdir)]
    assert main([*args, "--experiment", "twin"]) == 0
    assert main([*args, "--experiment", "twin"]) == 0  # the same experiment's report is replaced
    assert main([*args, "--experiment", "real"]) == 2
    err = capsys.readouterr().err
    assert f"{out} holds the report of experiment 'twin'" in err and "--force" in err and "'real'" in err
    assert json.loads((out / MARKER).read_text())["experiment"] == "twin"
    assert main([*args, "--experiment", "real", "--force"]) == 0
    assert json.loads((out / MARKER).read_text())["experiment"] == "real"


def test_a_report_without_a_marker_is_not_replaced(workdir: Path, tmp_path: Path) -> None:
    (tmp_path / "leaderboard.md").write_text("# someone's board\n")
    board = build("real", board_uri(workdir))
    with pytest.raises(ReportFolderError, match=r"does not say its experiment \(no report.json\).*--force"):
        write_report(board, tmp_path, experiment="real", tracking_uri=board_uri(workdir))
    assert (tmp_path / "leaderboard.md").read_text() == "# someone's board\n"


def test_two_experiments_side_by_side(workdir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["report", "--experiment", "twin", "--experiment", "real", "--workdir", str(workdir)]
    assert main(args) == 0
    out = workdir / "reports" / "twin-vs-real"
    with open(out / "comparison.csv") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    # unet_bn: A (twin) 0.82 over three seeds, B (real) 0.75 over one; unet is in A only
    assert float(rows["unet_bn"]["dice_change"]) == pytest.approx(0.75 - 0.82)
    assert float(rows["unet_bn"]["infer_change"]) == pytest.approx(0.0)
    assert rows["unet_bn"]["same_data"] == "False" and rows["unet"]["dice_change"] == ""
    md = (out / "comparison.md").read_text()
    assert (
        f"| isbi2012 | unet_bn | - | {TWIN} | ≠ real data ({REAL}) | 0.8200 ± 0.0200 (95% CI 0.7703–0.8697) "
        "| 0.7500 | -0.0700 | 100.0 | 100.0 | +0.0 |"
    ) in md
    assert f"| isbi2012 | unet | - | {TWIN} | - | 0.7100 | - | - | 100.0 | - | - |" in md
    page = (out / "comparison.html").read_text()
    assert "<td>-0.0700</td>" in page and "not a like-for-like comparison" in page
    assert json.loads((out / MARKER).read_text())["experiment"] == "twin vs real"
    assert main([*args, "--experiment", "third"]) == 2

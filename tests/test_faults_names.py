"""Hostile names and outputs (issue 26, round two): each is one clear line and its exit code, and nothing
is written outside the workdir or the folder asked for.

- An experiment's name becomes a folder name (its runs, its report) only once
  :func:`zoo.harness.tracking.check_experiment_name` has accepted it; a name of any other form is
  reported with ``--out``.
- Names in the runs are escaped in the Markdown as in the page: markup shows as written, a '|' or a
  newline never splits a table row.
- Report files are UTF-8 whatever the locale; the report and the harness never open a text file without
  saying its encoding.
- ``report --out`` that is no folder, or a folder that cannot be written, is one line naming it.
- Output to a closed pipe ends the command quietly (exit code 141, as for a Unix tool), to a full device
  with one line (exit code 1).
"""

from __future__ import annotations

import ast
import errno
import html
import itertools
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from zoo.cli import main
from zoo.errors import ConfigError
from zoo.harness.tracking import (
    COST_KEYS,
    Tracker,
    check_experiment_name,
    default_tracking_uri,
    open_client,
)
from zoo.report.render import md_code, md_text

from .helpers import seed_store

REPO = Path(__file__).resolve().parents[1]

BAD_NAMES = ["../../x", "a/b", "..", ".hidden", "two words", "line\nbreak", "-flag", "x" * 101]

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "[x](javascript:alert(1))",
    "a|b\n| c | d |",
    "`code` *em* _u_ ~~s~~ \\| &lt; ![i](x.png)",
]
"""Model names (and the parts of other names) that would be markup, or split a row, if written raw."""


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's stderr, checked to be the one ``unet-zoo: error:`` line."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("unet-zoo: error: "), lines
    return lines[0]


def _log_run(tracker: Tracker, model: str, *, overrides: str, source: str, device: str) -> None:
    run_id = tracker.start_run(f"{model}-s0", tags={"zoo.kind": "run", "device_name": device})
    params = {"cfg.model": model, "cfg.dataset": "isbi2012", "cfg.seed": 0, "cfg.overrides": overrides}
    tracker.log_params(run_id, {**params, "data_source": source})
    tracker.log_metrics(run_id, {"val_dice": 0.5}, step=0)
    tracker.log_metrics(
        run_id, {"dice": 0.5, "iou": 0.4, "misclassified": 0.1, **dict.fromkeys(COST_KEYS, 1.0)}
    )
    tracker.finish(run_id)


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Path:
    """Experiments A and B with the :data:`HOSTILE` models (their overrides, data path and device hostile
    too) and, in A, a run left out under a hostile name; returns the workdir."""
    workdir = seed_store(store_template, tmp_path_factory.mktemp("hostile"))
    for experiment in ("A", "B"):
        tracker = Tracker(experiment, workdir=workdir)
        for model in HOSTILE:
            _log_run(
                tracker,
                model,
                overrides='{"k": "v|<i>"}',
                source="/data/[l](javascript:x)\nnext",
                device="cpu <b>|</b>",
            )
    Tracker("A", workdir=workdir).start_run("<script>x</script>|\nrow", tags={"zoo.kind": "run"})
    return workdir


# -- 1. experiment names name folders only once checked --------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_is_no_plain_folder_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"letters, digits, '_', '-' or '\.'"):
        check_experiment_name(name)


@pytest.mark.parametrize("name", ["suite-default", "train", "tune-tuned-cpu", "v1.2_b", "x" * 100])
def test_the_harness_names_are_plain_folder_names(name: str) -> None:
    check_experiment_name(name)


def test_a_tracker_refuses_the_name_before_writing_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"experiment name '\.\./x'"):
        Tracker("../x", workdir=tmp_path / "wd")
    assert _tree(tmp_path) == set()  # not even the workdir or its store


COMMANDS = {
    "train": ["train", "--model", "unet_bn", "--dataset", "isbi2012", "--override", "base_channels=4"],
    "bench": ["bench", "--suite", "smoke", "--models", "unet_bn", "--datasets", "isbi2012"],
    "report": ["report"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", ["../../x", "a/../../y", "sub/dir"])
def test_an_experiment_name_never_writes_outside_the_workdir(
    command: str,
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    workdir = tmp_path / "a" / "b" / "wd"  # '../../x' from it, or from its reports/, is still in tmp_path
    workdir.mkdir(parents=True)
    before = _tree(tmp_path)
    assert main([*COMMANDS[command], "--experiment", name, "--workdir", str(workdir)]) == 2
    line = _error_line(capsys)
    assert f"experiment name {name!r}: an experiment name is 1 to 100 letters, digits" in line
    assert line.endswith("report it with --out FOLDER" if command == "report" else "(--experiment NAME)")
    assert _tree(tmp_path) == before


def test_an_existing_experiment_of_any_name_is_reported_with_out(
    tmp_path: Path, fresh_store: Callable[[Path], Path]
) -> None:
    """An experiment made elsewhere (the MLflow UI, another tool) under a name that is no folder name."""
    workdir = fresh_store(tmp_path / "wd")
    client = open_client(default_tracking_uri(workdir))
    experiment = client.create_experiment("../../x", artifact_location=(workdir / "art").as_uri())
    run = client.create_run(experiment, run_name="r", tags={"zoo.kind": "run"})
    params = {"cfg.model": "unet_bn", "cfg.dataset": "isbi2012", "cfg.seed": "0"}
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    for key in ("dice", "iou", "misclassified", *COST_KEYS):
        client.log_metric(run.info.run_id, key, 0.5)
    client.set_terminated(run.info.run_id)
    before = _tree(tmp_path)
    out = workdir / "reports" / "x"
    assert main(["report", "--experiment", "../../x", "--workdir", str(workdir), "--out", str(out)]) == 0
    assert {p for p in _tree(tmp_path) - before if not p.startswith("wd/reports")} == set()
    assert "Experiment `../../x`;" in (out / "leaderboard.md").read_text(encoding="utf-8")


# -- 2. names in the Markdown show as written -------------------------------------------------------------


def _unescaped(markdown: str) -> str:
    """``markdown`` with its backslash escapes removed (what is left can be markup)."""
    return re.sub(r"\\[!-/:-@\[-`{-~]", "", markdown)


@pytest.mark.parametrize("text", [*HOSTILE, "unet_bn", "a\\b", "&amp; é ★", "\r\nx\r\n"])
def test_md_text_reads_back_as_the_text_on_one_line(text: str) -> None:
    out = md_text(text)
    assert "\n" not in out and "\r" not in out
    left = _unescaped(out)
    assert not set("<>|[]`*~\\") & set(left), left  # no markup, no cell boundary, outside an escape
    assert not re.search(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", left)  # no '_' that can start emphasis
    # CommonMark reads a backslash escape as the character, an entity as its character
    shown = html.unescape(re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", out))
    assert shown == " ".join(text.splitlines())


@pytest.mark.parametrize("text", ["A", "a`b", "``x", "x`"])
def test_md_code_is_one_span_whatever_backticks_it_holds(text: str) -> None:
    span = md_code(text)
    found = re.match(r"`+", span)
    assert found is not None
    fence = found.group(0)
    inner = span[len(fence) : -len(fence)]
    assert span.endswith(fence) and fence not in inner  # no run of backticks inside closes it early
    assert inner in (text, f" {text} ")  # a space pads a backtick at either end, and is not shown


def _table_rows(markdown: str) -> list[list[str]]:
    """Each table line's cells, split at the '|' that are not escaped."""
    rows = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            marked = re.sub(r"\\.", lambda m: "\0" * len(m.group(0)), line)
            cuts = [i for i, c in enumerate(marked) if c == "|"]
            rows.append([line[a + 1 : b].strip() for a, b in itertools.pairwise(cuts)])
    return rows


@pytest.mark.parametrize("compare", [False, True], ids=["leaderboard", "comparison"])
def test_names_are_escaped_in_the_markdown_as_in_the_page(
    compare: bool, hostile_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    experiments = ["--experiment", "A", *(["--experiment", "B"] if compare else [])]
    assert main(["report", *experiments, "--workdir", str(hostile_store), "--out", str(out)]) == 0
    capsys.readouterr()
    stem = "comparison" if compare else "leaderboard"
    md = (out / f"{stem}.md").read_text(encoding="utf-8")
    rows = _table_rows(md)
    assert len(rows) == 2 + len(HOSTILE)  # header, rule, one row per model: no row split by a name
    assert {len(r) for r in rows} == {len(rows[0])}
    models = [r[rows[0].index("model")] for r in rows[2:]]
    assert sorted(m.removesuffix(" ★") for m in models) == sorted(md_text(m) for m in HOSTILE)
    left = _unescaped(md)
    assert "<" not in left and "](javascript:" not in left and "](x.png)" not in left
    assert "\n| c | d |" not in md and "\nnext" not in md and "\nrow" not in md
    page = (out / f"{stem}.html").read_text(encoding="utf-8")
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


# -- 3. UTF-8 whatever the locale ---------------------------------------------------------------------------


def test_the_report_is_utf8_under_an_ascii_locale(hostile_store: Path, tmp_path: Path) -> None:
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    out = tmp_path / "out"
    done = subprocess.run(
        _cli(
            "report",
            "--experiment",
            "A",
            "--experiment",
            "B",
            "--workdir",
            str(hostile_store),
            "--out",
            str(out),
        ),
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    for name in ("comparison.md", "comparison.html", "comparison.csv", "report.json"):
        (out / name).read_text(encoding="utf-8")  # valid UTF-8
    assert "±" in (out / "comparison.md").read_text(encoding="utf-8")


def _text_opens_without_encoding(path: Path) -> list[str]:
    """Calls in ``path`` that open a text file in the locale's encoding: ``open`` in text mode,
    ``Path.read_text``/``write_text``/``open``, ``to_csv``, without ``encoding=``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name not in ("open", "read_text", "write_text", "to_csv"):
            continue
        if isinstance(func, ast.Attribute) and ast.unparse(func.value) in ("Image", "os"):
            continue  # an image (binary), a file descriptor
        mode = next((k.value for k in node.keywords if k.arg == "mode"), None)
        if mode is None and name == "open" and len(node.args) > (0 if isinstance(func, ast.Attribute) else 1):
            mode = node.args[0 if isinstance(func, ast.Attribute) else 1]
        if isinstance(mode, ast.Constant) and "b" in str(mode.value):
            continue
        if "encoding" not in {k.arg for k in node.keywords}:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_the_report_and_the_harness_name_the_encoding_of_every_text_file() -> None:
    files = sorted([*(REPO / "zoo" / "report").rglob("*.py"), *(REPO / "zoo" / "harness").rglob("*.py")])
    assert [line for path in files for line in _text_opens_without_encoding(path)] == []


# -- 4. report --out that is no folder, or cannot be written ------------------------------------------------


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("file", "is a file; a report is a folder of files: give --out a folder"),
        ("file/sub", "Not a directory; write the report elsewhere (--out FOLDER)"),
        ("/dev/full", "is not a folder (a device, a pipe or a socket); a report is a folder of files: give"),
    ],
)
@pytest.mark.parametrize("compare", [False, True], ids=["leaderboard", "comparison"])
def test_an_out_that_is_no_folder_is_one_line(
    target: str,
    said: str,
    compare: bool,
    hostile_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if target.startswith("/dev/") and not Path(target).exists():
        pytest.skip(f"no {target} here")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("mine\n", encoding="utf-8")
    before = _tree(tmp_path)
    experiments = ["--experiment", "A", *(["--experiment", "B"] if compare else [])]
    assert main(["report", *experiments, "--workdir", str(hostile_store), "--out", target]) == 2
    line = _error_line(capsys)
    assert target in line and said in line, line
    assert _tree(tmp_path) == before and (tmp_path / "file").read_text(encoding="utf-8") == "mine\n"


def test_a_full_disk_is_one_line_naming_the_file(
    hostile_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = Path.write_text

    def full(self: Path, *args: object, **kwargs: object) -> int:
        if self.name == "leaderboard.md":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "out"
    assert main(["report", "--experiment", "A", "--workdir", str(hostile_store), "--out", str(out)]) == 2
    assert _error_line(capsys) == (
        f"unet-zoo: error: cannot write the report: {out / 'leaderboard.md'}: No space left on device; "
        "free some space there, or write the report elsewhere (--out FOLDER)"
    )


# -- 5. output to a closed pipe or a full device -------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "zoo.cli", *args]


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    """``unet-zoo data list | head -1`` where head has already gone: no message, the shell's SIGPIPE code
    (each command's output goes through the one guard in ``main``: one command stands for them all)."""
    proc = subprocess.Popen(_cli("data", "list"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes before the command has written anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141
    assert err == ""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_a_full_device_is_one_line() -> None:
    """``unet-zoo models > /dev/full``."""
    with open("/dev/full", "w", encoding="utf-8") as full:
        done = subprocess.run(
            _cli("models"), cwd=REPO, stdout=full, stderr=subprocess.PIPE, timeout=300, check=False
        )
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [
        "unet-zoo: error: cannot write the output to /dev/full: No space left on device; free some space "
        "there, or redirect it elsewhere"
    ]

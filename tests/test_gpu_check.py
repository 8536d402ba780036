"""benchmarks/gpu_check.py: stages are time-boxed and isolated, every outcome is recorded, and the
--quick CPU mode runs the real stages end to end."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_check() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(BENCHMARKS))


def written(out: Path, stem: str) -> tuple[dict[str, Any], str]:
    (path,) = out.glob(f"{stem}-*.json")
    summary = path.with_suffix(".md")
    assert summary.is_file(), f"no Markdown summary beside {path}"
    return json.loads(path.read_text()), summary.read_text()


def python_stage(gpu_check: ModuleType, name: str, code: str, share: float, **kwargs: Any) -> Any:
    """A stage running ``code`` in a child Python (its folder as argv[1]); its figures are the JSON it
    wrote to ``figures.json`` there."""

    def collect(run: Any) -> dict[str, Any]:
        return json.loads((run.folder / "figures.json").read_text())

    return gpu_check.Stage(
        name,
        f"test stage {name}",
        share,
        lambda run: [sys.executable, "-c", code, str(run.folder)],
        collect,
        **kwargs,
    )


WRITE = (
    "import json, sys, pathlib; (pathlib.Path(sys.argv[1]) / 'figures.json').write_text(json.dumps({'x': 3}))"
)
# a child that starts a grandchild, notes its pid and waits; the grandchild would outlive it, and leave a
# file behind, if the stage's whole process group were not killed
HANG = (
    "import subprocess, sys, time, pathlib; "
    "folder = pathlib.Path(sys.argv[1]); late = folder / 'late'; "
    "code = f'import time; time.sleep(60); open({str(late)!r}, \"w\")'; "
    "child = subprocess.Popen([sys.executable, '-c', code]); "
    "(folder / 'grandchild.pid').write_text(str(child.pid)); "
    "time.sleep(60)"
)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:  # gone since, or no /proc to ask (then it ran a moment ago)
        return not Path("/proc/self/stat").is_file()
    return state != "Z"


def test_hung_failed_and_unaffordable_stages_are_recorded_and_the_run_goes_on(
    gpu_check: ModuleType, tmp_path: Path
) -> None:
    stages = [
        python_stage(gpu_check, "hangs", HANG, 0.06),  # 0.06 x (40 - 5) s: a 2.1 s timeout
        python_stage(gpu_check, "crashes", "raise SystemExit(3)", 0.1),
        python_stage(gpu_check, "works", WRITE, 0.2),
        python_stage(gpu_check, "misses", WRITE + "; raise SystemExit(1)", 0.2, missed_is_ok=True),
        python_stage(gpu_check, "no_data", WRITE, 0.1, skip=lambda plan: "no data root: give --data-root"),
        python_stage(gpu_check, "too_big", WRITE, 3.0),  # a share larger than the whole budget
    ]
    workdir = tmp_path / "work"
    code = gpu_check.main(
        ["--quick", "--budget-seconds", "40", "--out", str(tmp_path), "--workdir", str(workdir)],
        stages=stages,
    )
    assert code == 1  # a timeout and a failure
    results, summary = written(tmp_path, "gpu_check-quick")
    by_name = {s["name"]: s for s in results["stages"]}
    assert list(by_name) == ["hangs", "crashes", "works", "misses", "no_data", "too_big"]
    assert results["statuses"] == {name: s["status"] for name, s in by_name.items()}

    hung = by_name["hangs"]
    assert hung["status"] == "timeout" and "killed" in hung["reason"]
    assert hung["timeout_s"] == pytest.approx(0.06 * 35, abs=0.1)
    assert by_name["crashes"]["status"] == "failed" and by_name["crashes"]["reason"].startswith("exit 3")
    assert by_name["works"] == {**by_name["works"], "status": "ok", "reason": None, "figures": {"x": 3}}
    assert by_name["works"]["returncode"] == 0
    assert by_name["misses"]["status"] == "ok" and "target was missed" in by_name["misses"]["reason"]
    assert by_name["no_data"]["status"] == "skipped"
    assert by_name["no_data"]["reason"] == "no data root: give --data-root"
    assert (
        by_name["too_big"]["status"] == "skipped" and "raise --budget-seconds" in by_name["too_big"]["reason"]
    )

    for name, stage in by_name.items():
        assert stage["status"] in gpu_check.STATUSES
        assert f"## {name}: {stage['status']}" in summary
        assert f"| {name} | {stage['status']} |" in summary
    assert "| x | 3 |" in summary  # the figures, as a table
    assert results["machine"]["device"] == "cpu"

    # the timed-out stage's whole process group was killed: its grandchild too (it would sleep a minute)
    grandchild = int((workdir / "hangs" / "grandchild.pid").read_text())
    deadline = time.monotonic() + 30
    while _alive(grandchild):
        assert time.monotonic() < deadline, f"the hung stage's grandchild {grandchild} still runs"
        time.sleep(0.05)
    assert not (workdir / "hangs" / "late").exists()


def test_unknown_stage_names_are_refused_with_the_valid_ones(gpu_check: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        gpu_check.main(["--quick", "--stages", "throughput,trian-isbi2012", "--out", str(tmp_path)])


def _run_here(argv: list[str], env: dict[str, str]) -> int:
    """A stage's ``python -m zoo.cli ...`` or ``python benchmarks/SCRIPT.py ...`` run in this process, in
    the stage's environment; its exit code."""
    assert argv[0] == sys.executable, argv
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            if os.environ.get(key) != value:
                patch.setenv(key, value)
        if argv[1:3] == ["-m", "zoo.cli"]:
            from zoo.cli import main

            return main(argv[3:])
        script = Path(argv[1])
        assert script.parent == BENCHMARKS and script.suffix == ".py", argv
        return int(importlib.import_module(script.stem).main(argv[2:]))


def in_this_process(gpu_check: ModuleType, name: str) -> Any:
    """The default stage ``name`` with its command line run in this process as the check asks for it; the
    child the check then starts only hands back that exit code. A quick stage's time is mostly its
    child's start-up (importing torch and the zoo); real children are the test above's business, and
    every stage's the slow test's."""
    (stage,) = [s for s in gpu_check.default_stages() if s.name == name]

    def command(run: Any) -> list[str]:
        code = _run_here(stage.command(run), gpu_check.child_env(run.plan))
        return [sys.executable, "-c", f"raise SystemExit({code})"]

    return dataclasses.replace(stage, command=command)


def test_quick_throughput_stage_reports_the_a100_comparison(gpu_check: ModuleType, tmp_path: Path) -> None:
    argv = ["--quick", "--stages", "throughput", "--out", str(tmp_path)]
    code = gpu_check.main(argv, stages=[in_this_process(gpu_check, "throughput")])
    assert code == 0
    results, summary = written(tmp_path, "gpu_check-quick")
    (stage,) = results["stages"]
    assert stage["status"] == "ok", stage["output_tail"]
    figures = stage["figures"]
    assert (figures["a100_training_images_per_s"], figures["a100_inference_images_per_s"]) == (118.98, 423.76)
    rows = {row["run"]: row for row in figures["rows"]}
    assert set(rows) == {"training_bf16", "inference_bf16"}
    reference = {"training_bf16": 118.98, "inference_bf16": 423.76}
    for key, row in rows.items():
        assert row["over_a100_reference"] == pytest.approx(row["images_per_s"] / reference[key], abs=2e-3)
    assert "| training_bf16 |" in summary


def test_quick_training_stage_trains_within_its_budget(
    gpu_check: ModuleType, tmp_path: Path, fresh_store: Callable[[Path], Path]
) -> None:
    """The default test run's share of the quick mode: one training stage, its command run in this
    process (the whole quick mode, every stage a child of its own, is the slow test below)."""
    workdir = fresh_store(tmp_path / "work")  # the stages' one store
    argv = ["--quick", "--stages", "train-isbi2012", "--out", str(tmp_path), "--workdir", str(workdir)]
    code = gpu_check.main(argv, stages=[in_this_process(gpu_check, "train-isbi2012")])
    results, summary = written(tmp_path, "gpu_check-quick")
    (stage,) = results["stages"]
    assert code == 0 and stage["status"] == "ok", stage["output_tail"]
    figures = stage["figures"]
    assert figures["status"] == "FINISHED" and 0.0 <= figures["dice"] <= 1.0 and figures["epochs"] >= 1
    assert "pixel_error" in figures and "## train-isbi2012: ok" in summary


@pytest.mark.slow
def test_quick_check_runs_every_stage_on_cpu(gpu_check: ModuleType, tmp_path: Path) -> None:
    # several minutes on a busy 2-core CPU: every stage starts its own Python and the harness
    # a generous budget: the shares (the timeouts) scale with it, and this CPU may be shared
    code = gpu_check.main(["--quick", "--budget-seconds", "1200", "--out", str(tmp_path)])
    results, summary = written(tmp_path, "gpu_check-quick")
    names = [s["name"] for s in results["stages"]]
    assert names == [s.name for s in gpu_check.default_stages()]
    by_name = {s["name"]: s for s in results["stages"]}
    for name, stage in by_name.items():
        assert stage["status"] in gpu_check.STATUSES
        assert f"## {name}: {stage['status']}" in summary
    training = [n for n in names if n.startswith(("bench-", "train-"))]
    for name in ["throughput", "overhead-unet_bn", "overhead-unet", *training]:
        assert by_name[name]["status"] == "ok", (name, by_name[name]["reason"], by_name[name]["output_tail"])
    for name in training:
        figures = by_name[name]["figures"]
        rows = figures["rows"] if name.startswith("bench-") else [figures]
        for row in rows:
            assert row["status"] == "FINISHED"
            assert 0.0 <= row["dice"] <= 1.0 and row["train_images_per_s"] > 0 and row["epochs"] >= 1
    assert "pixel_error" in by_name["train-isbi2012"]["figures"]  # the challenge's figures on ISBI
    for name in ("overhead-unet_bn", "overhead-unet"):
        figures = by_name[name]["figures"]
        ratio = (
            figures["bare_images_per_s"] and figures["harness_images_per_s"] / figures["bare_images_per_s"]
        )
        assert figures["harness_over_bare"] == pytest.approx(ratio, rel=0.02)
    peers = by_name["peers"]
    if peers["status"] == "skipped":
        assert "not importable" in peers["reason"]
    assert code == (0 if all(s["status"] in ("ok", "skipped") for s in results["stages"]) else 1)

"""The issue-8 benchmark scripts run end to end in their --quick mode and write well-formed results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_quick(script: str, out: Path, *extra: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (path,) = out.glob(f"{script.removesuffix('.py')}-quick-*.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_fast_paths_quick(tmp_path: Path) -> None:
    results = run_quick("fast_paths.py", tmp_path, "--skip-compile")
    inference = results["inference"]["paths"]
    assert inference["eager_fp32"]["speedup_over_eager_fp32"] == 1.0
    assert "needs a CUDA device" in inference["cuda_graphs_bf16_channels_last"]["skipped"]
    assert "compile_bf16_channels_last" not in inference
    for check in results["checks"].values():
        assert check["passed"] is not False or check["why"].startswith("missed")
    assert results["machine"]["device"] == "cpu"


@pytest.mark.slow
def test_peers_quick(tmp_path: Path) -> None:
    pytest.importorskip("monai")
    results = run_quick("peers.py", tmp_path)
    by_zoo = {p["zoo"]: p for p in results["pairs"]}
    assert set(by_zoo) == {"unet_bn", "attention_unet", "unet_resnet34"}
    assert by_zoo["unet_resnet34"]["flops_zoo_over_peer"] == 1.0  # the wrapper builds the same network
    for pair in results["pairs"]:
        assert set(pair["runs"]) == {
            f"{w}/{p}" for w in ("inference", "training") for p in ("fp32_eager", "bf16_channels_last")
        }
        for row in pair["runs"].values():
            expected = round(row["peer_seconds"] / row["zoo_seconds"], 3)
            assert row["zoo_over_peer_throughput"] == pytest.approx(expected, abs=2e-3)

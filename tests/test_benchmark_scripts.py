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
    for name in ("unet_bn", "attention_unet"):  # the peer is configured to the zoo model's FLOPs
        assert by_zoo[name]["zoo_base_channels"] == 8
        assert by_zoo[name]["flops_zoo_over_peer"] == pytest.approx(1.0, abs=0.05)
        assert all(c % 8 == 0 for c in by_zoo[name]["peer_channels"])
    for pair in results["pairs"]:
        assert set(pair["runs"]) == {
            f"{w}/{p}" for w in ("inference", "training") for p in ("fp32_eager", "bf16_channels_last")
        }
        for row in pair["runs"].values():
            expected = round(row["peer_seconds"] / row["zoo_seconds"], 3)
            assert row["zoo_over_peer_throughput"] == pytest.approx(expected, abs=2e-3)


def test_unet572_throughput_quick(tmp_path: Path) -> None:
    # the GPU comparison with NVIDIA's A100 figures, run tiny on the CPU: the arithmetic, not the speed
    results = run_quick("unet572_throughput.py", tmp_path, "--device", "cpu")
    assert results["input"] == [1, 188, 188] and results["output"] == [4, 4]
    assert set(results["runs"]) == {"training_bf16", "inference_bf16"}  # no CUDA graph on a CPU
    per_image = results["gflop_per_image_forward"] * 1e9
    for key, factor in (("training_bf16", 3), ("inference_bf16", 1)):
        row = results["runs"][key]
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["seconds_per_step"], rel=1e-2)
        achieved = row["images_per_s"] * per_image * factor / 1e12
        assert row["model_tflops_per_s"] == pytest.approx(achieved, rel=1e-2, abs=1e-3)
        assert row["mfu"] is None  # no peak known for a CPU
    reference = results["a100_reference"]
    assert (reference["training_images_per_s"], reference["inference_images_per_s"]) == (118.98, 423.76)


def test_peak_table_picks_the_most_specific_device_name() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from unet572_throughput import peak_tflops
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA L40S") == 362.0 and peak_tflops("NVIDIA L4") == 121.0
    assert peak_tflops("Tesla T4") is None
    assert peak_tflops("NVIDIA L40") == 181.0  # not the L4's
    assert peak_tflops("NVIDIA RTX A1000 6GB Laptop GPU") is None  # not an A100
    assert peak_tflops("NVIDIA A10G") is None and peak_tflops("NVIDIA A10") == 125.0

"""The benchmark scripts, run at toy sizes into a temporary folder: each writes one results file named
after the machine, and the figures in it agree with one another and with independent counts (FLOPs
from ``zoo.cost``, sizes from the models' own size rules), whatever the speed of the machine.
Also the one timing loop they share, ``zoo.harness.throughput.time_call``, on a fake clock."""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import zoo.harness.throughput as throughput
from zoo import create_model
from zoo.cost import count_flops
from zoo.machine import machine_slug

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def scripts() -> Iterator[Callable[[str], ModuleType]]:
    """Import a benchmark script by name, as it imports its neighbours (``_common``, ``fast_paths``)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(BENCHMARKS))


def run_main(script: ModuleType, out: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """Run ``script.main`` and read back the one file it wrote: ``<benchmark>[-quick]-<machine>.json``."""
    code = script.main([*args, "--out", str(out)])
    files = list(out.glob("*.json"))
    assert len(files) == 1, f"expected one results file in {out}, found {[f.name for f in files]}"
    results: dict[str, Any] = json.loads(files[0].read_text())
    stem = results["benchmark"] + ("-quick" if results.get("quick") else "")
    assert files[0].name == f"{stem}-{machine_slug(results['machine']['device'])}.json"
    return code, results


def data_root(tmp_path: Path, **datasets: Path) -> Path:
    """A data root holding the given twins under the folder names the scripts look for."""
    root = tmp_path / "data"
    root.mkdir()
    for name, folder in datasets.items():
        (root / name).symlink_to(folder, target_is_directory=True)
    return root


def ratio_of_rounded(value: float, num: float, den: float, *, digits: int, value_digits: int) -> bool:
    """Whether ``value`` (rounded to ``value_digits``) can be ``num / den`` for the true figures behind
    ``num`` and ``den`` (rounded to ``digits``): on a fast machine a time rounds to a few hundredths."""
    half, value_half = 0.5 * 10**-digits, 0.5 * 10**-value_digits
    low = (num - half) / (den + half)
    high = (num + half) / (den - half) if den > half else float("inf")
    return low - value_half <= value <= high + value_half


# -- the timing loop -------------------------------------------------------------------------------


def test_time_call_warms_up_then_times_each_call_between_synchronised_clock_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    clock = [0.0]
    durations = iter([5.0, 1.0, 2.0, 4.0])  # the warm-up call, then the three timed ones

    def fake_clock() -> float:
        events.append("clock")
        return clock[0]

    def fn() -> None:
        events.append("call")
        clock[0] += next(durations)

    monkeypatch.setattr(throughput.time, "perf_counter", fake_clock)
    monkeypatch.setattr(throughput, "synchronize", lambda device: events.append(f"sync {device}"))
    times = throughput.time_call(fn, warmup=1, repeats=3, device="cuda:1")
    assert times == [1.0, 2.0, 4.0]  # each call's own time, the warm-up's left out
    timed = ["sync cuda:1", "clock", "call", "sync cuda:1", "clock"]
    assert events == ["call", *timed * 3]  # the device waited for before every clock read
    with pytest.raises(ValueError, match="repeats=0"):
        throughput.time_call(fn, warmup=1, repeats=0, device="cpu")


def test_median_seconds_is_the_median_of_time_call(
    scripts: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    common = scripts("_common")
    calls: list[dict[str, Any]] = []

    def fake_time_call(fn: Callable[[], object], **kwargs: Any) -> list[float]:
        calls.append(kwargs)
        return [3.0, 1.0, 2.0, 9.0, 0.5]

    monkeypatch.setattr(common, "time_call", fake_time_call)
    assert common.median_seconds(lambda: None, "cpu", repeats=5, warmup=2) == 2.0
    assert calls == [{"warmup": 2, "repeats": 5, "device": "cpu"}]


def test_autocast_is_off_without_a_dtype(scripts: Callable[[str], ModuleType]) -> None:
    common = scripts("_common")
    layer = torch.nn.Linear(4, 4)
    x = torch.rand(2, 4)
    with common.autocast("cpu", None):
        assert layer(x).dtype == torch.float32
    with common.autocast(torch.device("cpu"), torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16


# -- the scripts -----------------------------------------------------------------------------------


def test_unet572_throughput_figures_follow_from_its_timings(
    scripts: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    # the GPU comparison with NVIDIA's A100 figures, run tiny on the CPU: the arithmetic, not the speed
    code, results = run_main(scripts("unet572_throughput"), tmp_path, "--quick", "--device", "cpu")
    assert code == 0
    assert results["quick"] is True and results["machine"]["device"] == "cpu"
    model = create_model("unet", in_channels=1, num_classes=2, base_channels=8)
    side = results["input"][-1]
    out = model.output_size(side)  # type: ignore[operator]
    assert results["input"] == [1, side, side] and results["output"] == [out, out]
    per_image = count_flops(model, (1, 1, side, side))
    assert results["gflop_per_image_forward"] == pytest.approx(per_image / 1e9, abs=1e-3)
    assert set(results["runs"]) == {"training_bf16", "inference_bf16"}  # no CUDA graph on a CPU
    reference = results["a100_reference"]
    for key, factor, a100 in (
        ("training_bf16", 3, reference["training_images_per_s"]),
        ("inference_bf16", 1, reference["inference_images_per_s"]),
    ):
        row = results["runs"][key]
        assert row["seconds_per_step"] > 0 and row["batch"] >= 1
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["seconds_per_step"], rel=1e-2)
        achieved = row["images_per_s"] * per_image * factor / 1e12
        assert row["model_tflops_per_s"] == pytest.approx(achieved, rel=1e-2, abs=1e-3)
        assert row["over_a100_reference"] == pytest.approx(row["images_per_s"] / a100, rel=1e-2, abs=1e-3)
        assert row["mfu"] is None  # no peak known for a CPU


def test_peak_table_matches_device_names_on_whole_words(scripts: Callable[[str], ModuleType]) -> None:
    module = scripts("unet572_throughput")
    table, peak = module.PEAK_BF16_TFLOPS, module.peak_tflops
    for key, value in table.items():  # every entry is found in a name as NVIDIA writes it
        assert peak(f"NVIDIA {key} 80GB HBM3") == value, key
    # the most specific entry wins where one key holds another
    assert peak("NVIDIA H100 PCIe") == table["H100 PCIe"] != table["H100"]
    assert peak("NVIDIA L40S") == table["L40S"] and peak("NVIDIA L40") == table["L40"] != table["L4"]
    # a key inside a longer model number is not that model
    for name in ("NVIDIA RTX A1000 6GB Laptop GPU", "NVIDIA A10G", "Tesla T4", "NVIDIA L400"):
        assert peak(name) is None, name


def test_tiled_prediction_figures_follow_from_its_tiles_and_timings(
    scripts: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    # no carvana under the data root: a synthetic car of Carvana's 1918x1280, a third of it in --quick
    args = (
        "--quick",
        "--data-root",
        str(tmp_path / "no-data"),
        "--models",
        "unet_bn",
        "--precisions",
        "fp32",
    )
    code, results = run_main(scripts("tiled_prediction"), tmp_path / "out", *args)
    assert results["image"].startswith("synthetic car 1918x1280")
    assert (results["height"], results["width"]) == (1280 // 3, 1918 // 3)
    (row,) = results["runs"]
    assert row["model"] == "unet_bn" and row["precision"] == "fp32 eager"
    windows = re.fullmatch(r"(\d+)x(\d+) tiles of (\d+)x(\d+)", row["windows"])
    assert windows, row["windows"]
    rows, cols, height, width = map(int, windows.groups())
    assert row["tiles"] == rows * cols
    model = create_model("unet_bn", in_channels=3, num_classes=2, base_channels=8)
    flops = row["tiles"] * count_flops(model, (1, 3, height, width))
    assert row["tiled_gflop"] == pytest.approx(flops / 1e9, abs=0.05)
    tiled, whole = row["tiled_seconds"], row["whole_seconds"]  # rounded to milliseconds
    assert tiled >= 0 and whole >= 0 and row["megapixels_per_s"] > 0
    assert ratio_of_rounded(row["tiled_over_whole"], tiled, whole, digits=3, value_digits=3), row
    megapixels = results["height"] * results["width"] / 1e6
    assert ratio_of_rounded(row["megapixels_per_s"], megapixels, tiled, digits=3, value_digits=3), row
    reference = results["reference"]["fp32"]
    assert row["fraction_of_reference_gflops"] == pytest.approx(
        row["tiled_gflops_per_s"] / reference["unet_572_gflops_per_s"], abs=1e-3
    )
    checks = results["checks_bf16"]
    assert code == (0 if results["quick"] or all(checks.values()) else 1)


def test_data_pipeline_rates_are_positive_and_their_ratio_decides_the_exit(
    scripts: Callable[[str], ModuleType], tmp_path: Path, em_twin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = data_root(tmp_path, isbi2012=em_twin)
    args = ("--data-root", str(root), "--size", "32", "--batch", "1", "--seconds", "0.01")
    module = scripts("data_pipeline")
    built: list[str] = []

    def toy_model(name: str, **kwargs: Any) -> torch.nn.Module:  # the arithmetic, not the speed: width 8
        built.append(name)
        return create_model(name, **{**kwargs, "base_channels": 8})

    monkeypatch.setattr(module, "create_model", toy_model)
    code, results = run_main(module, tmp_path / "out", *args)
    assert built == ["unet_bn", "unet_bn"]  # the two training steps timed
    assert results["data"] == str(root / "isbi2012") and (results["crop"], results["batch"]) == (32, 1)
    rates = {k: v for k, v in results.items() if k.endswith("_images_per_s")}
    assert set(rates) == {
        "pipeline_images_per_s",
        "train_unet_bn_bf16_channels_last_images_per_s",
        "train_unet_bn_fp32_eager_images_per_s",
    }
    assert all(rate > 0 for rate in rates.values()), rates
    pipeline, training = (
        rates["pipeline_images_per_s"],
        rates["train_unet_bn_bf16_channels_last_images_per_s"],
    )
    over = results["pipeline_over_training"]
    assert ratio_of_rounded(over, pipeline, training, digits=2, value_digits=2), results
    assert code == (0 if results["pipeline_is_faster"] else 1)
    assert results["pipeline_is_faster"] is (over > 1) or over == 1.0  # 1.0: the rounding hides the side


@pytest.mark.slow
def test_fast_paths_speedups_follow_from_the_timings(
    scripts: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    module = scripts("fast_paths")
    args = ("--quick", "--skip-compile", "--data-root", str(tmp_path / "no-data"))
    code, results = run_main(module, tmp_path / "out", *args)
    assert code == 0  # --quick never fails on a missed target
    assert results["dice"] == {"skipped": f"no isbi2012 under {tmp_path / 'no-data'}"}
    for workload, check_name, target in (
        ("inference", f"unet_inference_at_least_{module.INFERENCE_TARGET}x", module.INFERENCE_TARGET),
        ("training", f"unet_bn_training_at_least_{module.TRAINING_TARGET}x", module.TRAINING_TARGET),
    ):
        paths = results[workload]["paths"]
        assert "compile_bf16_channels_last" not in paths  # --skip-compile
        assert "needs a CUDA device" in paths["cudnn_benchmark_bf16_channels_last"]["skipped"]
        base = paths["eager_fp32"]["seconds"]
        timed = {name: row for name, row in paths.items() if "seconds" in row}
        assert set(timed) == {"eager_fp32", "channels_last", "bf16_autocast", "bf16_channels_last"}
        for row in timed.values():
            assert row["seconds"] > 0
            assert row["speedup_over_eager_fp32"] == pytest.approx(base / row["seconds"], rel=1e-2)
        check = results["checks"][check_name]
        assert check["path"] == min(timed, key=lambda name: timed[name]["seconds"])
        assert check["speedup"] == timed[check["path"]]["speedup_over_eager_fp32"]
        assert check["passed"] is (check["speedup"] >= target)
        assert check["passed"] or check["why"].startswith("missed")


@pytest.mark.slow
def test_peers_pairs_are_flop_matched_and_their_ratios_follow_from_the_timings(
    scripts: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    pytest.importorskip("monai")
    code, results = run_main(scripts("peers"), tmp_path, "--quick")
    assert code == 0
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

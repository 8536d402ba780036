"""How fast is tiled prediction on a full-resolution Carvana image, and what does tiling cost? (issue 7)

For ``unet`` (the paper: valid convolutions, exact overlap-tile stitching) and ``unet_bn`` (padded, blended
windows), both at full width with randomly initialised weights (timing does not depend on the weight
values), in one process on one 1918x1280 RGB image:

- tiled: ``zoo.tiling.predict_labels``, what ``unet-zoo predict`` runs per image, at the default tile
  size (``zoo.tiling.DEFAULT_TILE``): megapixels of image per second;
- whole: one forward pass over the whole mirror-padded image, of exactly the extent the tiles read
  (the image itself for ``unet_bn``); the ratio tiled / whole (the issue asks for at most 1.3);
- GFLOP/s of the tiled path, counting the FLOPs of the tiles actually run (``zoo.cost.count_flops``),
  against a bare forward pass of ``unet`` at 572x572, batch 1, in the same precision and run (the issue
  asks for at least 85% in bf16 + channels-last).

Precisions: bf16 autocast + channels-last (predict's default on this CPU) and fp32 eager. Each timing is
the median of ``--repeats`` runs after one warm-up run. Writes
``benchmarks/results/tiled_prediction-<machine>.json``.

    python benchmarks/tiled_prediction.py [--data-root ../shared/data] [--repeats 3]
    python benchmarks/tiled_prediction.py --quick   # narrow models on a small image: proves it runs

The real image is the first ``carvana/train/*.jpg`` under the data root; without one, a synthetic car
of the same size (``zoo.data.synthetic``) stands in, and the results say so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zoo import create_model
from zoo.cost import count_flops
from zoo.data.io import read_image
from zoo.data.synthetic import write_car_twin
from zoo.machine import describe_machine, write_results
from zoo.models.base import SegmentationModel
from zoo.tiling import DEFAULT_TILE, mirror_pad, plan_axis, predict_labels

RESULTS = Path(__file__).parent / "results"
MAX_RATIO = 1.3
MIN_FRACTION = 0.85


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: oneDNN builds its kernels for each new shape on first use
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_image(data_root: Path, tmp: Path) -> tuple[np.ndarray, str]:
    images = sorted((data_root / "carvana" / "train").glob("*.jpg"))
    if images:
        return read_image(images[0], mode="RGB"), str(images[0])
    root = write_car_twin(tmp / "car", count=1, seed=0, height=1280, width=1918)
    path = next((root / "train").glob("*.jpg"))
    return read_image(
        path, mode="RGB"
    ), "synthetic car 1918x1280 (no carvana/train/*.jpg under the data root)"


def build(name: str, width: int | None, channels_last: bool) -> SegmentationModel:
    torch.manual_seed(0)
    overrides: dict[str, Any] = {} if width is None else {"base_channels": width}
    model = create_model(name, in_channels=3, num_classes=2, **overrides).eval()
    assert isinstance(model, SegmentationModel)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def forward_fn(
    model: SegmentationModel, x: torch.Tensor, dtype: torch.dtype | None, channels_last: bool
) -> Callable[[], object]:
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def run() -> object:
        with torch.no_grad(), ctx:
            return model(x)

    return run


def measure_model(
    name: str,
    image: torch.Tensor,
    *,
    width: int | None,
    tile: int,
    batch_size: int,
    dtype: torch.dtype | None,
    channels_last: bool,
    repeats: int,
) -> dict[str, Any]:
    model = build(name, width, channels_last)
    _, h, w = image.shape
    py, px = plan_axis(model, h, tile=tile), plan_axis(model, w, tile=tile)
    tiles = py.count * px.count
    tiled_flops = tiles * count_flops(model, (1, 3, py.window, px.window))
    tiled_s = median_seconds(
        lambda: predict_labels(
            model, image, tile=tile, batch_size=batch_size, autocast_dtype=dtype, channels_last=channels_last
        ),
        repeats,
    )
    (top, bottom), (left, right) = py.extent, px.extent
    padded = mirror_pad(image.float().div(255).unsqueeze(0), -top, bottom - h, -left, right - w)
    whole_flops = count_flops(model, tuple(padded.shape))
    whole_s = median_seconds(forward_fn(model, padded, dtype, channels_last), repeats)
    return {
        "model": name,
        "windows": f"{py.count}x{px.count} tiles of {py.window}x{px.window}",
        "tiles": tiles,
        "whole_input": f"{padded.shape[-2]}x{padded.shape[-1]}",
        "tiled_seconds": round(tiled_s, 3),
        "whole_seconds": round(whole_s, 3),
        "tiled_over_whole": round(tiled_s / whole_s, 3),
        "tiled_flops_over_whole_flops": round(tiled_flops / whole_flops, 3),
        "megapixels_per_s": round(h * w / 1e6 / tiled_s, 3),
        "tiled_gflops_per_s": round(tiled_flops / tiled_s / 1e9, 1),
        "whole_gflops_per_s": round(whole_flops / whole_s / 1e9, 1),
        "tiled_gflop": round(tiled_flops / 1e9, 1),
        "whole_gflop": round(whole_flops / 1e9, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--models", nargs="+", default=["unet", "unet_bn"])
    parser.add_argument("--precisions", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    parser.add_argument(
        "--tile", type=int, default=DEFAULT_TILE, help=f"largest tile side (default {DEFAULT_TILE})"
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, help="tiles per forward pass (predict's default 4)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="width 8, the image at a third of its size, tile 300, one repeat: checks the script, not speed",
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    width = 8 if args.quick else None
    tile = 300 if args.quick else args.tile
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        pixels, source = load_image(Path(args.data_root), Path(tmp))
    if args.quick:
        pixels = np.array(Image.fromarray(pixels).resize((pixels.shape[1] // 3, pixels.shape[0] // 3)))
    image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # uint8 (3, H, W), as predict reads it
    print(
        f"image: {source} ({image.shape[2]}x{image.shape[1]}); tile {tile}, batch {args.batch_size}",
        flush=True,
    )

    runs: list[dict[str, Any]] = []
    references: dict[str, dict[str, float]] = {}
    for precision in args.precisions:
        dtype = torch.bfloat16 if precision == "bf16" else None
        channels_last = precision == "bf16"
        ref_model = build("unet", width, channels_last)
        ref_flops = count_flops(ref_model, (1, 3, 572, 572))
        ref_s = median_seconds(
            forward_fn(ref_model, torch.rand(1, 3, 572, 572), dtype, channels_last), repeats
        )
        references[precision] = {
            "unet_572_seconds": round(ref_s, 4),
            "unet_572_gflops_per_s": round(ref_flops / ref_s / 1e9, 1),
        }
        print(f"[{precision}] reference unet 572x572: {ref_flops / ref_s / 1e9:.1f} GFLOP/s", flush=True)
        for name in args.models:
            row = measure_model(
                name,
                image,
                width=width,
                tile=tile,
                batch_size=args.batch_size,
                dtype=dtype,
                channels_last=channels_last,
                repeats=repeats,
            )
            row["precision"] = "bf16 autocast + channels-last" if channels_last else "fp32 eager"
            row["fraction_of_reference_gflops"] = round(
                row["tiled_gflops_per_s"] / references[precision]["unet_572_gflops_per_s"], 3
            )
            runs.append(row)
            print(
                f"[{precision}] {name}: {row['windows']}; {row['megapixels_per_s']} Mpx/s; tiled/whole "
                f"{row['tiled_over_whole']} (FLOPs {row['tiled_flops_over_whole_flops']}); "
                f"{row['tiled_gflops_per_s']} GFLOP/s = {row['fraction_of_reference_gflops']:.0%} of the "
                "572x572 reference",
                flush=True,
            )

    bf16 = [r for r in runs if r["precision"].startswith("bf16")]
    checks = {
        f"tiled_over_whole_at_most_{MAX_RATIO}": all(r["tiled_over_whole"] <= MAX_RATIO for r in bf16),
        f"unet_gflops_at_least_{MIN_FRACTION:.0%}_of_reference": all(
            r["fraction_of_reference_gflops"] >= MIN_FRACTION for r in bf16 if r["model"] == "unet"
        ),
    }
    results = {
        "benchmark": "tiled_prediction",
        "quick": args.quick,
        "image": source,
        "height": int(image.shape[1]),
        "width": int(image.shape[2]),
        "base_channels": width or "model default (64)",
        "weights": "random initialisation (timing does not depend on the weight values)",
        "tile": tile,
        "batch_size": args.batch_size,
        "repeats": repeats,
        "timing": "median after one warm-up; tiled = zoo.tiling.predict_labels on a uint8 image",
        "reference": references,
        "runs": runs,
        "checks_bf16": checks,
        "machine": describe_machine(),
    }
    out = write_results(f"tiled_prediction{'-quick' if args.quick else ''}", results, args.out)
    print(json.dumps(checks))
    print(f"written {out}")
    return 0 if args.quick or all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

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
the median of ``--repeats`` runs after ``--warmup`` (one) warm-up runs. Writes
``benchmarks/results/tiled_prediction-<machine>.json``.

    python benchmarks/tiled_prediction.py [--data-root ../shared/data] [--repeats 3]
    python benchmarks/tiled_prediction.py --quick   # narrow models on a small image: proves it runs

The real image is the first ``carvana/train/*.jpg`` under the data root; without one, a synthetic car
of the same size (``zoo.data.synthetic``) stands in, and the results say so.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import autocast, benchmark_parser, median_seconds, repeats_and_warmup, save_results
from PIL import Image

from zoo import create_model
from zoo.cost import count_flops
from zoo.data.io import read_image
from zoo.data.synthetic import write_car_twin
from zoo.machine import describe_machine
from zoo.models.base import SegmentationModel
from zoo.runtime import Precision
from zoo.tiling import DEFAULT_TILE, mirror_pad, plan_axis, predict_labels

CPU = torch.device("cpu")
MAX_RATIO = 1.3
MIN_FRACTION = 0.85


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

    def run() -> object:
        with torch.no_grad(), autocast(CPU, dtype):
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
    warmup: int,
) -> dict[str, Any]:
    model = build(name, width, channels_last)
    _, h, w = image.shape
    py, px = plan_axis(model, h, tile=tile), plan_axis(model, w, tile=tile)
    tiles = py.count * px.count
    tiled_flops = tiles * count_flops(model, (1, 3, py.window, px.window))
    tiled_s = median_seconds(
        lambda: predict_labels(
            model, image, tile=tile, batch_size=batch_size, precision=Precision(dtype, channels_last)
        ),
        CPU,
        repeats=repeats,
        warmup=warmup,
    )
    (top, bottom), (left, right) = py.extent, px.extent
    padded = mirror_pad(image.float().div(255).unsqueeze(0), -top, bottom - h, -left, right - w)
    whole_flops = count_flops(model, tuple(padded.shape))
    whole_s = median_seconds(
        forward_fn(model, padded, dtype, channels_last), CPU, repeats=repeats, warmup=warmup
    )
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
    parser = benchmark_parser(
        __doc__,
        data_root=True,
        repeats=3,
        warmup=1,
        quick="width 8, the image at a third of its size, tile 300, one repeat",
    )
    parser.add_argument("--models", nargs="+", default=["unet", "unet_bn"])
    parser.add_argument("--precisions", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    parser.add_argument(
        "--tile", type=int, default=DEFAULT_TILE, help=f"largest tile side (default {DEFAULT_TILE})"
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, help="tiles per forward pass (predict's default 4)"
    )
    args = parser.parse_args(argv)

    width = 8 if args.quick else None
    tile = 300 if args.quick else args.tile
    repeats, warmup = repeats_and_warmup(args)
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
            forward_fn(ref_model, torch.rand(1, 3, 572, 572), dtype, channels_last),
            CPU,
            repeats=repeats,
            warmup=warmup,
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
                warmup=warmup,
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
        "warmup": warmup,
        "timing": "median after warm-up; tiled = zoo.tiling.predict_labels on a uint8 image",
        "reference": references,
        "runs": runs,
        "checks_bf16": checks,
        "machine": describe_machine(),
    }
    print(json.dumps(checks))
    save_results("tiled_prediction", results, args.out, quick=args.quick)
    return 0 if args.quick or all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

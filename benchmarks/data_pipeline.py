"""Is the augmented ISBI pipeline faster than training consumes it? (issue 3)

Measures, in one run on one machine:
- images/s of the full augmented ISBI pipeline (in-memory slices, random crops, the paper's weight map,
  batched augmentation: flips, rotation, scale, shift, elastic deformation, gray values);
- images/s of a `unet_bn` training step at the same crop size and batch (bf16 autocast + channels-last,
  the harness's CPU default, and plain fp32 eager for reference);
and writes ``benchmarks/results/data_pipeline-<machine>.json``.

    python benchmarks/data_pipeline.py [--data-root ../shared/data] [--size 256] [--batch 4]

Real ISBI slices are used when the data root has them, else a synthetic twin.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import autocast, benchmark_parser, save_results

from zoo import create_model
from zoo.data import ISBI2012Dataset
from zoo.data.augment import AugmentConfig, augment_batch
from zoo.data.loader import RandomCrops, make_loader, unit_float
from zoo.data.synthetic import write_em_twin
from zoo.machine import describe_machine


def images_per_second(step: Callable[[], int], *, warmup: int, seconds: float) -> tuple[float, int]:
    """Run ``step`` (returns images processed) after ``warmup`` calls for at least ``seconds``."""
    for _ in range(warmup):
        step()
    images, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        images += step()
    return images / elapsed, images


def pipeline_step_fn(ds: ISBI2012Dataset, size: int, batch: int) -> Callable[[], int]:
    crops = RandomCrops(ds, range(len(ds)), (size, size), repeats=1000, seed=0)
    loader = make_loader(crops, batch_size=batch, shuffle=True, in_memory=True)
    batches = iter(loader)
    gen = torch.Generator().manual_seed(0)
    cfg = AugmentConfig()

    def step() -> int:
        image, mask, weight = next(batches)
        image, mask, weight = augment_batch(unit_float(image), mask, weight, config=cfg, generator=gen)
        return image.shape[0]

    return step


def train_step_fn(size: int, batch: int, *, bf16: bool) -> Callable[[], int]:
    model = create_model("unet_bn", in_channels=1, num_classes=2).train()
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 1, size, size)
    if bf16:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch, size, size))
    dtype = torch.bfloat16 if bf16 else None

    def step() -> int:
        opt.zero_grad(set_to_none=True)
        with autocast("cpu", dtype):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return batch

    return step


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, data_root=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each rate is measured")
    args = parser.parse_args(argv)

    isbi = Path(args.data_root) / "isbi2012"
    with tempfile.TemporaryDirectory() as tmp:
        if isbi.is_dir():
            source = str(isbi)
        else:
            source = "synthetic twin (30 slices, seed 0)"
            isbi = write_em_twin(Path(tmp) / "em", count=30, seed=0)
        ds = ISBI2012Dataset(isbi, weight_map=True)
    print(f"data: {source}, {len(ds)} slices; crops {args.size}x{args.size}, batch {args.batch}", flush=True)
    results: dict[str, object] = {
        "benchmark": "data_pipeline",
        "data": source,
        "crop": args.size,
        "batch": args.batch,
        "augment": AugmentConfig().as_params(),
        "machine": describe_machine(),
    }
    runs = {
        "pipeline_images_per_s": pipeline_step_fn(ds, args.size, args.batch),
        "train_unet_bn_bf16_channels_last_images_per_s": train_step_fn(args.size, args.batch, bf16=True),
        "train_unet_bn_fp32_eager_images_per_s": train_step_fn(args.size, args.batch, bf16=False),
    }
    for key, step in runs.items():
        rate, n = images_per_second(step, warmup=2, seconds=args.seconds)
        results[key] = round(rate, 2)
        print(f"{key}: {rate:.2f} ({n} images)", flush=True)
    ratio = results["pipeline_images_per_s"] / results["train_unet_bn_bf16_channels_last_images_per_s"]  # type: ignore[operator]
    results["pipeline_over_training"] = round(ratio, 2)
    results["pipeline_is_faster"] = ratio > 1
    print(f"pipeline / training = {ratio:.1f}x")
    save_results("data_pipeline", results, args.out)
    return 0 if ratio > 1 else 1


if __name__ == "__main__":
    sys.exit(main())

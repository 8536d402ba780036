"""The paper's U-Net at 572x572 on a GPU, set beside NVIDIA's published A100 figures (issue 8).

NVIDIA's DeepLearningExamples report, for their UNet Medical (the Ronneberger et al. network on
572x572 tiles) on an A100 with automatic mixed precision, 118.98 training images/s at batch 8 and
423.76 inference images/s at batch 16. This script measures the zoo's ``unet`` (width 64, one input
channel, two classes) the same way: a training step (forward under bf16 autocast, cross-entropy in
fp32, backward, AdamW) at ``--train-batch`` 8 and a forward pass at ``--infer-batch`` 16, channels-last,
``cudnn.benchmark`` on, and, for inference, also replayed from a CUDA graph. Images/s is batch over the
median step time after warm-up, the device synchronised before each clock read.

Model FLOPs utilisation (MFU) = achieved model FLOP/s over the device's dense bf16 peak: model FLOPs
are ``zoo.cost.count_flops`` (2 per multiply-add) for a forward pass and three times that for a
training step (forward + the two backward products). The peak comes from a table of NVIDIA's datasheet
figures keyed by device name, or from ``--peak-tflops`` for a device the table lacks.

On a CPU the script runs too (slowly; ``--quick`` shrinks it to width 8 and a 188x188 tile to prove it
works); its ratios to the A100 are recorded but mean little. Writes
``benchmarks/results/unet572_throughput-<machine>.json``.

    python benchmarks/unet572_throughput.py --device cuda [--repeats 20] [--warmup 5]
    python benchmarks/unet572_throughput.py --quick      # CPU, tiny: checks the script, not speed
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import torch
from _common import benchmark_parser, median_seconds, parse_device, repeats_and_warmup, save_results
from fast_paths import cuda_graph_inference, cudnn_benchmark, inference_fn, training_fn

from zoo import create_model
from zoo.cost import count_flops
from zoo.machine import describe_machine

# NVIDIA DeepLearningExamples, TensorFlow2 UNet_Medical, A100 80GB, AMP (the figures issue 8 quotes)
A100_REFERENCE: dict[str, Any] = {
    "source": "NVIDIA DeepLearningExamples, TensorFlow2/Segmentation/UNet_Medical, A100, mixed precision",
    "training_images_per_s": 118.98,
    "training_batch": 8,
    "inference_images_per_s": 423.76,
    "inference_batch": 16,
}

# dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; matched on whole words
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10": 125.0,
}


def peak_tflops(device_name: str) -> float | None:
    """The table's bf16 dense peak for a CUDA device name: the most specific key found in it as whole
    words ("A100" is not found in "RTX A1000", nor "L4" in "L40")."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", device_name):
            return PEAK_BF16_TFLOPS[key]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(
        __doc__,
        device="cuda" if torch.cuda.is_available() else "cpu",
        repeats=20,
        warmup=5,
        quick="width 8, 188x188, batch 2, one repeat",
    )
    parser.add_argument("--size", type=int, default=572, help="input tile side (output 388 at 572)")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--infer-batch", type=int, default=16)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    args = parser.parse_args(argv)

    device = parse_device(parser, args.device)
    width = 8 if args.quick else 64
    size = 188 if args.quick else args.size
    train_batch, infer_batch = (2, 2) if args.quick else (args.train_batch, args.infer_batch)
    repeats, warmup = repeats_and_warmup(args)

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        model = create_model("unet", in_channels=1, num_classes=2, base_channels=width)
        return model.to(device).to(memory_format=torch.channels_last)

    model = build()
    valid = model.nearest_valid_input_size(size)  # type: ignore[operator]
    if valid != size:
        parser.error(f"--size {size} is not a valid input size of the paper's unet; use {valid}")
    out_side = model.output_size(size)  # type: ignore[operator]
    flops_per_image = count_flops(model, (1, 1, size, size))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else describe_machine()["cpu"]
    peak = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
    dtype = torch.bfloat16

    def channels_last(batch: int, *, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(batch, 1, size, size, generator=gen)
        return x.to(device).contiguous(memory_format=torch.channels_last)

    rows: dict[str, dict[str, Any]] = {}

    def record(key: str, seconds: float, batch: int, flop_factor: int, reference: float) -> None:
        images = batch / seconds
        achieved = images * flops_per_image * flop_factor
        rows[key] = {
            "batch": batch,
            "seconds_per_step": round(seconds, 6),
            "images_per_s": round(images, 2),
            "model_tflops_per_s": round(achieved / 1e12, 3),
            "mfu": round(achieved / (peak * 1e12), 4) if peak else None,
            "over_a100_reference": round(images / reference, 3),
        }
        print(f"{key:28s} {rows[key]}", flush=True)

    with cudnn_benchmark(True):
        x = channels_last(train_batch, seed=1)
        y = torch.randint(0, 2, (train_batch, out_side, out_side), generator=torch.Generator().manual_seed(2))
        step = training_fn(model.train(), x, y.to(device), dtype, device)
        # AdamW (the harness's optimiser); NVIDIA's UNet Medical uses Adam, the same work per step
        seconds = median_seconds(step, device, repeats=repeats, warmup=warmup)
        record("training_bf16", seconds, train_batch, 3, A100_REFERENCE["training_images_per_s"])

        model = build().eval()
        x = channels_last(infer_batch, seed=3)
        reference = A100_REFERENCE["inference_images_per_s"]
        forward = inference_fn(model, x, dtype, device)
        seconds = median_seconds(forward, device, repeats=repeats, warmup=warmup)
        record("inference_bf16", seconds, infer_batch, 1, reference)
        if device.type == "cuda":
            graphed = cuda_graph_inference(model, x, dtype, device)
            seconds = median_seconds(graphed, device, repeats=repeats, warmup=warmup)
            record("inference_bf16_cuda_graph", seconds, infer_batch, 1, reference)
        memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    results = {
        "benchmark": "unet572_throughput",
        "quick": args.quick,
        "device": str(device),
        "device_name": name,
        "model": f"unet (width {width}, valid 3x3 convolutions), 1 input channel, 2 classes",
        "input": [1, size, size],
        "output": [out_side, out_side],
        "gflop_per_image_forward": round(flops_per_image / 1e9, 3),
        "precision": "bf16 autocast, channels-last, cudnn.benchmark; loss in fp32; AdamW (lr 1e-4)",
        "repeats": repeats,
        "warmup": warmup,
        "peak_bf16_tflops": peak,
        "peak_source": "--peak-tflops" if args.peak_tflops else "NVIDIA datasheet table in this script",
        "a100_reference": A100_REFERENCE,
        "runs": rows,
        "max_memory_gib": round(memory, 2) if memory is not None else None,
        "machine": describe_machine(device),
    }
    print(json.dumps({k: v["images_per_s"] for k, v in rows.items()}))
    save_results("unet572_throughput", results, args.out, quick=args.quick, device=device)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What does the harness add to a bare training step? (issue 4: at most 10%)

Runs, in one process on one machine, for the same model, batch, crop and dtype:
- bare: a loop of forward / loss / backward / optimiser step on tensors already in memory;
- harness: ``zoo.harness.train`` epochs (random crops from the dataset, batched augmentation on the
  device, the loss with its checks, per-epoch metrics to MLflow, checkpoint), timed by its own
  ``train_seconds`` per epoch; validation is timed apart (``epoch_seconds - train_seconds``).
Both run on ``--device`` (default: CUDA when there is one); valid-convolution models (the paper's
``unet``) take the nearest accepted crop and their loss on the output window, as the harness does.
Writes ``benchmarks/results/harness_overhead-<machine>.json``.

    python benchmarks/harness_overhead.py [--model unet_bn] [--width 32] [--crop 192] [--batch 4]
"""

from __future__ import annotations

import json
import sys
import tempfile

import torch
import torch.nn.functional as F
from _common import autocast, benchmark_parser, save_results

from zoo import create_model
from zoo.harness import Tracker, TrainConfig, train
from zoo.harness.throughput import time_call
from zoo.machine import describe_machine
from zoo.runtime import resolve_amp, resolve_device


def bare_seconds_per_step(
    model_name: str,
    width: int,
    crop: int,
    batch: int,
    steps: int,
    amp: str,
    device: torch.device | str = "cpu",
) -> float:
    """Seconds per optimiser step of a plain loop on tensors already on ``device``: the floor the
    harness's own step is compared with."""
    device = resolve_device(str(device))  # as the harness sets the device up (denormals flushed on CPU)
    torch.manual_seed(0)
    model = create_model(model_name, in_channels=1, num_classes=2, base_channels=width).train()
    # the harness trains valid-convolution models at the nearest accepted crop, on the output window
    crop = model.nearest_valid_input_size(crop)  # type: ignore[operator]
    out_side = model.output_size(crop)  # type: ignore[operator]
    dtype = resolve_amp(amp, device)
    model = model.to(device)
    if dtype is not None:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, crop, crop).to(device)
    if dtype is not None:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch, out_side, out_side)).to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()

    def steps_in_a_row() -> None:  # as the harness runs them: no wait for the device between steps
        for _ in range(steps):
            step()

    for _ in range(3):
        step()
    (seconds,) = time_call(steps_in_a_row, warmup=0, repeats=1, device=device)
    return seconds / steps


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, device="auto")
    parser.add_argument("--model", default="unet_bn")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--amp", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            model=args.model,
            dataset="isbi2012",
            overrides={"base_channels": args.width},
            epochs=args.epochs,
            steps_per_epoch=args.steps,
            batch_size=args.batch,
            crop=args.crop,
            amp=args.amp,
            device=str(device),
            loss="ce",
            synthetic={"count": 12, "size": 256},
            max_val_images=2,
        )
        tracker = Tracker("overhead", workdir=tmp)
        result = train(cfg, tracker=tracker, workdir=tmp, progress=False)
        history = {
            key: sorted(tracker.client.get_metric_history(result.run_id, key), key=lambda h: h.step)
            for key in ("train_seconds", "train_steps", "epoch_seconds")
        }
    # the first epoch includes one-off warm-up (allocator, kernels): compare the later ones
    later = slice(1, None)
    train_s = sum(h.value for h in history["train_seconds"][later])
    steps = sum(h.value for h in history["train_steps"][later])
    val_s = sum(
        e.value - t.value
        for e, t in zip(history["epoch_seconds"][later], history["train_seconds"][later], strict=True)
    )
    harness_step = train_s / steps
    bare_step = bare_seconds_per_step(
        args.model, args.width, args.crop, args.batch, args.steps, args.amp, device
    )
    overhead = harness_step / bare_step - 1
    results = {
        "benchmark": "harness_overhead",
        "model": args.model,
        "base_channels": args.width,
        "crop": args.crop,
        "batch": args.batch,
        "amp": args.amp,
        "device": str(device),
        "steps_compared": steps,
        "bare_seconds_per_step": round(bare_step, 4),
        "harness_seconds_per_step": round(harness_step, 4),
        "overhead_fraction": round(overhead, 4),
        "within_10_percent": overhead <= 0.10,
        "validation_and_checkpoint_seconds_per_epoch": round(
            val_s / max(len(history["train_seconds"]) - 1, 1), 3
        ),
        "machine": describe_machine(device),
    }
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))
    save_results("harness_overhead", results, args.out, device=device)
    return 0 if overhead <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())

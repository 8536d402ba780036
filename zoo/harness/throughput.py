"""Cost figures measured the same way for every model: after warm-up, device synchronised before each
clock read, with the conditions (device, dtype, memory format, batch, size) stated beside them."""

from __future__ import annotations

import contextlib
import copy
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from zoo.cost import count_flops, count_parameters
from zoo.models.base import SegmentationModel
from zoo.runtime import Precision

__all__ = ["PeakMemory", "measure_cost", "synchronize", "time_call"]


def synchronize(device: torch.device | str) -> None:
    """Wait for ``device``'s queued work: a GPU runs ahead of the host, so a clock read before this
    would time the launch, not the computation. A no-op on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a code block: CUDA allocator peak on GPU; on CPU the process's peak resident set
    (Linux VmHWM, reset first through /proc/self/clear_refs), which includes the interpreter."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            # not Linux, or not allowed: the figure is then the process's lifetime peak
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        status = Path("/proc/self/status")
        if status.is_file():
            m = re.search(r"VmHWM:\s+(\d+)\s+kB", status.read_text(encoding="utf-8"))
            if m:
                self.peak_mb = int(m.group(1)) / 1024


def time_call(
    fn: Callable[[], object], *, warmup: int, repeats: int, device: torch.device | str
) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls (oneDNN and cuDNN
    pick their kernels on first use), ``device`` synchronised before each clock read. The one timing
    loop of the project: the harness's cost figures and the benchmark scripts both measure with it."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"time_call: repeats={repeats}, warmup={warmup}; need repeats >= 1, warmup >= 0")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def measure_cost(
    model: SegmentationModel,
    *,
    size: int,
    batch: int,
    precision: Precision,
    warmup: int = 2,
    iters: int = 5,
) -> dict[str, float]:
    """params, GFLOPs (one image), training and inference images/s at ``batch``, batch-1 latency (ms,
    median) and peak memory (MB) of the training measurement, all in ``precision`` (the run's autocast
    dtype and memory format). The model itself is not changed."""
    device = next(model.parameters()).device
    size = model.nearest_valid_input_size(size)
    autocast = precision.autocast(device)
    x = precision.input(torch.rand(batch, model.in_channels, size, size, device=device))
    x1 = precision.input(x[:1].contiguous())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        flops = count_flops(model, (1, model.in_channels, size, size))

        def infer() -> None:
            with autocast:
                model(x)

        def infer1() -> None:
            with autocast:
                model(x1)

        infer_times = time_call(infer, warmup=warmup, repeats=iters, device=device)
        latency = statistics.median(time_call(infer1, warmup=warmup, repeats=iters, device=device))
    model.train(was_training)

    trainee = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(trainee.parameters(), lr=1e-6)
    out = trainee.output_size(size)
    target = torch.randint(0, trainee.num_classes, (batch, out, out), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(trainee(x).float(), target)
        loss.backward()
        opt.step()

    with PeakMemory(device) as peak:
        train_times = time_call(step, warmup=warmup, repeats=iters, device=device)
    return {
        "params": float(count_parameters(model)),
        "gflops": flops / 1e9,
        "train_images_per_s": batch * len(train_times) / sum(train_times),
        "infer_images_per_s": batch * len(infer_times) / sum(infer_times),
        "latency_ms": latency * 1000,
        "peak_memory_mb": peak.peak_mb,
    }

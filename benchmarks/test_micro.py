"""Micro-benchmarks: one forward pass and one training step of every registered model, at a fixed size
and batch, in fp32 eager and in the harness's default fast path (``amp="auto"``: bf16 autocast where the
CPU supports it, with channels-last, as ``zoo.harness.training.prepare_model`` sets it up).

Two modes, one file:

- disabled (the normal test run; ``--benchmark-disable`` is in pytest's ``addopts``): each benchmarked
  function runs once, on the model's ``tiny`` overrides at ``SMOKE_SIZE``, and the test checks the
  result (output shape, dtype and finiteness; a finite loss that moves every parameter);
- enabled: the registered recipe at its default width, at ``BENCH_SIZE`` with batch ``BATCH``, timed;
  ``tox -e bench`` runs this and writes ``benchmarks/results/micro-<machine>.json``::

      python -m pytest benchmarks/test_micro.py --benchmark-enable --benchmark-warmup=on \\
          --benchmark-warmup-iterations=1 --benchmark-json=benchmarks/results

CPU only: pytest-benchmark reads a host clock and would not synchronise a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pytest_benchmark.fixture import BenchmarkFixture
from torch import Tensor

from zoo import list_models
from zoo.cost import count_parameters
from zoo.harness import TrainConfig
from zoo.harness.training import prepare_model
from zoo.models import SegmentationModel
from zoo.registry import get_entry
from zoo.runtime import resolve_amp

IN_CHANNELS, NUM_CLASSES, BATCH = 3, 2, 2
# Input side by padding mode. "same": 192 px keeps the deepest (1/32) stage at 6x6 and a default-width
# training step at a few seconds on a 2-core CPU. "valid": the paper's U-Net tile that trains a 132 px
# output window (the cpu suite's crop).
BENCH_SIZE = {"same": 192, "valid": 316}
# With the tiny overrides; 188 is the smallest input the depth-4 paper U-Net accepts.
SMOKE_SIZE = {"same": 64, "valid": 188}
# benchmark id -> the harness's ``amp`` option
PATHS = {"fp32": "none", "amp": "auto"}
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread_when_smoke(benchmark: BenchmarkFixture) -> Iterator[None]:
    """Smoke runs use one thread: tiny tensors gain nothing from more, and on a busy shared CPU the
    OpenMP threads' spin-waiting made the disabled run about 8x slower (37 s against 5 s here)."""
    if not benchmark.disabled:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class Case:
    model: SegmentationModel
    amp: torch.dtype | None
    x: Tensor
    target: Tensor
    output_size: int

    def autocast(self) -> torch.autocast:
        return torch.autocast(CPU.type, dtype=self.amp, enabled=self.amp is not None)


def _case(benchmark: BenchmarkFixture, name: str, path: str) -> Case:
    """The model as the harness would prepare it, its input and target, all recorded in extra_info."""
    if PATHS[path] == "auto" and resolve_amp("auto", CPU) is None:
        pytest.skip("this CPU has no bf16: the harness default is then fp32 eager, benchmarked as 'fp32'")
    smoke = benchmark.disabled
    overrides: dict[str, Any] = dict(get_entry(name).tiny) if smoke else {}
    # prepare_model reads only model, overrides, amp and channels_last; dataset is required but unused
    cfg = TrainConfig(model=name, dataset="isbi2012", overrides=overrides, amp=PATHS[path], device="cpu")
    model, precision = prepare_model(cfg, IN_CHANNELS, NUM_CLASSES, CPU)
    amp, channels_last = precision.autocast_dtype, precision.channels_last
    size = model.nearest_valid_input_size((SMOKE_SIZE if smoke else BENCH_SIZE)[model.padding_mode])
    out = model.output_size(size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(BATCH, IN_CHANNELS, size, size).contiguous(memory_format=fmt)
    target = torch.randint(0, NUM_CLASSES, (BATCH, out, out))
    benchmark.extra_info.update(
        model=name,
        path=path,
        overrides=overrides,
        params=count_parameters(model),
        batch=BATCH,
        input_size=size,
        output_size=out,
        autocast_dtype=str(amp).removeprefix("torch.") if amp is not None else None,
        memory_format="channels_last" if channels_last else "contiguous",
        torch_threads=torch.get_num_threads(),
    )
    return Case(model=model, amp=amp, x=x, target=target, output_size=out)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list_models())
def test_forward(benchmark: BenchmarkFixture, name: str, path: str) -> None:
    case = _case(benchmark, name, path)
    model = case.model.eval()
    benchmark.group = f"forward, batch {BATCH}"

    def forward() -> Tensor:
        with torch.no_grad(), case.autocast():
            return model(case.x)

    logits = benchmark(forward)
    assert logits.shape == (BATCH, NUM_CLASSES, case.output_size, case.output_size)
    # a float32 output on the amp path would mean the timed path is not the one named
    assert logits.dtype == (case.amp or torch.float32)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list_models())
def test_train_step(benchmark: BenchmarkFixture, name: str, path: str) -> None:
    case = _case(benchmark, name, path)
    model = case.model.train()
    # no weight decay: AdamW's decay would move every weight even without a gradient
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    benchmark.group = f"train step, batch {BATCH}"

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        with case.autocast():
            logits = model(case.x)
        loss = F.cross_entropy(logits.float(), case.target)  # the loss in fp32, as the harness takes it
        loss.backward()
        opt.step()
        return loss.detach()

    loss = benchmark(step)
    assert torch.isfinite(loss), f"{name} ({path}): loss {loss.item()}"
    params = dict(model.named_parameters())
    unchanged = [n for n, p in params.items() if torch.equal(p, before[n])]
    assert not unchanged, f"{name} ({path}): the step left these parameters as they were: {unchanged}"
    non_finite = [n for n, p in params.items() if not torch.isfinite(p).all()]
    assert not non_finite, f"{name} ({path}): non-finite parameters after the step: {non_finite}"

"""Plumbing for the pytest-benchmark micro-benchmarks (``benchmarks/test_micro.py``).

- ``--benchmark-json=DIR`` with an existing folder writes ``DIR/micro-<machine_slug>.json``, the results
  file named after the machine like every other file in ``benchmarks/results``.
- The JSON's ``machine_info`` carries ``zoo.machine.describe_machine()`` under ``"zoo"``.
- Every test starts from the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from zoo.machine import describe_machine, machine_slug


# tryfirst: pytest-benchmark reads --benchmark-json in its own (trylast) pytest_configure
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    target = config.getoption("benchmark_json", default=None)
    if target is not None and Path(target).is_dir():
        config.option.benchmark_json = Path(target) / f"micro-{machine_slug()}.json"


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    machine_info["zoo"] = {**describe_machine("cpu"), "slug": machine_slug("cpu")}


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    torch.manual_seed(0)
    yield

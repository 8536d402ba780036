"""What the benchmark scripts share, written once: their command-line scaffold (device, repeats,
warm-up, ``--quick``, data root, output folder), the results file named after the machine, the timing
(``zoo.harness.throughput.time_call``: warm-up, the device synchronised before each clock read) and the
autocast context of a precision.

Each script imports this as ``_common`` (a script's folder is first on ``sys.path``); the tests do the
same with ``benchmarks/`` put on the path.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from zoo.harness.throughput import time_call
from zoo.machine import write_results
from zoo.runtime import Precision

__all__ = [
    "DEFAULT_DATA_ROOT",
    "RESULTS",
    "autocast",
    "benchmark_parser",
    "median_seconds",
    "parse_device",
    "repeats_and_warmup",
    "save_results",
]

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
DEFAULT_DATA_ROOT = BENCHMARKS.parents[1] / "shared" / "data"


def benchmark_parser(
    doc: str | None,
    *,
    device: str | None = None,
    data_root: bool = False,
    repeats: int | None = None,
    warmup: int | None = None,
    quick: str | None = None,
) -> argparse.ArgumentParser:
    """A parser with the options a benchmark script asks for (an option whose argument is None is left
    out) and ``--out`` always: ``device`` is the ``--device`` default, ``repeats`` and ``warmup`` those
    of ``--repeats`` and ``--warmup``, ``quick`` the help of ``--quick`` (what the quick mode shrinks)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if data_root:
        parser.add_argument(
            "--data-root", default=str(DEFAULT_DATA_ROOT), help="folder holding the datasets' folders"
        )
    if device is not None:
        parser.add_argument(
            "--device",
            default=device,
            help=f"cpu, cuda[:N] or auto (CUDA when there is one; default {device})",
        )
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help="timed calls; the median counts")
    if warmup is not None:
        parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls before them")
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=f"{quick}: checks the script, not speed")
    parser.add_argument(
        "--out", default=str(RESULTS), help="folder of the results file, <benchmark>-<machine>.json"
    )
    return parser


def parse_device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """``--device NAME`` as a device ("auto": CUDA when there is one), or a usage error saying what to
    give instead."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device {name}: not a device; use cpu, cuda[:N] or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def repeats_and_warmup(args: argparse.Namespace) -> tuple[int, int]:
    """The timed and untimed calls: one each in ``--quick`` mode, which proves the path, not its speed."""
    return (1, 1) if args.quick else (args.repeats, args.warmup)


def median_seconds(
    fn: Callable[[], object], device: torch.device | str, *, repeats: int, warmup: int = 1
) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (``time_call``)."""
    return statistics.median(time_call(fn, warmup=warmup, repeats=repeats, device=device))


def autocast(device: torch.device | str, dtype: torch.dtype | None, *, cache: bool = True) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``, or a disabled autocast (plain eager) when ``dtype`` is None:
    :meth:`zoo.runtime.Precision.autocast`, the harness's own rule."""
    return Precision(dtype).autocast(device, cache=cache)


def save_results(
    stem: str,
    results: Mapping[str, Any],
    out_dir: str | Path,
    *,
    quick: bool = False,
    device: torch.device | str = "cpu",
) -> Path:
    """Write ``OUT_DIR/<stem>[-quick]-<machine>.json`` (a quick run never overwrites a real one), say
    where, and return the path."""
    out = write_results(f"{stem}-quick" if quick else stem, results, out_dir, device=device)
    print(f"written {out}", flush=True)
    return out

"""What machine a measurement ran on: recorded beside every timing, and used to name result files."""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["describe_machine", "machine_slug", "write_results"]


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device | str = "cpu") -> dict[str, str]:
    """Flat facts about the machine and software, as strings (ready for a results file or MLflow)."""
    dev = torch.device(device)
    facts = {
        "cpu": _cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_model(),
    }
    if dev.type == "cpu":
        facts["cpu_bf16"] = str(bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    return facts


def machine_slug(device: torch.device | str = "cpu") -> str:
    """A short file-name-safe name: the device's model and, for CPUs, the core count."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{_cpu_model()}-{os.cpu_count()}cores"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def write_results(
    name: str, results: Mapping[str, Any], out_dir: str | Path, *, device: torch.device | str = "cpu"
) -> Path:
    """Write a benchmark's results as ``OUT_DIR/<name>-<machine slug>.json`` (results are named after the
    machine they were measured on) and return the path."""
    out = Path(out_dir) / f"{name}-{machine_slug(device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return out

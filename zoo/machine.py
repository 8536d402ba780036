"""What machine a measurement ran on: recorded beside every timing, and used to name result files."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

__all__ = ["describe_machine", "machine_slug"]


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

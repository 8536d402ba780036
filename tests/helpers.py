"""Helpers shared by the test modules."""

from __future__ import annotations

import ast
import copy
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from zoo.factory import create_model
from zoo.harness.config import TrainConfig
from zoo.harness.tracking import default_tracking_uri, sqlite_path
from zoo.models.base import SegmentationModel
from zoo.registry import get_entry

TINY_RUN: dict[str, Any] = {
    "model": "unet_bn",
    "dataset": "isbi2012",
    "overrides": {"base_channels": 4},
    "epochs": 1,
    "steps_per_epoch": 1,
    "batch_size": 2,
    "crop": 64,
    "max_val_images": 1,
    "cost_batch": 1,
    "cost_size": 32,
    "synthetic": {"count": 6, "size": 96},
    "folds": 3,
    "fold": 2,
}
"""A run that takes seconds: unet_bn at width 4, one step of two 64x64 crops per epoch, on a small EM twin."""


TINY_SPACE = """
["tiny"]
description = "a test space"
models = ["*"]
datasets = ["*"]

["tiny".params]
lr = { low = 1e-4, high = 1e-1, log = true }
"overrides.dropout" = { choices = [0.0, 0.5] }
"""


def write_space(folder: Path, text: str = TINY_SPACE) -> Path:
    """A search-space file in ``folder`` (the tiny space by default: the learning rate and dropout)."""
    path = folder / "spaces.toml"
    path.write_text(text)
    return path


def tiny_run(**changes: Any) -> TrainConfig:
    """:data:`TINY_RUN` with ``changes``."""
    return TrainConfig.from_dict({**TINY_RUN, **changes})


class AnySizeModel(SegmentationModel):
    """Base of the hand-built test models: a padded model that takes any size >= 1 and keeps it."""

    padding_mode = "same"

    @property
    def input_multiple(self) -> int:
        return 1

    @property
    def min_input_size(self) -> int:
        return 1

    def _output_length(self, n: int) -> int | None:
        return n if n >= 1 else None


_TINY_MODELS: dict[str, SegmentationModel] = {}


def tiny_model(name: str, in_channels: int = 1, num_classes: int = 2, **overrides: Any) -> SegmentationModel:
    """The registered model at its smoke-test size (same structure, fewer channels): a copy of one built
    once per test session from seed 0 (building an smp encoder's network takes most of a second; copying
    it a tenth). The caller's random numbers are left as they were."""
    key = repr((name, in_channels, num_classes, sorted(overrides.items())))
    if key not in _TINY_MODELS:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = create_model(
                name,
                in_channels=in_channels,
                num_classes=num_classes,
                **{**get_entry(name).tiny, **overrides},
            )
        assert isinstance(model, SegmentationModel)
        _TINY_MODELS[key] = model
    return copy.deepcopy(_TINY_MODELS[key])


def small_size(model: SegmentationModel, target: int = 64) -> int:
    """A small input side the model accepts."""
    return model.nearest_valid_input_size(max(target, model.min_input_size))


def real_data_root() -> Path | None:
    """``../shared/data`` beside the repository (or $UNET_ZOO_DATA), if present."""
    env = os.environ.get("UNET_ZOO_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return root if root.is_dir() else None


def seed_store(template: Path, workdir: Path) -> Path:
    """``workdir`` (created) holding a copy of the empty store ``template`` (the ``store_template``
    fixture) where a Tracker, the CLI or a subprocess finds its default store; returns ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    target = sqlite_path(default_tracking_uri(workdir))
    assert target is not None and not target.exists(), target
    shutil.copyfile(template, target)
    return workdir


def module_level_imports() -> list[tuple[Path, list[str]]]:
    """Each module of the zoo with the names it imports at module level (what importing it runs; imports
    inside functions and `if TYPE_CHECKING:` blocks are not among them)."""
    found = []
    for path in sorted((Path(__file__).resolve().parents[1] / "zoo").rglob("*.py")):
        names: list[str] = []
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names.append(node.module or "")
        found.append((path, names))
    return found

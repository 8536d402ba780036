"""From a run's config to its dataset and split: real data when a root is given (or the dataset is a
file), else a synthetic twin."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from zoo.data import DataError, SegmentationDataset, Split
from zoo.data.datasets import Selection
from zoo.data.registry import DatasetEntry, get_dataset
from zoo.harness.config import TrainConfig

__all__ = ["RunData", "build_data"]

log = logging.getLogger(__name__)


@dataclass
class RunData:
    """A run's data: its registry entry, the dataset read, the split, and where the files came from."""

    entry: DatasetEntry
    dataset: SegmentationDataset
    split: Split
    source: str


STALE_TEMP_SECONDS = 3600


def _temp_beside(root: Path) -> Path:
    """A fresh name beside ``root`` for a twin being written or thrown away (matched by the sweep)."""
    return root.parent / f".{root.name}.{uuid.uuid4().hex}.tmp"


def _remove_stale_temps(root: Path) -> None:
    """Temp folders of twins whose writer was killed (untouched for an hour): nobody will finish them."""
    for old in root.parent.glob(f".{root.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > STALE_TEMP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)


def _synthetic_root(entry: DatasetEntry, settings: dict[str, int], workdir: Path) -> Path:
    """A twin generated once per (format, generation settings) and reused by later runs."""
    twin = entry.twin
    if twin is None:
        raise DataError(
            f"dataset {entry.name!r} has no synthetic twin; give --data-root (the folder that holds "
            f"{entry.folder}/)"
        )
    count = settings.get("count", twin.count)
    size = settings.get("size", twin.size)
    seed = settings.get("seed", 0)
    key = hashlib.sha1(f"{twin.kind}-{count}-{size}-{seed}".encode()).hexdigest()[:8]
    root = workdir / "synthetic" / f"{twin.kind}-{key}"
    done = root / ".complete"
    if not done.is_file():
        # Written aside and renamed into place whole: a process killed mid-way leaves only its own temp
        # folder (never a half twin under the real name), and two processes generating the same twin at
        # once both succeed: the first rename wins, the other's identical copy is discarded.
        log.info("writing synthetic %s twin to %s", twin.kind, root)
        root.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(root)
        tmp = _temp_beside(root)  # mkdir: the umask's mode, shared or not
        tmp.mkdir()
        twin.write(tmp, count=count, size=size, seed=seed)
        (tmp / ".complete").write_text("ok\n", encoding="utf-8")
        if root.is_dir() and not done.is_file():  # left by an older version cut short
            # renamed away first (atomic: one process wins), so no one deletes a twin another just placed
            trash = _temp_beside(root)
            with contextlib.suppress(OSError):
                os.rename(root, trash)
                shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:
            if not done.is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same twin first
    return root


def build_data(cfg: TrainConfig, workdir: str | Path) -> RunData:
    """Load the dataset the config names (from the registry, or a dataset file) and split it by the
    dataset's rule."""
    entry = get_dataset(cfg.dataset)
    root = entry.root(cfg.data_root)
    if root is None:
        root = _synthetic_root(entry, cfg.synthetic, Path(workdir))
        source = f"synthetic twin of {entry.name} ({root.name})"
    else:
        source = str(entry.source or root)
    select = None if cfg.max_cars is None else Selection(max_groups=cfg.max_cars, seed=cfg.split_seed)
    resize = (int(cfg.resize[0]), int(cfg.resize[1])) if cfg.resize else None
    dataset = entry.load(root, resize=resize, weight_map=cfg.weight_map, select=select)
    split = entry.split(
        dataset, folds=cfg.folds, fold=cfg.fold, val_fraction=cfg.val_fraction, seed=cfg.split_seed
    )
    return RunData(entry, dataset, split, source)

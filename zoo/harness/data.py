"""From a run's config to its dataset and split: real data when a root is given, else a synthetic twin."""

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

import numpy as np

from zoo.data import (
    CarvanaDataset,
    DataError,
    ISBI2012Dataset,
    SegmentationDataset,
    Split,
    block_kfold,
    group_split,
)
from zoo.data.synthetic import write_car_twin, write_em_twin
from zoo.harness.config import DATASETS, TrainConfig

__all__ = ["RunData", "build_data"]

log = logging.getLogger(__name__)


@dataclass
class RunData:
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


def _synthetic_root(cfg: TrainConfig, workdir: Path) -> Path:
    """A twin generated once per (dataset, generation settings) and reused by later runs."""
    kind = "isbi2012" if cfg.dataset == "isbi2012" else "carvana"
    count = cfg.synthetic.get("count", 24 if kind == "isbi2012" else 96)
    size = cfg.synthetic.get("size", 256 if kind == "isbi2012" else 192)
    seed = cfg.synthetic.get("seed", 0)
    key = hashlib.sha1(f"{kind}-{count}-{size}-{seed}".encode()).hexdigest()[:8]
    root = workdir / "synthetic" / f"{kind}-{key}"
    done = root / ".complete"
    if not done.is_file():
        # Written aside and renamed into place whole: a process killed mid-way leaves only its own temp
        # folder (never a half twin under the real name), and two processes generating the same twin at
        # once both succeed: the first rename wins, the other's identical copy is discarded.
        log.info("writing synthetic %s twin to %s", kind, root)
        root.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(root)
        tmp = _temp_beside(root)  # mkdir: the umask's mode, shared or not
        tmp.mkdir()
        if kind == "isbi2012":
            write_em_twin(tmp, count=count, seed=seed, size=size)
        else:
            write_car_twin(tmp, count=count, seed=seed, height=size * 2 // 3, width=size)
        (tmp / ".complete").write_text("ok\n")
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
    """Load the dataset the config names and split it (blocks of slices for ISBI, cars for Carvana)."""
    if cfg.data_root is None:
        root = _synthetic_root(cfg, Path(workdir))
        source = f"synthetic twin of {cfg.dataset} ({root.name})"
    else:
        root = Path(cfg.data_root) / DATASETS[cfg.dataset]
        if not root.is_dir():
            raise DataError(
                f"{root}: dataset folder not found for dataset={cfg.dataset!r} under "
                f"data_root={cfg.data_root!r}; point --data-root at the folder that holds it (e.g. "
                "../shared/data), or leave it out to use a synthetic twin"
            )
        source = str(root)
    if cfg.dataset == "isbi2012":
        resize = tuple(cfg.resize) if cfg.resize else None
        isbi = ISBI2012Dataset(root, weight_map=cfg.weight_map, resize=resize)  # type: ignore[arg-type]
        split = block_kfold(len(isbi), folds=cfg.folds, fold=cfg.fold)
        return RunData(isbi, split, source)
    cars = None
    if cfg.max_cars is not None:
        ids = sorted({p.name.split("_")[0] for p in (root / "train").glob("*.jpg")})
        order = np.random.default_rng(cfg.split_seed).permutation(len(ids))
        cars = sorted(ids[i] for i in order[: cfg.max_cars])
    resize = tuple(cfg.resize) if cfg.resize else None
    carvana = CarvanaDataset(root, resize=resize, cars=cars)  # type: ignore[arg-type]
    split = group_split(carvana.groups, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
    return RunData(carvana, split, source)

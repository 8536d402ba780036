"""Deterministic train/validation splits that respect how samples are correlated.

ISBI 2012 slices are neighbours in one volume: a validation slice next to a training slice is nearly a
copy of it, so slices are split in contiguous blocks. Carvana's 16 views of one car are near-duplicates,
so cars are split, never images. Every split records itself (``as_params``) for the run that uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zoo.errors import ConfigError

__all__ = ["Split", "block_kfold", "group_split"]


@dataclass(frozen=True)
class Split:
    """Indices of the training and validation samples, and how they were chosen."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    method: str
    detail: str

    def as_params(self, names: Sequence[str] | None = None) -> dict[str, str]:
        """A flat description to record with a run: method, detail, sizes, and the validation names."""
        val = [names[i] for i in self.val] if names is not None else [str(i) for i in self.val]
        return {
            "split_method": self.method,
            "split_detail": self.detail,
            "split_train_size": str(len(self.train)),
            "split_val_size": str(len(self.val)),
            "split_val_items": ",".join(val),
        }


def block_kfold(n: int, *, folds: int = 3, fold: int = 0, gap: int = 0) -> Split:
    """Fold ``fold`` of ``folds`` contiguous blocks of ``n`` ordered samples.

    The validation block is ``[start, stop)``; ``gap`` samples on each side of it are left out of
    training too, so no training slice touches a validation slice. Blocks differ in size by at most 1.
    """
    if folds < 2 or folds > n:
        raise ConfigError(
            f"folds={folds} must be between 2 and the number of samples ({n}); set folds (and fold) "
            "within it, e.g. --set folds=4"
        )
    if not 0 <= fold < folds:
        raise ConfigError(f"fold={fold} must be in 0..{folds - 1}")
    if gap < 0:
        raise ConfigError(f"gap={gap} must be >= 0")
    bounds = np.linspace(0, n, folds + 1).round().astype(int)
    start, stop = int(bounds[fold]), int(bounds[fold + 1])
    val = tuple(range(start, stop))
    train = tuple(i for i in range(n) if i < start - gap or i >= stop + gap)
    if not train:
        raise ConfigError(f"gap={gap} leaves no training samples for fold {fold} of {folds}; use more folds")
    return Split(train, val, "block_kfold", f"folds={folds} fold={fold} gap={gap} val=[{start},{stop})")


def group_split(groups: Sequence[str], *, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Hold out whole groups (e.g. car ids): about ``val_fraction`` of the groups, chosen by ``seed``.

    The result depends only on the set of groups and the seed, not on the order of the samples.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction} must be between 0 and 1")
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ConfigError(
            f"need at least 2 groups to split into training and validation, got {len(unique)} ({unique}); "
            "add data, or keep more groups (max_cars)"
        )
    n_val = min(len(unique) - 1, max(1, round(len(unique) * val_fraction)))
    order = np.random.default_rng(seed).permutation(len(unique))
    held = {unique[i] for i in order[:n_val]}
    val = tuple(i for i, g in enumerate(groups) if g in held)
    train = tuple(i for i, g in enumerate(groups) if g not in held)
    return Split(train, val, "group_split", f"val_fraction={val_fraction} seed={seed} val_groups={len(held)}")

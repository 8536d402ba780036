"""Batches for training and evaluation: random crops, and DataLoaders set up for the dataset at hand."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from zoo.data.datasets import SegmentationDataset
from zoo.errors import ConfigError
from zoo.tiling import mirror_index

__all__ = ["RandomCrops", "ShardedBatchSampler", "make_loader", "shard_bounds", "unit_float"]


def unit_float(image: torch.Tensor) -> torch.Tensor:
    """Images as models take them: uint8 crops (:class:`RandomCrops`) become float32 in [0, 1] (the
    dataset's own scaling, ``/ 255``); float images pass unchanged. Called on the training device, so the
    host copies and the transfer move a quarter of the bytes."""
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image


class RandomCrops(Dataset[tuple[torch.Tensor, ...]]):
    """Fixed-size random crops of the samples ``indices`` of ``dataset``, ``repeats`` crops per sample.

    ``context`` is for valid-convolution models, whose output is the crop shrunk by ``context`` on each
    side: samples are first mirror-padded by ``context`` (the paper's overlap-tile geometry), so the
    output window, not the input crop, ranges over the whole image, borders included. Samples still
    smaller than the crop are mirror-padded to it.

    Crop positions depend only on ``(seed, epoch, position)``: :meth:`set_epoch` changes them, a seed
    reproduces them, whatever the worker layout.

    A crop is ``(image uint8 (C, h, w), mask int64 (h, w)[, weight float32 (h, w)])``, cut from the
    dataset's decoded arrays by index (padding included: only the crop's pixels are copied); convert the
    images with :func:`unit_float` where they are used, on the device.
    """

    def __init__(
        self,
        dataset: SegmentationDataset,
        indices: Sequence[int],
        size: tuple[int, int],
        *,
        repeats: int = 1,
        seed: int = 0,
        context: int = 0,
    ) -> None:
        self.dataset, self.indices, self.size = dataset, list(indices), size
        self.repeats, self.seed, self.epoch, self.context = repeats, seed, 0, context

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices) * self.repeats

    def origin(self, position: int, height: int, width: int) -> tuple[int, int]:
        """Top-left corner of the crop in the (padded) sample of size ``height x width``."""
        rng = np.random.default_rng([self.seed, self.epoch, position])
        return int(rng.integers(0, height - self.size[0] + 1)), int(rng.integers(0, width - self.size[1] + 1))

    def __getitem__(self, position: int) -> tuple[torch.Tensor, ...]:
        index = self.indices[position % len(self.indices)]
        image, mask = self.dataset.arrays(index)
        pixels = torch.from_numpy(image)
        planes = [
            pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1),
            torch.from_numpy(mask),
        ]
        if self.dataset.weights is not None:
            planes.append(torch.from_numpy(self.dataset.weights[index]))
        rows, cols = self.window(position, mask.shape[0], mask.shape[1])
        return tuple(t.index_select(-2, rows).index_select(-1, cols) for t in planes)

    def window(self, position: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows and columns of a ``height x width`` sample that crop ``position`` reads: the sample
        mirrored by ``context`` on every side, then (if still smaller than the crop) mirrored again,
        evenly, up to the crop's size, and the crop placed at :meth:`origin` in that."""
        axes = []
        for length, size in ((height, self.size[0]), (width, self.size[1])):
            index = mirror_index(-self.context, length + self.context, length)
            short = size - len(index)
            if short > 0:  # mirrored as the padded sample would be, not as the original
                index = index[mirror_index(-(short // 2), len(index) + short - short // 2, len(index))]
            axes.append(index)
        top, left = self.origin(position, len(axes[0]), len(axes[1]))
        return axes[0][top : top + self.size[0]], axes[1][left : left + self.size[1]]


def shard_bounds(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous part of ``size`` rows split among ``world_size``
    ranks, the first ``size % world_size`` ranks one row longer (``torch.tensor_split``'s rule)."""
    q, r = divmod(size, world_size)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


class ShardedBatchSampler(Sampler[list[int]]):
    """Global batches in a seeded order, each cut among the ranks: this rank gets its part only.

    The order is ``torch.randperm(size)`` from a generator seeded with ``seed`` (or ``0..size-1``
    unshuffled), cut into consecutive global batches of ``batch_size`` (the last one partial); each is
    split into ``world_size`` contiguous parts (:func:`shard_bounds`). Like
    ``torch.utils.data.DistributedSampler`` every rank reads a disjoint ``1 / world_size`` of the data,
    but the cut is made per global batch, so the ranks together train on exactly the batches one process
    trains on (``world_size=1``). The order is this class's own, not DataLoader's: it does not depend
    on how often a loader is iterated or what else draws from a generator. :meth:`part` says where this
    rank's rows sit in batch ``i`` (for augmentations drawn per global batch). As with
    ``DistributedSampler``, :meth:`set_epoch` gives a reused sampler a new order each epoch (seeded with
    ``seed + epoch``); without it every pass repeats the same order.
    """

    def __init__(
        self, size: int, batch_size: int, *, rank: int = 0, world_size: int = 1, shuffle: bool, seed: int = 0
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if batch_size < world_size:
            raise ConfigError(
                f"a global batch of {batch_size} cannot give each of {world_size} ranks a sample; raise "
                f"--set batch_size to {world_size} or more"
            )
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle the next passes with ``seed + epoch``; call it on every rank with the same epoch."""
        if epoch < 0:
            raise ValueError(f"epoch {epoch} is negative; epochs count from 0")
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def part(self, i: int) -> tuple[int, int]:
        """``(offset, global size)`` of this rank's rows within global batch ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"global batch {i} out of range: an epoch has {len(self)}")
        total = min(self.batch_size, self.size - i * self.batch_size)
        return shard_bounds(total, self.rank, self.world_size)[0], total

    def first_short_batch(self) -> int | None:
        """The index of the first global batch too small to give every rank a sample (the last, partial
        one), or None when every batch reaches every rank."""
        last = self.size % self.batch_size
        if self.world_size > 1 and 0 < last < self.world_size:
            return len(self) - 1
        return None

    def order(self) -> list[int]:
        """Every index once, in the order the global batches take them."""
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        for first in range(0, self.size, self.batch_size):
            batch = order[first : first + self.batch_size]
            start, stop = shard_bounds(len(batch), self.rank, self.world_size)
            yield batch[start:stop]


def make_loader(
    data: Dataset[tuple[torch.Tensor, ...]],
    *,
    batch_size: int,
    shuffle: bool,
    in_memory: bool,
    seed: int = 0,
    device: torch.device | str = "cpu",
    workers: int | None = None,
    shard: tuple[int, int] | None = None,
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """A DataLoader tuned to where the samples come from.

    In-memory samples are served in the main process (worker processes would only add copying);
    samples decoded from files get worker processes, kept alive between epochs. Memory is pinned only
    when batches go to a CUDA device. The last partial batch is kept: no sample is dropped.
    ``shard=(rank, world_size)``: batches from a :class:`ShardedBatchSampler` (the loader's
    ``batch_sampler``), the harness's training order; ``batch_size`` is the global batch and this rank
    loads its part of each (``(0, 1)``: one process, all of it).
    """
    if workers is None:
        workers = 0 if in_memory else min(4, os.cpu_count() or 1)
    common: dict[str, Any] = {
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "pin_memory": torch.device(device).type == "cuda",
    }
    if shard is not None:
        rank, world_size = shard
        sampler = ShardedBatchSampler(
            len(data),  # type: ignore[arg-type]
            batch_size,
            rank=rank,
            world_size=world_size,
            shuffle=shuffle,
            seed=seed,
        )
        return DataLoader(
            data,
            batch_sampler=sampler,
            generator=torch.Generator().manual_seed(seed),  # worker seeds, not the global generator
            **common,
        )
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        drop_last=False,
        **common,
    )

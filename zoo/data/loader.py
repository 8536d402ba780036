"""Batches for training and evaluation: random crops, and DataLoaders set up for the dataset at hand."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data.datasets import SegmentationDataset
from zoo.tiling import mirror_pad

__all__ = ["RandomCrops", "make_loader"]


class RandomCrops(Dataset[tuple[torch.Tensor, ...]]):
    """Fixed-size random crops of the samples ``indices`` of ``dataset``, ``repeats`` crops per sample.

    ``context`` is for valid-convolution models, whose output is the crop shrunk by ``context`` on each
    side: samples are first mirror-padded by ``context`` (the paper's overlap-tile geometry), so the
    output window, not the input crop, ranges over the whole image, borders included. Samples still
    smaller than the crop are mirror-padded to it.

    Crop positions depend only on ``(seed, epoch, position)``: :meth:`set_epoch` changes them, a seed
    reproduces them, whatever the worker layout.
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
        sample: tuple[torch.Tensor, ...] = self.dataset[self.indices[position % len(self.indices)]]
        c = self.context
        if c:
            sample = tuple(_mirror(t, c, c, c, c) for t in sample)
        h, w = sample[0].shape[-2:]
        ch, cw = self.size
        if h < ch or w < cw:
            dh, dw = max(ch - h, 0), max(cw - w, 0)
            sample = tuple(_mirror(t, dh // 2, dh - dh // 2, dw // 2, dw - dw // 2) for t in sample)
            h, w = sample[0].shape[-2:]
        top, left = self.origin(position, h, w)
        return tuple(t[..., top : top + ch, left : left + cw].contiguous() for t in sample)


def _mirror(t: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    x = t if t.dim() == 3 else t.unsqueeze(0)
    out = mirror_pad(x.float(), top, bottom, left, right).to(t.dtype)
    return out if t.dim() == 3 else out.squeeze(0)


def make_loader(
    data: Dataset[tuple[torch.Tensor, ...]],
    *,
    batch_size: int,
    shuffle: bool,
    in_memory: bool,
    seed: int = 0,
    device: torch.device | str = "cpu",
    workers: int | None = None,
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """A DataLoader tuned to where the samples come from.

    In-memory samples are served in the main process (worker processes would only add copying);
    samples decoded from files get worker processes, kept alive between epochs. Memory is pinned only
    when batches go to a CUDA device. The last partial batch is kept: no sample is dropped.
    """
    if workers is None:
        workers = 0 if in_memory else min(4, os.cpu_count() or 1)
    cuda = torch.device(device).type == "cuda"
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=cuda,
        drop_last=False,
    )

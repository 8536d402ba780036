"""Evaluation on whole validation images (valid-convolution models through overlap-tiling)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zoo.data import SegmentationDataset
from zoo.metrics import MetricAccumulator
from zoo.models.base import SegmentationModel
from zoo.tiling import TiledInferer

__all__ = ["evaluate", "save_overlay"]


def evaluate(
    model: SegmentationModel,
    dataset: SegmentationDataset,
    indices: Sequence[int],
    *,
    inferer: TiledInferer | None = None,
    isbi: bool = False,
    max_images: int | None = None,
) -> dict[str, float]:
    """Quality on ``dataset[indices]`` (``zoo.metrics``): Dice, IoU and the misclassified fraction of the
    argmax, each per image then averaged; with ``isbi``, also the ISBI 2012 challenge's figures from the
    softmax probabilities (``pixel_error``, ``rand_error``, ``vrand``, ``vinfo``) and ``rand_error_argmax``.
    With more than two classes, also each foreground class's Dice and IoU, keyed by the dataset's class
    names (``dice_<class>``, ``iou_<class>``: :func:`zoo.metrics.class_metric_keys`).
    ``inferer`` predicts whole images (default: :class:`zoo.tiling.TiledInferer`'s defaults, float32);
    up to its ``batch_size`` images of one size are predicted together (the images may differ in size).
    The model is left in the mode it was in."""
    inferer = inferer or TiledInferer()
    chosen = list(indices)[: max_images if max_images is not None else None]
    acc = MetricAccumulator(dataset.num_classes, isbi=isbi, class_names=dataset.class_names)
    for samples in _same_size_batches(dataset, chosen, inferer.batch_size):
        images = torch.stack([s[0] for s in samples])
        masks = torch.stack([s[1] for s in samples])
        logits = inferer.logits(model, images)
        probs = logits.float().softmax(1) if isbi else None  # the challenge thresholds probabilities
        acc.update(logits.argmax(1), masks, probs=probs)
    return acc.compute()


def _same_size_batches(
    dataset: SegmentationDataset, indices: Sequence[int], batch_size: int
) -> Iterator[list[tuple[torch.Tensor, ...]]]:
    """The samples of ``dataset[indices]`` in order, in batches of at most ``batch_size`` that hold images
    of one size: a batch is one tensor, and a folder of photos mixes sizes. A batch ends early where the
    size changes; the figures are per image, so how the images are batched changes none of them."""
    batch: list[tuple[torch.Tensor, ...]] = []
    for i in indices:
        sample = dataset[i]
        if batch and (len(batch) == batch_size or sample[0].shape != batch[0][0].shape):
            yield batch
            batch = []
        batch.append(sample)
    if batch:
        yield batch


def save_overlay(path: str | Path, image: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor) -> Path:
    """A PNG of image | truth | prediction side by side (foreground in colour over the image)."""
    img = image.float().clamp(0, 1)
    rgb = (img.repeat(3, 1, 1) if img.shape[0] == 1 else img[:3]).permute(1, 2, 0).numpy()

    def tint(mask: torch.Tensor, colour: tuple[float, float, float]) -> np.ndarray:
        m = (mask > 0).numpy()[..., None]
        return np.where(m, 0.5 * rgb + 0.5 * np.array(colour), rgb)

    panel = np.concatenate([rgb, tint(truth, (0.0, 1.0, 0.0)), tint(pred, (1.0, 0.0, 1.0))], axis=1)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((panel * 255).round().astype(np.uint8)).save(out)
    return out

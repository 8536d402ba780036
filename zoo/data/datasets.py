"""Segmentation datasets: ISBI 2012 and Carvana (a user's image/mask folder: :mod:`zoo.data.folder`).

A sample is ``(image, mask)``: image float32 ``(C, H, W)`` scaled to [0, 1], mask int64 ``(H, W)`` of
class indices. Every dataset also knows each sample's ``names`` (file stems, for reports) and ``groups``
(what must not be split apart: the car for Carvana, the slice for ISBI), so splits can be made right.

Small datasets are decoded once and kept in memory (ISBI always; others when they fit in
``cache_bytes``); larger ones decode per access, which DataLoader workers parallelise.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from zoo.data.io import WIDE_MODES, DataError, image_info, read_image, read_stack
from zoo.data.weightmap import unet_weight_map
from zoo.errors import ConfigError

__all__ = [
    "CarvanaDataset",
    "ISBI2012Dataset",
    "Item",
    "SegmentationDataset",
    "Selection",
    "detect_layout",
    "resize_image",
]

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 2 * 1024**3


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 image ``(H, W)`` or ``(H, W, C)`` resampled to ``size = (H', W')``, aspect ratio not kept:
    Pillow's bilinear filter, which widens with the reduction (antialiased). The one resampling of
    images: datasets resize with it, and ``unet-zoo predict`` brings inputs to a training scale with it."""
    h, w = size
    if image.ndim == 3 and image.shape[2] == 1:
        return resize_image(image[..., 0], size)[..., None]
    return np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


@dataclass(frozen=True)
class Item:
    """One sample's provenance: its name, its group, and where its pixels come from."""

    name: str
    group: str
    image: str
    mask: str | None


@dataclass(frozen=True)
class Selection:
    """Which samples of a dataset to keep, decided from the names before any pixel is decoded.

    Attributes:
        names: keep only the samples of these names (e.g. the validation images a weights file names).
        max_groups: keep only this many groups (cars, patients), chosen by ``seed`` from the sorted group
            names; None: all.
    """

    names: frozenset[str] | None = None
    max_groups: int | None = None
    seed: int = 0

    def keep(self, items: Sequence[Item]) -> list[int]:
        """Indices of the kept items, in their order."""
        kept = [i for i, it in enumerate(items) if self.names is None or it.name in self.names]
        if self.max_groups is not None:
            groups = sorted({items[i].group for i in kept})
            order = np.random.default_rng(self.seed).permutation(len(groups))
            chosen = {groups[j] for j in order[: self.max_groups]}
            kept = [i for i in kept if items[i].group in chosen]
        return kept


class SegmentationDataset(Dataset[tuple[torch.Tensor, ...]]):
    """Base class: items, decoding with validation, optional resize, and the in-memory cache.

    Subclasses fill ``self.items``, implement :meth:`_decode` returning ``(image uint8 (H, W) or
    (H, W, 3), mask int64 (H, W))``, already validated, and call :meth:`_finish_init`; one that holds
    decoded arrays of its own overrides :meth:`_keep` to drop those of unselected items too.

    Args:
        resize: decode to ``(H, W)`` (image bilinear, mask nearest); None keeps the stored size.
        cache: keep decoded samples in memory; None decides by size (``cache_bytes``).
        select: keep only some samples (:class:`Selection`); None: all.
        weight_map_class: also return the paper's loss-weight map (w0 = 10, sigma = 5 px) for the
            touching objects of this class as a third element, ``(H, W)`` float32, computed once per
            sample (:func:`zoo.data.weightmap.unet_weight_map`).
    """

    in_channels: int = 1
    num_classes: int = 2
    class_names: tuple[str, ...] = ("background", "foreground")

    def __init__(
        self,
        *,
        resize: tuple[int, int] | None = None,
        cache: bool | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        select: Selection | None = None,
        weight_map_class: int | None = None,
    ) -> None:
        self.items: list[Item] = []
        self.resize = resize
        self._cache_flag = cache
        self._cache_bytes = cache_bytes
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._select = select
        self.weight_map_class = weight_map_class
        self.weights: list[np.ndarray] | None = None

    # -- subclass hooks ----------------------------------------------------------------------------
    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # -- public API --------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [it.name for it in self.items]

    @property
    def groups(self) -> list[str]:
        return [it.group for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The sample as uint8 image and int64 mask arrays (resized if asked), from the cache if any."""
        if self._cache is not None:
            return self._cache[index]
        image, mask = self._decode(index)
        return self._resized(image, mask)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        """``(image, mask)``, or ``(image, mask, weight)`` with a weight map (``weight_map_class``)."""
        image, mask = self.arrays(index)
        img = torch.from_numpy(np.ascontiguousarray(image))
        img = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1)
        sample = (img.float().div_(255.0), torch.from_numpy(np.ascontiguousarray(mask)))
        if self.weights is None:
            return sample
        return (*sample, torch.from_numpy(self.weights[index]))

    def _keep(self, indices: list[int]) -> None:
        """Drop every item not in ``indices`` (the selection), before anything is decoded."""
        self.items = [self.items[i] for i in indices]

    def _finish_init(self) -> None:
        """Once ``items`` is known: apply the selection, decide on caching and fill the cache if chosen,
        and compute the weight maps if asked."""
        if self._select is not None:
            self._keep(self._select.keep(self.items))
            if not self.items:
                raise DataError(f"{type(self).__name__}: none of the images is selected ({self._select})")
        if not self.items:
            return
        cache = self._cache_flag
        if cache is None:
            image, _ = self._resized(*self._decode(0))
            cache = image.nbytes * 1.2 * len(self.items) <= self._cache_bytes  # masks are smaller
        if cache:
            self._cache = [self._resized(*self._decode(i)) for i in range(len(self.items))]
            log.debug("%s: %d samples decoded into memory", type(self).__name__, len(self.items))
        if self.weight_map_class is not None:
            cls = self.weight_map_class
            self.weights = [unet_weight_map(self.arrays(i)[1], object_class=cls) for i in range(len(self))]

    def _resized(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.resize is None or image.shape[:2] == self.resize:
            return image, mask
        h, w = self.resize
        img = resize_image(image, self.resize)
        # nearest-neighbour keeps the mask integer and its classes exact; in 32 bits, since an 8-bit
        # detour would turn the ignore value -1 into 255
        msk = np.array(Image.fromarray(mask.astype(np.int32)).resize((w, h), Image.Resampling.NEAREST))
        return img, msk.astype(np.int64)


def _check_pair(image: np.ndarray, mask: np.ndarray, item: Item) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"{item.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {item.image} is "
            f"{image.shape[1]}x{image.shape[0]} (width x height); the mask must match its image: "
            "regenerate or replace the mask"
        )


def _mask_values(raw: np.ndarray, allowed: dict[int, int], item: Item) -> np.ndarray:
    """Map raw mask values to class indices; any value outside ``allowed`` is an error naming the file."""
    found = np.unique(raw)
    bad = [int(v) for v in found if int(v) not in allowed]
    if bad:
        raise DataError(
            f"{item.mask}: mask values {bad[:10]} are outside the expected set {sorted(allowed)}; "
            "the file is not a mask of this dataset, or was saved lossily (e.g. as JPEG): "
            "use the original mask"
        )
    lut = np.zeros(256, dtype=np.int64)
    for raw_value, cls in allowed.items():
        lut[raw_value] = cls
    return lut[raw]


def _numeric_key(path: Path) -> tuple[int, str]:
    m = re.search(r"(\d+)$", path.stem)
    return (int(m.group(1)) if m else -1, path.stem)


# -- ISBI 2012 --------------------------------------------------------------------------------------
class ISBI2012Dataset(SegmentationDataset):
    """ISBI 2012 EM segmentation challenge (Drosophila VNC serial-section TEM), 1 channel, 2 classes.

    The foreground class (1) is the membrane, which the challenge's label files mark with 0; cell
    interior (255 in the files) is class 0. Reads either layout:

    - PNG slice folders: ``train/image/{i}.png``, ``train/label/{i}.png``, ``test/{i}.png``;
    - the challenge's stacks: ``train-volume.tif``, ``train-labels.tif``, ``test-volume.tif``.

    Slices are ordered by their number (neighbours in the volume are neighbours here): split them in
    contiguous blocks (:func:`zoo.data.splits.block_kfold`). The whole set is decoded into memory.

    Args:
        root: the folder holding either layout.
        split: "train" (images with labels) or "test" (images only; masks are all -1 = unlabelled).
        weight_map: also return the paper's loss-weight map as a third element, the cells being the
            touching objects (``SegmentationDataset``'s ``weight_map_class=0``).
        select: keep only some slices (:class:`Selection`).
    """

    in_channels = 1
    num_classes = 2
    class_names = ("cell", "membrane")
    LABEL_VALUES: ClassVar[dict[int, int]] = {
        0: 1,
        255: 0,
    }  # file value -> class: membrane (0 in the files) is the foreground

    def __init__(
        self,
        root: str | Path,
        *,
        split: str = "train",
        resize: tuple[int, int] | None = None,
        weight_map: bool = False,
        select: Selection | None = None,
    ) -> None:
        # cells (class 0) are the objects; the membrane between two of them gets the weight
        super().__init__(resize=resize, cache=True, select=select, weight_map_class=0 if weight_map else None)
        if split not in ("train", "test"):
            raise ConfigError(f"split={split!r} is not one of 'train', 'test'")
        if weight_map and split != "train":
            raise ConfigError("weight_map=True needs labels: use split='train'")
        self.root = Path(root)
        self.split = split
        self.layout = detect_layout(self.root)
        if self.layout not in ("isbi2012-png", "isbi2012-tif"):
            raise DataError(
                f"{self.root}: not an ISBI 2012 folder (found layout {self.layout!r}); expected "
                "train/image/*.png + train/label/*.png, or train-volume.tif + train-labels.tif"
            )
        self._images: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        if self.layout == "isbi2012-png":
            self._read_png()
        else:
            self._read_tif()
        self._finish_init()

    def _keep(self, indices: list[int]) -> None:
        super()._keep(indices)
        self._images = [self._images[i] for i in indices]
        self._masks = [self._masks[i] for i in indices]

    def _read_png(self) -> None:
        if self.split == "train":
            image_dir, label_dir = self.root / "train" / "image", self.root / "train" / "label"
        else:
            image_dir, label_dir = self.root / "test", None
        images = sorted(image_dir.glob("*.png"), key=_numeric_key)
        if not images:
            raise DataError(f"{image_dir}: no PNG slices found; expected files named 0.png, 1.png, ...")
        wide = 0
        for path in images:
            label = None if label_dir is None else label_dir / path.name
            item = Item(path.stem, path.stem, str(path), None if label is None else str(label))
            if label is not None and not label.is_file():
                raise DataError(f"{label}: label missing for slice {path}; every training slice needs one")
            wide += image_info(path).mode in WIDE_MODES
            # 16-bit slices: scaled by the full 16-bit range, so a slice saved at 16 bits (v * 257) reads
            # as its 8-bit original; the labels stay 8-bit (0 and 255)
            image = read_image(path, mode="L", sixteen_bit="scale")
            self._add(item, image, None if label is None else read_image(label))
        if wide:
            log.info(
                "%s: %d of %d slices are 16-bit; read scaled to 8 bits (v * 255 / 65535)",
                image_dir,
                wide,
                len(images),
            )

    def _read_tif(self) -> None:
        if self.split == "train":
            vol_path, lab_path = self.root / "train-volume.tif", self.root / "train-labels.tif"
        else:
            vol_path, lab_path = self.root / "test-volume.tif", None
        volume = read_stack(vol_path)
        labels = None if lab_path is None else read_stack(lab_path)
        if labels is not None and labels.shape != volume.shape:
            raise DataError(
                f"{lab_path}: label stack is {labels.shape} (slices, H, W) but {vol_path} is {volume.shape}; "
                "the two stacks must have the same slices and size"
            )
        for i in range(volume.shape[0]):
            item = Item(
                str(i), str(i), f"{vol_path}[page {i}]", None if lab_path is None else f"{lab_path}[page {i}]"
            )
            self._add(item, volume[i], None if labels is None else labels[i])

    def _add(self, item: Item, image: np.ndarray, label: np.ndarray | None) -> None:
        if label is None:
            mask = np.full(image.shape[:2], -1, dtype=np.int64)
        else:
            _check_pair(image, label, item)
            mask = _mask_values(label, self.LABEL_VALUES, item)
        self.items.append(item)
        self._images.append(image)
        self._masks.append(mask)

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self._images[index], self._masks[index]


# -- Carvana ----------------------------------------------------------------------------------------
_CARVANA_NAME = re.compile(r"^(?P<car>[0-9a-f]+)_(?P<angle>\d{2})$")


class CarvanaDataset(SegmentationDataset):
    """Carvana Image Masking Challenge, Kaggle layout: ``train/<car>_<NN>.jpg`` and
    ``train_masks/<car>_<NN>_mask.gif``. RGB input, 2 classes (1 = car); masks stored as {0, 1} or
    {0, 255}; any resolution. Group = car id: split by car, never by image (the 16 angles of one car
    are near-duplicates).

    Args:
        root: folder holding ``train/`` and ``train_masks/``.
        resize: decode to ``(H, W)`` (image bilinear, mask nearest); None keeps the stored size.
        cache: keep decoded samples in memory; None decides by size (``cache_bytes``).
        select: keep only some images or cars (:class:`Selection`; a car is a group).
    """

    in_channels = 3
    num_classes = 2
    class_names = ("background", "car")
    MASK_VALUES: ClassVar[dict[int, int]] = {0: 0, 1: 1, 255: 1}

    def __init__(
        self,
        root: str | Path,
        *,
        resize: tuple[int, int] | None = None,
        cache: bool | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        select: Selection | None = None,
    ) -> None:
        super().__init__(resize=resize, cache=cache, cache_bytes=cache_bytes, select=select)
        self.root = Path(root)
        image_dir, mask_dir = self.root / "train", self.root / "train_masks"
        if not image_dir.is_dir() or not mask_dir.is_dir():
            raise DataError(
                f"{self.root}: not a Carvana folder; expected train/<car>_<NN>.jpg and "
                "train_masks/<car>_<NN>_mask.gif (the Kaggle layout)"
            )
        for path in sorted(image_dir.glob("*.jpg")):
            m = _CARVANA_NAME.match(path.stem)
            if m is None:
                raise DataError(f"{path}: name does not follow <car id>_<NN>.jpg; rename it or remove it")
            mask = mask_dir / f"{path.stem}_mask.gif"
            if not mask.is_file():
                raise DataError(f"{mask}: mask missing for image {path}; every image needs its _mask.gif")
            self.items.append(Item(path.stem, m["car"], str(path), str(mask)))
        if not self.items:
            raise DataError(f"{image_dir}: no images found")
        self._finish_init()

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        item = self.items[index]
        image = read_image(item.image, mode="RGB")
        assert item.mask is not None
        raw = read_image(item.mask)
        _check_pair(image, raw, item)
        return image, _mask_values(raw, self.MASK_VALUES, item)


# -- layout detection ----------------------------------------------------------------------------------
_LAYOUTS: list[tuple[str, Callable[[Path], bool]]] = [
    ("isbi2012-png", lambda r: (r / "train" / "image").is_dir() and (r / "train" / "label").is_dir()),
    ("isbi2012-tif", lambda r: (r / "train-volume.tif").is_file()),
    ("carvana", lambda r: (r / "train").is_dir() and (r / "train_masks").is_dir()),
]


def detect_layout(root: str | Path) -> str | None:
    """Name of the on-disk layout at ``root`` ("isbi2012-png", "isbi2012-tif", "carvana"), or None.

    Decided from which files exist, never by trying to load.
    """
    r = Path(root)
    return next((name for name, test in _LAYOUTS if test(r)), None)

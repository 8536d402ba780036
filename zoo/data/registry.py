"""The dataset registry: everything the harness, the CLI, evaluation and publishing know about a dataset.

Datasets are registered as models are: one :class:`DatasetEntry` per dataset (its loader, channels and
classes, split rule, the figures to report beyond Dice and IoU, its synthetic twin, card and default
recipe), and every command reads the entry; no module branches on a dataset's name. Adding a dataset is
one entry in one file. A user's dataset is a TOML file (:mod:`zoo.data.folder`): :func:`get_dataset`
accepts its path wherever it accepts a registered name, and builds the entry from the file.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zoo.data.datasets import CarvanaDataset, ISBI2012Dataset, SegmentationDataset, Selection
from zoo.data.io import DataError
from zoo.data.splits import Split, block_kfold, group_split
from zoo.data.synthetic import write_car_twin, write_em_twin
from zoo.errors import ConfigError, ZooError

__all__ = [
    "SPLIT_RULES",
    "DatasetEntry",
    "Twin",
    "UnknownDatasetError",
    "get_dataset",
    "is_dataset_file",
    "list_datasets",
    "register_dataset",
]

SPLIT_RULES = ("blocks", "groups")
"""``blocks``: contiguous blocks of the ordered samples (slices of one volume; ``folds``, ``fold``);
``groups``: whole groups held out at random (cars, patients; ``val_fraction``, ``split_seed``)."""


class UnknownDatasetError(ZooError, ValueError):
    """No dataset of that name and no such dataset file; the message lists the close and the known ones."""


@dataclass(frozen=True)
class Twin:
    """A synthetic twin: a writer of the dataset's on-disk format and the twin's default size.

    Attributes:
        kind: the format written; datasets that share a format (Carvana at two resolutions) share twins.
        write: ``write(out, count=, size=, seed=)`` fills the folder ``out``.
        count, size: default number of samples and image side.
    """

    kind: str
    write: Callable[..., object]
    count: int
    size: int


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset, as every command sees it.

    Attributes:
        name: how configs, suites, run names and weights refer to it.
        title: one line for tables.
        loader: ``loader(root, *, resize, weight_map, select)`` returns the dataset read from ``root``.
        in_channels, class_names: what the loader returns (class index = position in ``class_names``).
        split_rule: one of :data:`SPLIT_RULES`.
        folder: the dataset's folder under a data root (``../shared/data``); None for a dataset file,
            whose own paths say where its images are.
        metrics: figure sets reported beside Dice and IoU: ``"isbi"`` (the ISBI 2012 challenge's).
        twin: the synthetic twin used when no data root is given (None: the dataset needs its files).
        card: name of its card in :data:`zoo.data.cards.CARDS` (``datasets/<card>.md``), if any.
        recipe: the recipe ``unet-zoo train --dataset NAME`` starts from when none is named.
        weight_map_class: the class whose touching objects get the paper's border weights when a run
            sets ``weight_map``; None: the weight map does not apply to this dataset.
        source: the dataset file, for a user's dataset.
    """

    name: str
    title: str
    loader: Callable[..., SegmentationDataset]
    in_channels: int
    class_names: tuple[str, ...]
    split_rule: str
    folder: str | None = None
    metrics: tuple[str, ...] = ()
    twin: Twin | None = None
    card: str | None = None
    recipe: str | None = None
    weight_map_class: int | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        if self.split_rule not in SPLIT_RULES:
            raise ValueError(f"{self.name}: split_rule={self.split_rule!r} is not one of {SPLIT_RULES}")
        if len(self.class_names) < 2:
            raise ValueError(f"{self.name}: a segmentation dataset needs at least 2 classes")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def isbi(self) -> bool:
        """Whether the ISBI 2012 challenge's figures are reported for it."""
        return "isbi" in self.metrics

    def root(self, data_root: str | Path | None) -> Path | None:
        """The folder to read under ``data_root``; None: the entry has no files there (use its twin).

        Raises:
            DataError: ``data_root`` does not hold the dataset's folder.
        """
        if self.folder is None:
            assert self.source is not None
            return self.source.parent
        if data_root is None:
            return None
        root = Path(data_root) / self.folder
        if not root.is_dir():
            raise DataError(
                f"{root}: dataset folder not found for dataset={self.name!r} under "
                f"data_root={str(data_root)!r}; point --data-root at the folder that holds it (e.g. "
                "../shared/data), or leave it out to use a synthetic twin"
            )
        return root

    def load(
        self,
        root: str | Path,
        *,
        resize: tuple[int, int] | None = None,
        weight_map: bool = False,
        select: Selection | None = None,
    ) -> SegmentationDataset:
        """The dataset at ``root``, with the paper's weight map if asked (and defined for it)."""
        if weight_map and self.weight_map_class is None:
            raise ConfigError(
                f"weight_map=True: dataset {self.name!r} names no class whose touching objects get border "
                'weights (a dataset file sets it with weight_map_class = "<class name>")'
            )
        return self.loader(Path(root), resize=resize, weight_map=weight_map, select=select)

    def split(
        self,
        dataset: SegmentationDataset,
        *,
        folds: int,
        fold: int,
        val_fraction: float,
        seed: int,
    ) -> Split:
        """The train/validation split of ``dataset`` under this entry's rule."""
        if self.split_rule == "blocks":
            return block_kfold(len(dataset), folds=folds, fold=fold)
        return group_split(dataset.groups, val_fraction=val_fraction, seed=seed)

    def describe(self, dataset: SegmentationDataset) -> dict[str, str]:
        """What a run records about its data (MLflow params): the dataset's name, a fingerprint of the
        files it read (sha256 of every image, mask and region file's path, relative to the dataset file
        or the dataset's folder, and byte size: cheap for any size of dataset, and it changes when a
        file is added, removed, renamed or rewritten to another size) and, for a dataset file, the
        file's sha256."""
        out = {"dataset_name": self.name, "dataset_samples": str(len(dataset))}
        base = self.source.parent if self.source is not None else getattr(dataset, "root", None)
        files = sorted(
            {Path(f.split("[page ")[0]) for it in dataset.items for f in (it.image, it.mask) if f is not None}
        )
        if base is not None and files:
            digest = hashlib.sha256()
            for f in files:
                digest.update(f"{os.path.relpath(f, base)}\0{f.stat().st_size}\n".encode())
            out["dataset_files"] = str(len(files))
            out["dataset_files_fingerprint"] = digest.hexdigest()
        if self.source is not None:
            out["dataset_file"] = str(self.source)
            out["dataset_file_sha256"] = hashlib.sha256(self.source.read_bytes()).hexdigest()
        return out


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    """Add ``entry`` to the registry; a second entry of the same name is an error."""
    if entry.name in _REGISTRY:
        raise ValueError(f"dataset {entry.name!r} is registered already")
    _REGISTRY[entry.name] = entry
    return entry


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching the shell wildcard ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def is_dataset_file(name: str | Path) -> bool:
    """Whether ``name`` names a dataset file (``*.toml``) rather than a registered dataset."""
    return str(name).endswith(".toml")


def get_dataset(name: str | Path) -> DatasetEntry:
    """The registered dataset ``name``, or the dataset described by the TOML file ``name``.

    Raises:
        UnknownDatasetError: neither a registered name nor a ``.toml`` file (with the close names).
        DataError: a dataset file that is missing or malformed (the message names the key or folder).
    """
    if is_dataset_file(name):
        path = Path(name).resolve()
        # parsed once per version of the file: a config, its run name and its recipe all ask for it
        return _file_entry(path, path.stat().st_mtime_ns if path.is_file() else None)
    if name in _REGISTRY:
        return _REGISTRY[str(name)]
    close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise UnknownDatasetError(
        f"unknown dataset {str(name)!r}.{hint} Registered: {', '.join(sorted(_REGISTRY))}; or give a dataset "
        "file (`unet-zoo data init --images DIR --masks DIR --out my.toml` writes one)"
    )


@functools.lru_cache(maxsize=16)
def _file_entry(path: Path, mtime_ns: int | None) -> DatasetEntry:
    """The entry of the dataset file ``path`` as it was at ``mtime_ns`` (None: missing, load_spec says so)."""
    from zoo.data.folder import FolderDataset, load_spec

    spec = load_spec(path)

    def load(
        root: Path, *, resize: tuple[int, int] | None, weight_map: bool, select: Selection | None
    ) -> SegmentationDataset:
        return FolderDataset(spec, resize=resize, weight_map=weight_map, select=select)

    return DatasetEntry(
        name=spec.name,
        title=f"{spec.name} (dataset file {path})",
        loader=load,
        in_channels=spec.channels,
        class_names=tuple(spec.class_names),
        split_rule=spec.split,
        recipe="folder-cpu",
        weight_map_class=spec.weight_map_index,
        source=path.resolve(),
    )


# -- the built-in datasets ---------------------------------------------------------------------------
def _isbi(
    root: Path, *, resize: tuple[int, int] | None, weight_map: bool, select: Selection | None
) -> ISBI2012Dataset:
    return ISBI2012Dataset(root, resize=resize, weight_map=weight_map, select=select)


def _carvana(
    root: Path, *, resize: tuple[int, int] | None, weight_map: bool, select: Selection | None
) -> CarvanaDataset:
    return CarvanaDataset(root, resize=resize, select=select)


def _em_twin(out: Path, *, count: int, size: int, seed: int) -> object:
    return write_em_twin(out, count=count, seed=seed, size=size)


def _car_twin(out: Path, *, count: int, size: int, seed: int) -> object:
    return write_car_twin(out, count=count, seed=seed, height=size * 2 // 3, width=size)


_CAR_TWIN = Twin("carvana", _car_twin, count=96, size=192)

register_dataset(
    DatasetEntry(
        name="isbi2012",
        title="ISBI 2012 EM segmentation challenge (Drosophila VNC, serial-section TEM)",
        loader=_isbi,
        in_channels=ISBI2012Dataset.in_channels,
        class_names=ISBI2012Dataset.class_names,
        split_rule="blocks",
        folder="isbi2012",
        metrics=("isbi",),
        twin=Twin("isbi2012", _em_twin, count=24, size=256),
        card="isbi2012",
        recipe="unet_bn-isbi2012-cpu",
        weight_map_class=0,  # cells: the membrane between two touching cells gets the weight
    )
)


def _carvana_entry(name: str, title: str, *, recipe: str | None = None) -> DatasetEntry:
    """Carvana at one resolution: the Kaggle layout, split by car (its 16 views are near-duplicates)."""
    return DatasetEntry(
        name=name,
        title=title,
        loader=_carvana,
        in_channels=CarvanaDataset.in_channels,
        class_names=CarvanaDataset.class_names,
        split_rule="groups",
        folder=name,
        twin=_CAR_TWIN,
        card="carvana",
        recipe=recipe,
    )


register_dataset(
    _carvana_entry("carvana", "Carvana Image Masking Challenge (Kaggle), full resolution 1918x1280")
)
register_dataset(
    _carvana_entry(
        "carvana512",
        "Carvana Image Masking Challenge (Kaggle), resized to 512x512",
        recipe="unet_bilinear-carvana512-cpu",
    )
)

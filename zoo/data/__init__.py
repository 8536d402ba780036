"""Data: dataset loaders, splits, synthetic twins and augmentation."""

from zoo.data.datasets import (
    CarvanaDataset,
    ISBI2012Dataset,
    SegmentationDataset,
    Selection,
    detect_layout,
)
from zoo.data.folder import FolderDataset, FolderSpec, infer_spec, load_spec, verify_folder
from zoo.data.io import DataError
from zoo.data.registry import DatasetEntry, UnknownDatasetError, get_dataset, list_datasets, register_dataset
from zoo.data.splits import Split, block_kfold, group_split

__all__ = [
    "CarvanaDataset",
    "DataError",
    "DatasetEntry",
    "FolderDataset",
    "FolderSpec",
    "ISBI2012Dataset",
    "SegmentationDataset",
    "Selection",
    "Split",
    "UnknownDatasetError",
    "block_kfold",
    "detect_layout",
    "get_dataset",
    "group_split",
    "infer_spec",
    "list_datasets",
    "load_spec",
    "register_dataset",
    "verify_folder",
]

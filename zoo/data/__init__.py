"""Data: dataset loaders, splits, synthetic twins and augmentation."""

from zoo.data.datasets import (
    CarvanaDataset,
    FolderDataset,
    ISBI2012Dataset,
    SegmentationDataset,
    detect_layout,
)
from zoo.data.io import DataError
from zoo.data.splits import Split, block_kfold, group_split

__all__ = [
    "CarvanaDataset",
    "DataError",
    "FolderDataset",
    "ISBI2012Dataset",
    "SegmentationDataset",
    "Split",
    "block_kfold",
    "detect_layout",
    "group_split",
]

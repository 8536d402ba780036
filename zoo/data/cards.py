"""Dataset cards in machine-readable form: what a complete, correct copy of each dataset looks like.

The human-readable cards are ``datasets/<name>.md`` in the repository; ``unet-zoo data verify`` checks
a folder against the entries here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

__all__ = ["CARDS", "DatasetCard", "published_checksums"]


@dataclass(frozen=True)
class DatasetCard:
    name: str
    title: str
    layouts: tuple[str, ...]
    expected_counts: dict[str, int]
    """Files of a complete copy, by kind; a smaller copy is reported, not failed (subsets are common)."""
    mask_values: tuple[frozenset[int], ...]
    """Accepted sets of raw mask values; every mask must fall within one of them."""
    views_per_group: int | None = None
    obtain: str = ""
    license: str = ""
    extra: dict[str, str] = field(default_factory=dict)


CARDS: dict[str, DatasetCard] = {
    "isbi2012": DatasetCard(
        name="isbi2012",
        title="ISBI 2012 EM segmentation challenge (Drosophila VNC, serial-section TEM)",
        layouts=("isbi2012-png", "isbi2012-tif"),
        expected_counts={"train images": 30, "train labels": 30, "test images": 30},
        mask_values=(frozenset({0, 255}),),
        obtain="Register at the challenge site (imagej.net/events/isbi-2012-segmentation-challenge) and "
        "download train-volume.tif, train-labels.tif, test-volume.tif.",
        license="Research use; cite Cardona et al. 2010 and Arganda-Carreras et al. 2015.",
    ),
    "carvana": DatasetCard(
        name="carvana",
        title="Carvana Image Masking Challenge (Kaggle)",
        layouts=("carvana",),
        expected_counts={"train images": 5088, "train masks": 5088, "cars": 318},
        mask_values=(frozenset({0, 1}), frozenset({0, 255})),
        views_per_group=16,
        obtain="kaggle competitions download -c carvana-image-masking-challenge -f train.zip && "
        "kaggle competitions download -c carvana-image-masking-challenge -f train_masks.zip "
        "(accept the competition rules first), then unzip both into one folder.",
        license="Kaggle competition data: use under the competition's rules.",
    ),
}


def published_checksums(name: str) -> dict[str, str]:
    """sha256 of files as published (relative path -> hex digest), for the files the zoo has seen."""
    path = resources.files("zoo.data") / "checksums" / f"{name}.json"
    if not path.is_file():
        return {}
    files: dict[str, str] = json.loads(path.read_text())["files"]
    return files

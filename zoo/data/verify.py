"""Check a dataset folder against its card and list every problem with the file it concerns.

Unlike the loaders, which stop at the first bad file, verification reads everything and reports all of
it: missing partners, size mismatches, mask values outside the card's set, unreadable or truncated
files, files that the layout does not hold (``9.jpg`` or ``9.PNG`` beside ``9.png``: the loaders would
silently skip them), and (with ``checksums=True``) files that differ from the published ones. Images are
read as the loaders read them: 16-bit ones scaled to 8 bits, which a note counts.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zoo.data.cards import CARDS, DatasetCard, published_checksums
from zoo.data.datasets import _CARVANA_NAME, detect_layout
from zoo.data.io import WIDE_MODES, DataError, SixteenBit, image_info, read_image, read_stack

__all__ = ["Report", "verify_dataset"]

_LAYOUT_TO_CARD = {layout: card.name for card in CARDS.values() for layout in card.layouts}


@dataclass
class Report:
    root: Path
    dataset: str
    layout: str
    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, path: Path | str, message: str) -> None:
        self.problems.append((str(path), message))


def verify_dataset(root: str | Path, *, dataset: str | None = None, checksums: bool = False) -> Report:
    """Verify the folder ``root`` as ``dataset`` ("isbi2012" or "carvana"; None: detect from the layout)."""
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"{path}: not a folder")
    layout = detect_layout(path)
    if dataset is not None and dataset not in CARDS:
        raise ValueError(f"dataset={dataset!r} is not one of {', '.join(sorted(CARDS))}")
    if layout is None or (dataset is not None and layout not in CARDS[dataset].layouts):
        wanted = CARDS[dataset].layouts if dataset else tuple(_LAYOUT_TO_CARD)
        raise DataError(
            f"{path}: no known dataset layout found (expected one of {', '.join(wanted)}); see datasets/*.md "
            "for the expected file layout"
        )
    card = CARDS[_LAYOUT_TO_CARD[layout]]
    report = Report(path, card.name, layout)
    if layout == "isbi2012-png":
        _verify_isbi_png(path, card, report)
    elif layout == "isbi2012-tif":
        _verify_isbi_tif(path, card, report)
    else:
        _verify_carvana(path, card, report)
    for kind, expected in card.expected_counts.items():
        found = report.counts.get(kind)
        if found is not None and found != expected:
            report.notes.append(f"{kind}: {found} found, a complete copy has {expected} (a subset?)")
    if checksums:
        _verify_checksums(path, card, report)
    return report


def _check_mask(
    path: Path,
    mask: np.ndarray,
    image_shape: tuple[int, ...],
    card: DatasetCard,
    image_path: Path | str,
    report: Report,
) -> None:
    if mask.ndim != 2:
        report.problem(
            path, f"mask has {mask.shape[-1]} colour channels; expected single-channel class values"
        )
        return
    if mask.shape != image_shape[:2]:
        report.problem(
            path,
            f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
            f"{image_shape[1]}x{image_shape[0]} (width x height)",
        )
    values = set(np.unique(mask).tolist())
    if not any(values <= allowed for allowed in card.mask_values):
        sets = " or ".join(str(sorted(a)) for a in card.mask_values)
        report.problem(path, f"mask values {sorted(values)[:10]} are outside the expected {sets}")


def _read(
    path: Path, report: Report, *, mode: str | None = None, sixteen_bit: SixteenBit = "reject"
) -> np.ndarray | None:
    try:
        return read_image(path, mode=mode, sixteen_bit=sixteen_bit)
    except DataError as err:
        report.problem(path, str(err).removeprefix(f"{path}: "))
        return None


def _pairs(
    report: Report, pairs: Iterable[tuple[Path, Path | None]], card: DatasetCard, image_mode: str
) -> None:
    """Decode every (image, mask) pair in threads (Pillow decodes without the GIL) and check each; images
    as the loaders read them (16-bit ones scaled to 8 bits, counted in a note), masks at 8 bits."""

    def one(pair: tuple[Path, Path | None]) -> tuple[list[tuple[str, str]], bool]:
        image_path, mask_path = pair
        local = Report(report.root, report.dataset, report.layout)
        image = _read(image_path, local, mode=image_mode, sixteen_bit="scale")
        wide = image is not None and image_info(image_path).mode in WIDE_MODES
        if mask_path is not None:
            mask = _read(mask_path, local)
            if image is not None and mask is not None:
                _check_mask(mask_path, mask, image.shape, card, image_path, local)
        return local.problems, wide

    wide = 0
    with ThreadPoolExecutor(max_workers=4) as pool:
        for problems, is_wide in pool.map(one, list(pairs)):
            report.problems.extend(problems)  # in input order: the report reads the same on every run
            wide += is_wide
    if wide:
        report.notes.append(f"{wide} image(s) are 16-bit: read scaled to 8 bits (v * 255 / 65535)")


_SLICE_NAME = re.compile(r"\d+\.png")


def _strays(folder: Path, report: Report) -> None:
    """Every entry of an ISBI slice folder that is not a ``<N>.png`` slice: the loader would skip it (a
    ``9.jpg``, ``9.tif`` or ``9.PNG`` beside ``9.png``) or misplace it in the volume's order (``a.png``),
    as the Carvana check flags what is not ``<car>_<NN>.jpg``."""
    if not folder.is_dir():
        return
    for other in sorted(p for p in folder.iterdir() if not _SLICE_NAME.fullmatch(p.name)):
        if other.suffix == ".png":
            report.problem(other, "name is not <N>.png (the slice's number): rename it, or remove it")
        else:
            report.problem(
                other, "not a .png slice; the ISBI layout holds only <N>.png here: convert it, or remove it"
            )


def _verify_isbi_png(root: Path, card: DatasetCard, report: Report) -> None:
    image_dir, label_dir, test_dir = root / "train" / "image", root / "train" / "label", root / "test"
    images = {p.name: p for p in image_dir.glob("*.png")}
    labels = {p.name: p for p in label_dir.glob("*.png")}
    tests = sorted(test_dir.glob("*.png")) if test_dir.is_dir() else []
    report.counts.update(
        {"train images": len(images), "train labels": len(labels), "test images": len(tests)}
    )
    for folder in (image_dir, label_dir, test_dir):
        _strays(folder, report)
    for name in sorted(set(labels) - set(images)):
        report.problem(labels[name], f"label without an image (expected {image_dir / name})")
    pairs: list[tuple[Path, Path | None]] = []
    for name in sorted(images):
        if name not in labels:
            report.problem(images[name], f"image without a label (expected {label_dir / name})")
            pairs.append((images[name], None))
        else:
            pairs.append((images[name], labels[name]))
    pairs += [(p, None) for p in tests]
    _pairs(report, pairs, card, "L")


def _verify_isbi_tif(root: Path, card: DatasetCard, report: Report) -> None:
    stacks: dict[str, np.ndarray] = {}
    for kind, name in (
        ("train images", "train-volume.tif"),
        ("train labels", "train-labels.tif"),
        ("test images", "test-volume.tif"),
    ):
        path = root / name
        if not path.is_file():
            report.problem(path, "missing")
            continue
        try:
            stacks[name] = read_stack(path)
            report.counts[kind] = stacks[name].shape[0]
        except DataError as err:
            report.problem(path, str(err).removeprefix(f"{path}: "))
    volume, labels = stacks.get("train-volume.tif"), stacks.get("train-labels.tif")
    if volume is not None and labels is not None:
        if labels.shape != volume.shape:
            report.problem(
                root / "train-labels.tif", f"label stack is {labels.shape}, the volume {volume.shape}"
            )
        else:
            for i in range(labels.shape[0]):
                _check_mask(
                    root / f"train-labels.tif[page {i}]",
                    labels[i],
                    volume[i].shape,
                    card,
                    f"train-volume.tif[page {i}]",
                    report,
                )


def _verify_carvana(root: Path, card: DatasetCard, report: Report) -> None:
    image_dir, mask_dir = root / "train", root / "train_masks"
    images = {p.stem: p for p in image_dir.glob("*.jpg")}
    masks = {p.name.removesuffix("_mask.gif"): p for p in mask_dir.glob("*_mask.gif")}
    for other in sorted(set(image_dir.iterdir()) - set(images.values())):
        report.problem(other, "not a .jpg image; the Kaggle layout holds only <car>_<NN>.jpg here")
    cars: Counter[str] = Counter()
    pairs: list[tuple[Path, Path | None]] = []
    for stem in sorted(images):
        m = _CARVANA_NAME.match(stem)
        if m is None:
            report.problem(images[stem], "name does not follow <car id>_<NN>.jpg")
        else:
            cars[m["car"]] += 1
        if stem not in masks:
            report.problem(images[stem], f"image without a mask (expected {mask_dir / (stem + '_mask.gif')})")
        else:
            pairs.append((images[stem], masks[stem]))
    for stem in sorted(set(masks) - set(images)):
        report.problem(masks[stem], f"mask without an image (expected {image_dir / (stem + '.jpg')})")
    report.counts.update({"train images": len(images), "train masks": len(masks), "cars": len(cars)})
    if card.views_per_group:
        short = sorted(c for c, n in cars.items() if n != card.views_per_group)
        if short:
            report.notes.append(
                f"{len(short)} car(s) without all {card.views_per_group} views: {', '.join(short[:5])}"
            )
    _pairs(report, pairs, card, "RGB")


def _verify_checksums(root: Path, card: DatasetCard, report: Report) -> None:
    known = published_checksums(card.name)
    if not known:
        report.notes.append(f"no published checksums recorded for {card.name}")
        return
    checked = 0
    for rel, digest in sorted(known.items()):
        path = root / rel
        if not path.is_file():
            continue
        checked += 1
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            report.problem(path, "content differs from the published file (sha256 mismatch): re-download it")
    report.notes.append(
        f"checksums: {checked} file(s) compared with the {len(known)} published ones on record"
    )

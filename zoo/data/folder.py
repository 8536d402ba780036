"""A user's dataset: a folder of images, a folder of masks, and a small TOML file saying how they pair.

``unet-zoo data init`` writes the TOML by inspecting the folders (:func:`infer_spec`); every command
accepts its path where it accepts a registered dataset name. The format (paths relative to the TOML's
folder, or absolute)::

    name = "mydata"            # [A-Za-z0-9][A-Za-z0-9_-]*, used in run names
    images = "images"          # folder of images: PNG, JPEG, TIFF, BMP, GIF; 8- or 16-bit
    masks = "masks"            # folder of masks: PNG, GIF, TIFF, BMP; 8- or 16-bit, palette, colour
    roi = "fov"                # optional: region-of-interest masks, paired like the masks; 0 = outside
    channels = 3               # 1 (gray) or 3 (RGB): images are converted to it
    split = "groups"           # "groups": hold out whole groups; "blocks": contiguous blocks (one volume)
    group = '^(\\w+?)_\\d+$'    # optional: the regex's first group on an image's stem names its group
    weight_map_class = "cell"  # optional: the class whose touching objects get the paper's border weights

    [pairing]
    rule = "suffix"            # "stem" | "suffix" (with suffix = "_mask") | "id" (with pattern = '^(\\d+)_')
    suffix = "_mask"

    [classes]                  # name = mask value, or [R, G, B] for colour masks; listed order = class index
    background = 0
    car = 255

Pairing works on stems (names without the extension): "stem" pairs equal stems; "suffix" pairs a mask
whose stem is the image's stem plus ``suffix``; "id" pairs files whose stems give the same first group
of ``pattern`` (``re.search``). ROI files pair with images exactly as masks do. Int classes are mask
values (a palette mask's index); colour classes compare each mask pixel's RGB colour.

Samples are the paired images in natural order (``2.png`` before ``10.png``). A multi-page TIFF image
is a stack: its mask has as many pages (its ROI as many, or one for all), each page is a sample named
``<stem>[<page>]``, and the pages of one file form one group (``group`` applies to the file's stem).
``split = "blocks"`` cuts the samples, in that order, into contiguous blocks, as slices of one volume
must be; ``"groups"`` holds out whole groups at random. Pixels outside the ROI get mask value -1, which
counts in no metric and no loss.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import tomllib

from zoo.data.datasets import (
    DEFAULT_CACHE_BYTES,
    Item,
    SegmentationDataset,
    Selection,
    _check_pair,
)
from zoo.data.io import DataError, image_info, read_image
from zoo.data.verify import Report

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "FolderDataset",
    "FolderSpec",
    "Inspection",
    "Pair",
    "Pairing",
    "PairingRule",
    "infer_spec",
    "load_spec",
    "pair_files",
    "verify_folder",
]

log = logging.getLogger(__name__)

Colour = tuple[int, int, int]
ClassValue = int | Colour
_T = TypeVar("_T")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
MASK_SUFFIXES = (".png", ".gif", ".tif", ".tiff", ".bmp")  # no JPEG: lossy compression invents values
RULES = ("stem", "suffix", "id")
SPLITS = ("groups", "blocks")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOP_KEYS = ("name", "images", "masks", "roi", "channels", "split", "group", "weight_map_class")
_TABLES = ("pairing", "classes")
_PAIRING_KEYS = ("rule", "suffix", "pattern")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_STACK_SUFFIXES = (".tif", ".tiff")
_CONTROL = frozenset(chr(i) for i in (*range(32), 127))
_SHOWN = 10  # files or values named in one message; a count says how many more


# -- the spec -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairingRule:
    """How a mask's (or ROI's) name follows from its image's: see the module docstring."""

    rule: str = "stem"
    suffix: str = ""
    pattern: str = ""

    def key(self, stem: str, *, image: bool) -> str | None:
        """The key a file with this stem pairs by; None: the file pairs with nothing under this rule."""
        if self.rule == "stem" or (self.rule == "suffix" and image):
            return stem
        if self.rule == "suffix":
            return stem[: -len(self.suffix)] if stem.endswith(self.suffix) and stem != self.suffix else None
        m = re.search(self.pattern, stem)
        return m.group(1) if m is not None and m.group(1) else None

    def describe(self) -> str:
        return {"stem": "stem", "suffix": f"suffix '{self.suffix}'", "id": f"id '{self.pattern}'"}[self.rule]


@dataclass(frozen=True)
class FolderSpec:
    """A user's dataset as its TOML file describes it; folders are absolute, values checked on creation.

    ``classes`` lists ``(name, value)`` in class-index order; the values are all ints (mask values) or
    all ``(R, G, B)`` colours. ``source`` is the TOML file it was read from, named in errors.
    """

    name: str
    images: Path
    masks: Path
    classes: tuple[tuple[str, ClassValue], ...]
    pairing: PairingRule = PairingRule()
    roi: Path | None = None
    channels: int = 3
    split: str = "groups"
    group: str | None = None
    weight_map_class: str | None = None
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # absolute without resolving links, so the TOML keeps the paths the user gave, made relative
        for key in ("images", "masks", "roi"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, Path(os.path.abspath(value)))
        classes = tuple((str(n), v if isinstance(v, int) else (v[0], v[1], v[2])) for n, v in self.classes)
        object.__setattr__(self, "classes", classes)
        self._check()

    @property
    def where(self) -> str:
        """How errors name this spec: its TOML file, else its name."""
        return str(self.source) if self.source is not None else f"dataset spec {self.name!r}"

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.classes)

    @property
    def colour(self) -> bool:
        """True when the classes are colours (masks read as RGB), False when they are mask values."""
        return not isinstance(self.classes[0][1], int)

    @property
    def weight_map_index(self) -> int | None:
        """The class index of ``weight_map_class``, or None."""
        return None if self.weight_map_class is None else self.class_names.index(self.weight_map_class)

    def _fail(self, message: str) -> DataError:
        return DataError(f"{self.where}: {message}")

    def _check(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise self._fail(f"name = {self.name!r} must match [A-Za-z0-9][A-Za-z0-9_-]* (it names runs)")
        if self.channels not in (1, 3):
            raise self._fail(f"channels = {self.channels!r} must be 1 (gray) or 3 (RGB)")
        if self.split not in SPLITS:
            raise self._fail(f"split = {self.split!r} must be one of {_choices(SPLITS)}")
        _check_pairing(self.pairing, self._fail)
        if self.group is not None:
            _check_regex("group", self.group, self._fail)
        if len(self.classes) < 2:
            raise self._fail(
                f"[classes] lists {len(self.classes)} class(es); a segmentation needs at least 2"
            )
        if len({isinstance(v, int) for _, v in self.classes}) > 1:
            raise self._fail(
                "[classes] mixes mask values and [R, G, B] colours; list all classes one way: values for "
                "gray or palette-index masks, colours for colour masks"
            )
        for name, value in self.classes:
            ok = 0 <= value <= 65535 if isinstance(value, int) else all(0 <= c <= 255 for c in value)
            if not name or not ok:
                raise self._fail(
                    f"classes.{name} = {_value_text(value)}: a class is a named mask value 0..65535 or an "
                    "[R, G, B] colour of 0..255 each"
                )
        values = [v for _, v in self.classes]
        dupes = sorted({_value_text(v) for v in values if values.count(v) > 1})
        if dupes:
            raise self._fail(f"[classes] gives {', '.join(dupes)} to more than one class; list each once")
        if self.weight_map_class is not None and self.weight_map_class not in self.class_names:
            raise self._fail(
                f"weight_map_class = {self.weight_map_class!r} is not a class; the classes are "
                f"{', '.join(self.class_names)}{_suggest(self.weight_map_class, self.class_names)}"
            )

    def to_toml(self, relative_to: Path | None = None) -> str:
        """The spec as TOML text that :func:`load_spec` reads back equal; folders are written relative to
        ``relative_to`` (the folder the TOML will sit in), or absolute when it is None."""

        def where(path: Path) -> str:
            if relative_to is None:
                return path.as_posix()
            return Path(os.path.relpath(path, os.path.abspath(relative_to))).as_posix()

        lines = [f"name = {_toml_str(self.name)}", f"images = {_toml_str(where(self.images))}"]
        lines.append(f"masks = {_toml_str(where(self.masks))}")
        if self.roi is not None:
            lines.append(f"roi = {_toml_str(where(self.roi))}")
        lines += [f"channels = {self.channels}", f"split = {_toml_str(self.split)}"]
        if self.group is not None:
            lines.append(f"group = {_toml_str(self.group)}")
        if self.weight_map_class is not None:
            lines.append(f"weight_map_class = {_toml_str(self.weight_map_class)}")
        lines += ["", "[pairing]", f"rule = {_toml_str(self.pairing.rule)}"]
        if self.pairing.rule == "suffix":
            lines.append(f"suffix = {_toml_str(self.pairing.suffix)}")
        if self.pairing.rule == "id":
            lines.append(f"pattern = {_toml_str(self.pairing.pattern)}")
        lines += ["", "[classes]"]
        for name, value in self.classes:
            key = name if _BARE_KEY.fullmatch(name) else _toml_str(name)
            lines.append(f"{key} = {_value_text(value)}")
        return "\n".join(lines) + "\n"


def _value_text(value: ClassValue) -> str:
    return str(value) if isinstance(value, int) else f"[{value[0]}, {value[1]}, {value[2]}]"


def _toml_str(text: str) -> str:
    """A TOML string; a literal one ('...') when that spares escapes, so regular expressions stay readable."""
    control = any(c in _CONTROL for c in text)
    if control or ("'" in text and ('"' in text or "\\" in text)):
        escaped = "".join(
            "\\\\" if c == "\\" else '\\"' if c == '"' else f"\\u{ord(c):04x}" if c in _CONTROL else c
            for c in text
        )
        return f'"{escaped}"'
    return f"'{text}'" if "\\" in text or '"' in text else f'"{text}"'


def _choices(options: Iterable[str]) -> str:
    return ", ".join(repr(o) for o in options)


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_regex(key: str, pattern: str, fail: Callable[[str], DataError]) -> None:
    try:
        groups = re.compile(pattern).groups
    except re.error as err:
        raise fail(f"{key} = {pattern!r} is not a valid regular expression ({err})") from err
    if groups < 1:
        raise fail(f"{key} = {pattern!r} needs a capturing group, e.g. '^(\\d+)_': its first group is used")


def _check_pairing(p: PairingRule, fail: Callable[[str], DataError]) -> None:
    if p.rule not in RULES:
        raise fail(f"pairing.rule = {p.rule!r} must be one of {_choices(RULES)}{_suggest(p.rule, RULES)}")
    for key, user in (("suffix", "suffix"), ("pattern", "id")):
        given = getattr(p, key)
        if p.rule == user and not given:
            example = 'suffix = "_mask"' if key == "suffix" else "pattern = '^(\\d+)_'"
            raise fail(f'pairing.rule = "{user}" needs pairing.{key}, e.g. {example}')
        if p.rule != user and given:
            raise fail(f'pairing.{key} is used only with rule = "{user}", not {p.rule!r}: remove it')
    if p.rule == "id":
        _check_regex("pairing.pattern", p.pattern, fail)


def load_spec(path: str | Path) -> FolderSpec:
    """Read a dataset TOML file strictly: unknown keys, wrong types, bad values and missing folders are
    :class:`DataError` naming the file, the key and what is allowed."""
    src = Path(os.path.abspath(path))
    try:
        doc = tomllib.loads(src.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"{src}: dataset file not found; write one with `unet-zoo data init`") from err
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise DataError(f"{src}: not a readable TOML file ({err}); fix it") from err

    def fail(message: str) -> DataError:
        return DataError(f"{src}: {message}")

    def typed(table: dict[str, Any], key: str, kind: type[_T], what: str, default: Any = None) -> Any:
        value = table.get(key, default)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise fail(f"{key} = {value!r} must be {what}")
        return value

    def folder(key: str) -> Path | None:
        text = typed(doc, key, str, "a folder path (a string)")
        if text is None:
            return None
        p = src.parent / text  # an absolute path replaces the base
        if not p.is_dir():
            raise fail(f"{key} = {text!r}: folder {p} not found; fix the path (relative to {src.parent})")
        return p

    _unknown(doc, (*_TOP_KEYS, *_TABLES), "", fail)
    for key in ("name", "images", "masks", "classes"):
        if key not in doc:
            raise fail(f"the key {key!r} is missing; a dataset file sets name, images, masks and [classes]")
    pairing = typed(doc, "pairing", dict, "a table: [pairing]", {})
    _unknown(pairing, _PAIRING_KEYS, "pairing.", fail)
    rule = PairingRule(
        typed(pairing, "rule", str, f"one of {_choices(RULES)}", "stem"),
        typed(pairing, "suffix", str, "a string", ""),
        typed(pairing, "pattern", str, "a regular expression (a string)", ""),
    )
    classes: list[tuple[str, ClassValue]] = []
    for name, value in typed(doc, "classes", dict, "a table: [classes] of name = value lines").items():
        if isinstance(value, int) and not isinstance(value, bool):
            classes.append((name, value))
        elif isinstance(value, list) and len(value) == 3 and all(type(c) is int for c in value):
            classes.append((name, (value[0], value[1], value[2])))
        else:
            raise fail(
                f"classes.{name} = {value!r}: a class is a mask value (an integer) or an [R, G, B] colour"
            )
    images, masks = folder("images"), folder("masks")
    assert images is not None and masks is not None  # required keys, checked above
    return FolderSpec(
        name=typed(doc, "name", str, "a string"),
        images=images,
        masks=masks,
        classes=tuple(classes),
        pairing=rule,
        roi=folder("roi"),
        channels=typed(doc, "channels", int, "1 or 3", 3),
        split=typed(doc, "split", str, f"one of {_choices(SPLITS)}", "groups"),
        group=typed(doc, "group", str, "a regular expression (a string)"),
        weight_map_class=typed(doc, "weight_map_class", str, "a class name (a string)"),
        source=src,
    )


def _unknown(
    table: dict[str, Any], valid: Sequence[str], prefix: str, fail: Callable[[str], DataError]
) -> None:
    for key in table:
        if key not in valid:
            section = f" in [{prefix.rstrip('.')}]" if prefix else ""
            raise fail(
                f"unknown key '{prefix}{key}'; valid keys{section}: {', '.join(valid)}{_suggest(key, valid)}"
            )


# -- pairing ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path
    roi: Path | None = None


@dataclass(frozen=True)
class Pairing:
    """Files paired under one rule. ``missing_roi``: images with a mask but no ROI (not in ``pairs``);
    ``ambiguous``: ``(kept, dropped)`` files that pair the same way (:func:`pair_files` raises on them)."""

    pairs: tuple[Pair, ...]
    unpaired_images: tuple[Path, ...]
    unpaired_masks: tuple[Path, ...]
    missing_roi: tuple[Path, ...] = ()
    ambiguous: tuple[tuple[Path, Path], ...] = ()


def _natural(path: Path) -> tuple[list[Any], str]:
    # "2.png" before "10.png": digit runs compare as numbers (split() alternates text and digits)
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)], path.name


def _list(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    # hidden files are skipped: macOS leaves "._name.png" companions that are not images
    files = [p for p in folder.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith(".")]
    return sorted((p for p in files if p.is_file()), key=_natural)


def _index(
    files: Sequence[Path], rule: PairingRule, *, image: bool, ambiguous: list[tuple[Path, Path]]
) -> tuple[dict[str, Path], list[Path]]:
    keyed: dict[str, Path] = {}
    unkeyed: list[Path] = []
    for path in files:
        key = rule.key(path.stem, image=image)
        if key is None:
            unkeyed.append(path)
        elif key in keyed:
            ambiguous.append((keyed[key], path))
        else:
            keyed[key] = path
    return keyed, unkeyed


def _match(
    images: Sequence[Path], masks: Sequence[Path], rois: Sequence[Path] | None, rule: PairingRule
) -> Pairing:
    ambiguous: list[tuple[Path, Path]] = []
    image_keys, unpaired = _index(images, rule, image=True, ambiguous=ambiguous)
    mask_keys, stray = _index(masks, rule, image=False, ambiguous=ambiguous)
    roi_keys = _index(rois, rule, image=False, ambiguous=ambiguous)[0] if rois is not None else {}
    pairs, missing_roi = [], []
    for key, path in image_keys.items():
        if key not in mask_keys:
            unpaired.append(path)
        elif rois is not None and key not in roi_keys:
            missing_roi.append(path)
        else:
            pairs.append(Pair(path, mask_keys[key], roi_keys.get(key)))
    stray += [p for k, p in mask_keys.items() if k not in image_keys]
    return Pairing(
        tuple(sorted(pairs, key=lambda p: _natural(p.image))),
        tuple(sorted(unpaired, key=_natural)),
        tuple(sorted(stray, key=_natural)),
        tuple(missing_roi),
        tuple(ambiguous),
    )


def _folder_files(spec: FolderSpec) -> tuple[list[Path], list[Path], list[Path] | None]:
    for key in ("images", "masks", "roi"):
        path = getattr(spec, key)
        if path is not None and not path.is_dir():
            raise DataError(f"{spec.where}: {key} folder {path} not found; fix the path")
    rois = _list(spec.roi, MASK_SUFFIXES) if spec.roi is not None else None
    return _list(spec.images, IMAGE_SUFFIXES), _list(spec.masks, MASK_SUFFIXES), rois


def pair_files(spec: FolderSpec) -> Pairing:
    """Pair the spec's images with masks (and ROIs); two files that pair the same way are an error."""
    pairing = _match(*_folder_files(spec), spec.pairing)
    if pairing.ambiguous:
        a, b = pairing.ambiguous[0]
        raise DataError(
            f"{a} and {b} pair the same way under pairing rule {spec.pairing.describe()} "
            f"({len(pairing.ambiguous)} such clash(es)); remove or rename one, or change [pairing] in "
            f"{spec.where}"
        )
    return pairing


def _named(paths: Sequence[Path]) -> str:
    more = f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else ""
    return ", ".join(p.name for p in paths[:_SHOWN]) + more


# -- one sample: the dataset raises at the first problem, verify_folder collects them all -------------
def _value_table(spec: FolderSpec) -> dict[int, int]:
    """Mask value (a colour packed as 0xRRGGBB) -> class index."""
    return {_pack(v): i for i, (_, v) in enumerate(spec.classes)}


def _pack(value: ClassValue) -> int:
    return value if isinstance(value, int) else (value[0] << 16) | (value[1] << 8) | value[2]


def _unpack(packed: int) -> Colour:
    return (packed >> 16, (packed >> 8) & 255, packed & 255)


def _packed_rgb(rgb: np.ndarray) -> np.ndarray:
    wide = rgb.astype(np.int64)
    return (wide[..., 0] << 16) | (wide[..., 1] << 8) | wide[..., 2]


def _read_sample_image(spec: FolderSpec, path: Path, page: int) -> np.ndarray:
    return read_image(path, mode="L" if spec.channels == 1 else "RGB", page=page, sixteen_bit="scale")


def _read_labels(spec: FolderSpec, table: dict[int, int], path: Path, page: int) -> np.ndarray:
    """A mask's class indices, int64 ``(H, W)``; a value not in ``[classes]`` is a DataError."""
    if spec.colour:  # palette masks too: their colours, not their indices, are the classes here
        raw = _packed_rgb(read_image(path, mode="RGB", page=page))
    else:
        raw = read_image(path, page=page, sixteen_bit="keep")
        if raw.ndim == 3:
            if not ((raw[..., 0] == raw[..., 1]).all() and (raw[..., 1] == raw[..., 2]).all()):
                raise DataError(
                    f"{path}: mask has colours but [classes] in {spec.where} lists mask values; list each "
                    "class as an [R, G, B] colour there, or save the masks as single-channel values"
                )
            raw = raw[..., 0]  # a gray mask saved as RGB: any channel holds the values
    # exact lookup of whatever values occur: 16-bit values and packed colours need no 256-entry table
    values, inverse = np.unique(raw, return_inverse=True)
    bad = [int(v) for v in values if int(v) not in table]
    if bad:
        text = (lambda v: _value_text(_unpack(v))) if spec.colour else str
        listed = ", ".join(f"{n} = {_value_text(v)}" for n, v in spec.classes)
        more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        raise DataError(
            f"{path}: mask values {', '.join(map(text, bad[:_SHOWN]))}{more} are not listed in [classes] "
            f"({listed}); add each to [classes] in {spec.where}, or fix the mask (one saved lossily, e.g. as "
            "JPEG, gains stray values)"
        )
    lut = np.array([table[int(v)] for v in values], dtype=np.int64)
    return lut[inverse].reshape(raw.shape)


def _apply_roi(labels: np.ndarray, roi_path: Path, page: int, item: Item) -> None:
    roi = read_image(roi_path, page=page, sixteen_bit="keep")
    inside = roi.any(axis=-1) if roi.ndim == 3 else roi != 0
    if inside.shape != labels.shape:
        raise DataError(
            f"{roi_path}: ROI is {inside.shape[1]}x{inside.shape[0]} but its image {item.image} is "
            f"{labels.shape[1]}x{labels.shape[0]} (width x height); the ROI must match its image"
        )
    labels[~inside] = -1  # the ignore index: outside the ROI counts in no metric and no loss


def _page_count(path: Path) -> int:
    return image_info(path).pages if path.suffix.lower() in _STACK_SUFFIXES else 1


def _pages(pair: Pair) -> tuple[int, int]:
    """Samples in the pair (the pages of a TIFF stack, else 1) and pages of its ROI (1 or the same)."""
    n, m = _page_count(pair.image), _page_count(pair.mask)
    if n != m:
        raise DataError(
            f"{pair.mask}: has {m} page(s) but its image {pair.image} has {n}; a stack's mask needs one "
            "page per image page"
        )
    r = _page_count(pair.roi) if pair.roi is not None else 1
    if r not in (1, n):
        raise DataError(f"{pair.roi}: has {r} pages but its image {pair.image} has {n}; an ROI has 1 or {n}")
    return n, r


# -- the dataset --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    image: Path
    mask: Path
    roi: Path | None
    page: int
    roi_page: int


class FolderDataset(SegmentationDataset):
    """A user's dataset from its spec: images and masks in two folders, paired by the spec's rule.

    ``in_channels``, ``num_classes`` and ``class_names`` come from the spec, ``split_rule`` from its
    ``split`` ("groups" or "blocks"). Every image needs a mask (and an ROI when ``roi`` is set), else a
    DataError names the files; masks without an image are logged and left out (``unpaired_masks``).

    Args:
        spec: a :class:`FolderSpec`, or the path of its TOML file.
        resize: decode to ``(H, W)`` (image bilinear, mask nearest); None keeps the stored size.
        cache: keep decoded samples in memory; None decides by size (``cache_bytes``).
        select: keep only some samples (:class:`zoo.data.datasets.Selection`).
        weight_map: also return the paper's loss-weight map for the spec's ``weight_map_class``.
    """

    def __init__(
        self,
        spec: FolderSpec | str | Path,
        *,
        resize: tuple[int, int] | None = None,
        cache: bool | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        select: Selection | None = None,
        weight_map: bool = False,
    ) -> None:
        s = spec if isinstance(spec, FolderSpec) else load_spec(spec)
        if weight_map and s.weight_map_index is None:
            raise DataError(f'{s.where}: weight maps need weight_map_class = "<class name>" in the file')
        super().__init__(
            resize=resize,
            cache=cache,
            cache_bytes=cache_bytes,
            select=select,
            weight_map_class=s.weight_map_index if weight_map else None,
        )
        self.spec = s
        self.in_channels, self.num_classes, self.class_names = s.channels, len(s.classes), s.class_names
        self.split_rule = s.split
        self._table = _value_table(s)
        pairing = pair_files(s)
        if pairing.unpaired_images:
            raise DataError(
                f"{s.images}: {len(pairing.unpaired_images)} image(s) have no mask in {s.masks} under "
                f"pairing rule {s.pairing.describe()}: {_named(pairing.unpaired_images)}; add their masks, "
                f"remove the images, or change [pairing] in {s.where}"
            )
        if pairing.missing_roi:
            raise DataError(
                f"{s.roi}: {len(pairing.missing_roi)} image(s) have no ROI here: "
                f"{_named(pairing.missing_roi)}; add them, or remove roi from {s.where}"
            )
        self.unpaired_masks = pairing.unpaired_masks
        if self.unpaired_masks:
            n, names = len(self.unpaired_masks), _named(self.unpaired_masks)
            log.warning("%s: %d mask(s) without an image, not used: %s", s.masks, n, names)
        group_rx = re.compile(s.group) if s.group is not None else None
        self._sources: dict[str, _Source] = {}  # by item name: stays right when a selection drops items
        for pair in pairing.pairs:
            stem = group = pair.image.stem
            if group_rx is not None:
                m = group_rx.search(stem)
                if m is None or not m.group(1):
                    raise DataError(f"{pair.image}: group = {s.group!r} in {s.where} does not match its stem")
                group = m.group(1)
            n, roi_pages = _pages(pair)
            for page in range(n):
                name, at = (stem, "") if n == 1 else (f"{stem}[{page}]", f"[page {page}]")
                self.items.append(Item(name, group, f"{pair.image}{at}", f"{pair.mask}{at}"))
                self._sources[name] = _Source(
                    pair.image, pair.mask, pair.roi, page, page if roi_pages > 1 else 0
                )
        if not self.items:
            raise DataError(f"{s.images}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
        self._finish_init()

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        item = self.items[index]
        src = self._sources[item.name]
        image = _read_sample_image(self.spec, src.image, src.page)
        labels = _read_labels(self.spec, self._table, src.mask, src.page)
        _check_pair(image, labels, item)
        if src.roi is not None:
            _apply_roi(labels, src.roi, src.roi_page, item)
        return image, labels


# -- verification -------------------------------------------------------------------------------------
def verify_folder(spec: FolderSpec | str | Path) -> Report:
    """Read every pair of a user's dataset and report all problems, not only the first: clashing or
    unpaired files, unreadable files, page counts, sizes, and mask values outside ``[classes]``."""
    s = spec if isinstance(spec, FolderSpec) else load_spec(spec)
    report = Report(s.source if s.source is not None else s.images.parent, s.name, "folder")
    images, masks, rois = _folder_files(s)
    pairing = _match(images, masks, rois, s.pairing)
    rule = s.pairing.describe()
    for kept, dropped in pairing.ambiguous:
        report.problem(
            dropped, f"pairs the same way as {kept} under pairing rule {rule}; remove or rename one"
        )
    for path in pairing.unpaired_images:
        report.problem(path, f"image without a mask in {s.masks} (pairing rule {rule})")
    for path in pairing.unpaired_masks:
        report.problem(path, f"mask without an image in {s.images} (pairing rule {rule})")
    for path in pairing.missing_roi:
        report.problem(path, f"image without an ROI in {s.roi} (pairing rule {rule})")
    report.counts.update({"images": len(images), "masks": len(masks), "pairs": len(pairing.pairs)})
    table = _value_table(s)
    # threads: Pillow decodes without the GIL; map keeps input order, so the report reads the same each run
    with ThreadPoolExecutor(max_workers=4) as pool:
        for problems in pool.map(lambda pair: _pair_problems(s, table, pair), pairing.pairs):
            report.problems.extend(problems)
    return report


def _pair_problems(spec: FolderSpec, table: dict[int, int], pair: Pair) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []

    def attempt(path: Path, step: Callable[[], _T]) -> _T | None:
        try:
            return step()
        except DataError as err:
            # the path heads the problem; a stack's message still says which page ("[page 3]: ...")
            problems.append((str(path), str(err).removeprefix(str(path)).removeprefix(": ")))
            return None

    counted = attempt(pair.mask, lambda: _pages(pair))
    if counted is None:
        return problems
    n, roi_pages = counted
    for page in range(n):
        at = f"[page {page}]" if n > 1 else ""
        item = Item(pair.image.stem, "", f"{pair.image}{at}", f"{pair.mask}{at}")
        image = attempt(pair.image, lambda: _read_sample_image(spec, pair.image, page))  # noqa: B023
        labels = attempt(pair.mask, lambda: _read_labels(spec, table, pair.mask, page))  # noqa: B023
        if image is None or labels is None:
            break  # a stack that fails at one page fails at every later one: say it once
        found = len(problems)
        attempt(pair.mask, lambda: _check_pair(image, labels, item))  # noqa: B023
        if pair.roi is not None and len(problems) == found:
            roi, roi_page = pair.roi, page if roi_pages > 1 else 0
            attempt(roi, lambda: _apply_roi(labels, roi, roi_page, item))  # noqa: B023
    return problems


# -- inspecting folders: what `unet-zoo data init` writes ----------------------------------------------
_ID_PATTERNS = (r"^(\d+)", r"(\d+)$", r"^([^_-]+)", r"([^_-]+)$")  # leading/trailing digits, first/last token
_SAMPLED_IMAGES = 200  # image headers read for sizes and modes; masks are all read (they are small)
_MAX_CLASSES = 64


@dataclass(frozen=True)
class Inspection:
    """What :func:`infer_spec` saw in the folders and why it chose what it did."""

    rule: str
    pairs: int
    rejected: tuple[tuple[str, str], ...]
    """``(rule, why not)`` for each other pairing rule tried."""
    unpaired_images: tuple[str, ...]
    unpaired_masks: tuple[str, ...]
    missing_roi: tuple[str, ...]
    mask_values: tuple[tuple[ClassValue, int], ...]
    """Each mask value (or colour) with its pixel count over all paired masks."""
    image_sizes: tuple[tuple[str, int], ...]
    """``"WxH"`` with its count over the sampled images."""
    image_modes: tuple[tuple[str, int], ...]
    """Pillow mode with its count over the sampled images."""
    sampled: int

    def lines(self) -> list[str]:
        """Human-readable lines, for the CLI to print."""
        out = [f"pairing: rule {self.rule} pairs {self.pairs} image(s) with their masks"]
        out += [f"  not {rule}: {why}" for rule, why in self.rejected]
        for what, names in (
            ("images without a mask", self.unpaired_images),
            ("masks without an image (left out)", self.unpaired_masks),
            ("images without an ROI", self.missing_roi),
        ):
            if names:
                more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
                out.append(f"{what}: {len(names)}: {', '.join(names[:_SHOWN])}{more}")
        out.append(f"image modes (of {self.sampled} sampled): " + _counts(self.image_modes))
        out.append(f"image sizes, width x height (of {self.sampled} sampled): " + _counts(self.image_sizes))
        values = [(_value_text(v), n) for v, n in self.mask_values]
        out.append("mask values (pixels): " + ", ".join(f"{v}: {n}" for v, n in values))
        return out


def _counts(pairs: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{k} ({n})" for k, n in pairs)


def infer_spec(
    images: Path, masks: Path, *, name: str | None = None, roi: Path | None = None
) -> tuple[FolderSpec, Inspection]:
    """Propose a spec for an image folder and a mask folder, and say what was seen.

    Pairing: "stem", then the most common "suffix", then "id" with leading digits, trailing digits, the
    first and the last ``_``/``-`` token; a rule counts only when no two files pair the same way, and the
    one pairing the most images wins (ties: that order). Channels: 1 when every sampled image is gray.
    Classes: every value in the paired masks, ``background``/``foreground`` for {0, 1} or {0, 255}, else
    ``class0..`` in value order; colour masks give colour classes. Split: "blocks" for one TIFF stack,
    else "groups". Name: the images folder's parent's, sanitised.

    Raises:
        DataError: missing folders, no rule that pairs, unreadable files, or masks that hold fewer than
            2 or more than 64 values.
    """
    for key, folder in (("images", images), ("masks", masks), ("roi", roi)):
        if folder is not None and not Path(folder).is_dir():
            raise DataError(f"{folder}: {key} folder not found; check the path")
    image_files, mask_files = _list(Path(images), IMAGE_SUFFIXES), _list(Path(masks), MASK_SUFFIXES)
    for folder, files, suffixes in (
        (images, image_files, IMAGE_SUFFIXES),
        (masks, mask_files, MASK_SUFFIXES),
    ):
        if not files:
            raise DataError(f"{folder}: no files found (looked for {', '.join(suffixes)})")
    rule, pairing, rejected = _choose_rule(image_files, mask_files)
    step = math.ceil(len(pairing.pairs) / _SAMPLED_IMAGES)
    infos = [image_info(p.image) for p in pairing.pairs[::step]]  # spread over the folder
    modes = Counter(i.mode for i in infos)
    sizes = Counter(f"{i.width}x{i.height}" for i in infos)
    with ThreadPoolExecutor(max_workers=4) as pool:
        seen = list(pool.map(_mask_content, [p.mask for p in pairing.pairs]))
    colour = any(c for c, _ in seen)
    total: Counter[int] = Counter()
    for is_colour, counts in seen:
        for v, n in counts.items():
            # with colour masks about, a gray mask's value v is the colour (v, v, v)
            total[v * 0x010101 if colour and not is_colour else v] += n
    values = sorted(total)
    if len(values) > _MAX_CLASSES:
        raise DataError(
            f"{masks}: the masks hold {len(values)} different values; class masks hold a few. Are these "
            "label masks, saved losslessly (not as JPEG)? Otherwise write [classes] by hand"
        )
    if len(values) < 2:
        raise DataError(
            f"{masks}: every mask holds the single value {values}; a segmentation needs 2 classes"
        )
    classes: list[tuple[str, ClassValue]]
    if colour:
        classes = [("background" if v == 0 else f"class{i}", _unpack(v)) for i, v in enumerate(values)]
    elif values in ([0, 1], [0, 255]):
        classes = [("background", 0), ("foreground", values[1])]
    else:
        classes = [(f"class{i}", v) for i, v in enumerate(values)]
    one_stack = len(pairing.pairs) == 1 and _pages(pairing.pairs[0])[0] > 1
    spec = FolderSpec(
        name=name if name is not None else _sanitised(Path(os.path.abspath(images)).parent.name),
        images=Path(images),
        masks=Path(masks),
        classes=tuple(classes),
        pairing=rule,
        roi=roi,
        channels=1 if all(m in _GRAY_MODES for m in modes) else 3,
        split="blocks" if one_stack else "groups",
    )
    missing_roi = pair_files(spec).missing_roi if roi is not None else ()
    inspection = Inspection(
        rule=rule.describe(),
        pairs=len(pairing.pairs),
        rejected=tuple(rejected),
        unpaired_images=tuple(p.name for p in pairing.unpaired_images),
        unpaired_masks=tuple(p.name for p in pairing.unpaired_masks),
        missing_roi=tuple(p.name for p in missing_roi),
        mask_values=tuple((_unpack(v) if colour else v, total[v]) for v in values),
        image_sizes=tuple(sizes.most_common()),
        image_modes=tuple(modes.most_common()),
        sampled=len(infos),
    )
    return spec, inspection


def _sanitised(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_") or "data"


def _common_suffix(images: Sequence[Path], masks: Sequence[Path]) -> str | None:
    """The most common ``x`` such that a mask's stem is an image's stem followed by ``x``."""
    stems = {p.stem for p in images}
    found: Counter[str] = Counter()
    for mask in masks:
        found.update(mask.stem[k:] for k in range(1, len(mask.stem)) if mask.stem[:k] in stems)
    return found.most_common(1)[0][0] if found else None


def _choose_rule(
    images: Sequence[Path], masks: Sequence[Path]
) -> tuple[PairingRule, Pairing, list[tuple[str, str]]]:
    candidates = [PairingRule("stem")]
    suffix = _common_suffix(images, masks)
    if suffix is not None:
        candidates.append(PairingRule("suffix", suffix=suffix))
    candidates += [PairingRule("id", pattern=p) for p in _ID_PATTERNS]
    tried = [(rule, _match(images, masks, None, rule)) for rule in candidates]
    usable = [(rule, p) for rule, p in tried if p.pairs and not p.ambiguous]
    why: dict[PairingRule, str] = {}
    for rule, p in tried:
        if p.ambiguous:
            a, b = p.ambiguous[0]
            why[rule] = f"ambiguous: {a.name} and {b.name} pair the same way"
        elif not p.pairs:
            why[rule] = "pairs no image"
    if not usable:
        reasons = "; ".join(f"{rule.describe()}: {why[rule]}" for rule, _ in tried)
        raise DataError(
            f"{images}: no pairing rule pairs these images with the masks unambiguously ({reasons}); "
            'write [pairing] by hand, e.g. rule = "id" with a pattern'
        )
    best, pairing = max(usable, key=lambda t: len(t[1].pairs))  # the first of equals: the order above
    for rule, p in usable:
        later = (
            "" if len(p.pairs) < len(pairing.pairs) else ", as many, but it comes later in the order tried"
        )
        why[rule] = f"pairs {len(p.pairs)} of {len(images)} images{later}"
    return best, pairing, [(rule.describe(), why[rule]) for rule, _ in tried if rule != best]


def _mask_content(path: Path) -> tuple[bool, Counter[int]]:
    """Whether a mask is in colour, and its pixel count per value (per colour packed as 0xRRGGBB)."""
    info = image_info(path)
    colour, counts = False, Counter[int]()
    for page in range(_page_count(path)):
        if info.mode in _GRAY_MODES:
            raw = read_image(path, page=page, sixteen_bit="keep")
        else:
            rgb = read_image(path, mode="RGB", page=page)
            if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                # gray after all: a gray palette's indices are the values (as FolderDataset reads them)
                raw = read_image(path, page=page) if info.mode == "P" else rgb[..., 0]
            else:
                colour, raw = True, _packed_rgb(rgb)
        values, n = np.unique(raw if raw.ndim == 2 else raw[..., 0], return_counts=True)
        counts.update(dict(zip(values.tolist(), n.tolist(), strict=True)))
    return colour, counts

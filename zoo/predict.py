"""Segment image files of any size with a zoo model: the library behind ``unet-zoo predict``.

Each input is predicted whole through :mod:`zoo.tiling` (overlap-tile inference; optional test-time
augmentation) and its results are written to the output folder, named after the input:

- ``<stem>_mask.png`` for PNG, JPEG, GIF and BMP inputs, ``<stem>_mask.tif`` (one page per input page)
  for TIFF stacks: class indices ``0 .. K-1`` as 8-bit pixels. Never JPEG: masks stay lossless.
- ``<stem>_prob.tif`` with ``probabilities``: float32 TIFF (lossless deflate), ``K`` pages per input
  page in the order ``page * K + class`` (one page for one-class models), values in [0, 1]: exact, and
  read by Pillow, tifffile, ImageJ and GDAL alike.
- ``<stem>_overlay.png`` / ``.tif`` with ``overlays``: the image with each foreground class tinted.

An unreadable input, or one whose outputs would overwrite an input or another input's outputs, is
reported with its reason and skipped; the others are still predicted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from zoo.data.io import DataError, read_image, read_stack, write_image, write_stack
from zoo.models.base import SegmentationModel
from zoo.tiling import (
    DEFAULT_TILE,
    TTA_MODES,
    labels_from_probabilities,
    plan_axis,
    predict_labels,
    predict_probabilities,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "STACK_SUFFIXES",
    "PredictOutcome",
    "add_parser",
    "collect_inputs",
    "output_paths",
    "overlay",
    "predict_files",
    "run",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")
STACK_SUFFIXES = (".tif", ".tiff")
_OUTPUT_TAGS = ("_mask", "_prob", "_overlay")
# tint per class (class 0, the background, is left as it is); cycles beyond 8 classes
_PALETTE = np.array(
    [[255, 0, 255], [0, 255, 0], [0, 160, 255], [255, 200, 0], [255, 60, 60], [0, 255, 200], [160, 80, 255]],
    dtype=np.float32,
)


@dataclass
class PredictOutcome:
    """What happened to one input: the files written, the pages predicted, or why it failed."""

    input: Path
    outputs: list[Path] = field(default_factory=list)
    pages: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def collect_inputs(inputs: Sequence[str | Path], *, out_dir: str | Path | None = None) -> list[Path]:
    """The input files: files as given (in order, even missing ones: they fail later, by name), folders
    expanded to their image and TIFF files (sorted, not recursive). In a folder that is also ``out_dir``,
    files named like predict's own outputs (``*_mask``, ``*_prob``, ``*_overlay``) are left out."""
    out = Path(out_dir).resolve() if out_dir is not None else None
    paths: list[Path] = []
    for item in map(Path, inputs):
        if not item.is_dir():
            paths.append(item)
            continue
        own_outputs = item.resolve() == out
        paths.extend(
            p
            for p in sorted(item.iterdir())
            if p.is_file()
            and p.suffix.lower() in IMAGE_SUFFIXES + STACK_SUFFIXES
            and not (own_outputs and p.stem.endswith(_OUTPUT_TAGS))
        )
    return paths


def output_paths(
    path: str | Path, out_dir: str | Path, *, probabilities: bool = False, overlays: bool = False
) -> dict[str, Path]:
    """Where the outputs of input ``path`` go: ``{"mask": ..., "probabilities": ..., "overlay": ...}``
    (the last two when asked for). Stacks keep TIFF; every other input gets PNG."""
    p, out = Path(path), Path(out_dir)
    suffix = ".tif" if p.suffix.lower() in STACK_SUFFIXES else ".png"
    paths = {"mask": out / f"{p.stem}_mask{suffix}"}
    if probabilities:
        paths["probabilities"] = out / f"{p.stem}_prob.tif"
    if overlays:
        paths["overlay"] = out / f"{p.stem}_overlay{suffix}"
    return paths


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``: the image (gray ``(H, W)`` or ``(H, W, C)``) with class ``k >= 1`` pixels
    blended half and half with the ``k``-th palette colour (magenta, green, blue, ...)."""
    rgb = image if image.ndim == 3 else image[..., None]
    rgb = np.repeat(rgb[..., :1], 3, axis=2) if rgb.shape[2] != 3 else rgb
    out = rgb.astype(np.float32)
    for k in np.unique(labels):
        if k == 0:
            continue
        where = labels == k
        out[where] = 0.5 * out[where] + 0.5 * _PALETTE[(int(k) - 1) % len(_PALETTE)]
    return out.round().astype(np.uint8)


@contextlib.contextmanager
def _large_images_allowed() -> Iterator[None]:
    # Pillow refuses images above ~179 Mpx as "decompression bombs" (a guard for untrusted web uploads);
    # predict exists to segment images of any size that the user chose, so the guard is lifted while
    # reading them
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _read_pages(path: Path, in_channels: int) -> np.ndarray:
    """``(N, H, W, C)`` uint8: one page for an image, every page of a TIFF stack."""
    suffix = path.suffix.lower()
    if suffix in STACK_SUFFIXES:
        if in_channels != 1:
            raise DataError(
                f"{path}: TIFF stacks are read as gray pages, but the model takes {in_channels} channels; "
                "save the images as PNG, or use a model with in_channels=1"
            )
        return read_stack(path)[..., None]
    if suffix not in IMAGE_SUFFIXES:
        raise DataError(
            f"{path}: {suffix or 'no suffix'} is not a format predict reads; use one of "
            f"{', '.join(IMAGE_SUFFIXES + STACK_SUFFIXES)}"
        )
    image = read_image(path, mode="L" if in_channels == 1 else "RGB")
    return (image[..., None] if image.ndim == 2 else image)[None]


def _write_float_pages(path: Path, pages: Sequence[np.ndarray]) -> None:
    images = [Image.fromarray(np.ascontiguousarray(p, dtype=np.float32)) for p in pages]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], compression="tiff_deflate")


def _predict_one(
    model: SegmentationModel,
    path: Path,
    outputs: dict[str, Path],
    options: dict[str, Any],
) -> int:
    with _large_images_allowed():
        pages = _read_pages(path, model.in_channels)
    masks: list[np.ndarray] = []
    probability_pages: list[np.ndarray] = []
    overlays: list[np.ndarray] = []
    for page in pages:
        x = torch.from_numpy(page).permute(2, 0, 1)  # (C, H, W) uint8: tiling scales it tile by tile
        if "probabilities" in outputs:
            probs = predict_probabilities(model, x, **options)
            labels = labels_from_probabilities(probs)[0].numpy()
            probability_pages.extend(probs[0].numpy())
        else:
            labels = predict_labels(model, x, **options)[0].numpy()
        masks.append(labels)
        if "overlay" in outputs:
            overlays.append(overlay(page, labels))
    stack = outputs["mask"].suffix == ".tif"
    if stack:
        write_stack(outputs["mask"], masks)
    else:
        write_image(outputs["mask"], masks[0])
    if "probabilities" in outputs:
        _write_float_pages(outputs["probabilities"], probability_pages)
    if "overlay" in outputs:
        if stack:
            write_stack(outputs["overlay"], overlays)
        else:
            write_image(outputs["overlay"], overlays[0])
    return len(pages)


def _conflict(outputs: dict[str, Path], inputs: set[Path], claimed: dict[Path, Path]) -> str | None:
    for kind, target in outputs.items():
        resolved = target.resolve()
        if resolved in inputs:
            return f"its {kind} would overwrite the input {target}; choose another --out folder"
        if resolved in claimed:
            return (
                f"its {kind} would overwrite {target}, an output of {claimed[resolved]}; predict inputs "
                "with the same name into separate --out folders"
            )
    return None


def predict_files(
    model: SegmentationModel,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    tta: str = "none",
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    probabilities: bool = False,
    overlays: bool = False,
    device: str | torch.device | None = None,
    amp: str = "auto",
    channels_last: bool | None = None,
    progress: bool = True,
) -> list[PredictOutcome]:
    """Predict every input file (folders expanded by :func:`collect_inputs`) into ``out_dir``.

    Args:
        model: a zoo model with its weights; moved to ``device`` (and channels-last when used).
        tta: ``"none"``, ``"flips"`` or ``"d4"`` (:func:`zoo.tiling.predict_probabilities`).
        tile, overlap, batch_size: tiling options (:func:`zoo.tiling.predict_logits`).
        probabilities, overlays: also write ``<stem>_prob.tif`` / ``<stem>_overlay.*`` (module docstring).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; None keeps the model where it is.
        amp: autocast dtype: ``"auto"`` (bf16 where supported), ``"bf16"``, ``"fp16"`` (CUDA) or ``"none"``.
        channels_last: None: on wherever autocast is (as the harness trains and evaluates).
        progress: a progress bar over the files.

    Returns:
        One :class:`PredictOutcome` per input, in order. Failures (unreadable files, outputs that would
        overwrite an input or another input's outputs) are logged and returned, never raised.

    Raises:
        ValueError: a model whose input channels or classes predict cannot read or write.
    """
    from zoo.harness.training import resolve_amp, resolve_channels_last, resolve_device

    if model.in_channels not in (1, 3):
        raise ValueError(
            f"{model.model_name or type(model).__name__} takes {model.in_channels} input channels; predict "
            "reads gray (1 channel) or RGB (3 channels) images"
        )
    if model.num_classes > 256:
        raise ValueError(f"{model.num_classes} classes do not fit 8-bit mask files (at most 256)")
    dev = next(model.parameters()).device if device is None else resolve_device(str(device))
    dtype = resolve_amp(amp, dev)
    use_channels_last = resolve_channels_last(channels_last, dtype)
    model.to(dev)
    if use_channels_last:
        model.to(memory_format=torch.channels_last)
    options: dict[str, Any] = dict(
        tta=tta,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        autocast_dtype=dtype,
        channels_last=use_channels_last,
    )
    out = Path(out_dir)
    # fail on bad tiling options now, not at the first file: a plan longer than a tile checks both
    longest = 2 * (tile or DEFAULT_TILE)
    plan_axis(model, longest, tile=tile, overlap=overlap)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    paths: list[Path] = []
    outcomes: list[PredictOutcome] = []
    for item in inputs:  # each input expanded once; an empty folder is an error of its own
        found = collect_inputs([item], out_dir=out)
        if Path(item).is_dir() and not found:
            outcomes.append(
                PredictOutcome(
                    Path(item),
                    error=f"{item}: no image files in this folder (predict reads "
                    f"{', '.join(IMAGE_SUFFIXES + STACK_SUFFIXES)})",
                )
            )
        paths.extend(found)
    for outcome in outcomes:
        log.error("%s", outcome.error)
    input_set = {p.resolve() for p in paths}
    claimed: dict[Path, Path] = {}
    with tqdm(total=len(paths), unit="file", desc="predict", disable=not progress) as bar:
        for path in paths:
            bar.set_postfix_str(path.name, refresh=False)
            targets = output_paths(path, out, probabilities=probabilities, overlays=overlays)
            outcome = PredictOutcome(path)
            start = time.perf_counter()
            conflict = _conflict(targets, input_set, claimed)
            if conflict is not None:
                outcome.error = f"{path}: skipped: {conflict}"
            else:
                claimed.update({t.resolve(): path for t in targets.values()})
                try:
                    outcome.pages = _predict_one(model, path, targets, options)
                    outcome.outputs = list(targets.values())
                except (DataError, OSError) as err:
                    # the reason names the file (DataError) or the failing path (OSError)
                    outcome.error = str(err) if str(path) in str(err) else f"{path}: {err}"
            outcome.seconds = time.perf_counter() - start
            if outcome.error is not None:
                log.error("%s", outcome.error)
            outcomes.append(outcome)
            bar.update()
    return outcomes


# -- the command line -------------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``predict`` to an ``argparse`` sub-command set; the parser's default ``func`` is :func:`run`."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "predict",
        help="segment images of any size with a model and its weights (overlap-tile inference)",
        description=(
            "Segment images of any size: overlap-tile inference with mirror padding (valid-convolution "
            "models stitch exactly; padded models blend overlapping windows). Writes <stem>_mask.png "
            "(class indices; <stem>_mask.tif for TIFF stacks) into --out; unreadable inputs are reported "
            "and skipped, and the exit code is 1 if any input failed."
        ),
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files (PNG, JPEG, GIF, BMP), multi-page TIFF stacks, or folders of them",
    )
    p.add_argument("--model", required=True, help="registered model name, e.g. unet (see `unet-zoo models`)")
    p.add_argument(
        "--weights",
        required=True,
        metavar="TAG|PATH",
        help="a weights tag of the model or a .safetensors file",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument(
        "--tta",
        choices=list(TTA_MODES),
        default="none",
        help="test-time augmentation: flips (4 copies) or d4 (8 flips and rotations, as the paper); "
        "probabilities are averaged (default: none)",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        help=f"largest tile side in pixels (default {DEFAULT_TILE}); smaller tiles use less memory",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="padded models: least overlap of blended windows in pixels (default: tile / 8)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass (default 4)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--amp",
        choices=["auto", "bf16", "fp16", "none"],
        default="auto",
        help="autocast dtype (default auto: bf16 where the hardware has it, with channels-last)",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <stem>_prob.tif: float32, K pages per input page (page * K + class)",
    )
    p.add_argument(
        "--overlays",
        action="store_true",
        help="also write <stem>_overlay.png/.tif: classes tinted on the image",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """``unet-zoo predict``: 0 when every input was predicted, 1 when some failed, 2 for a bad model."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from zoo.registry import UnknownModelError, create_model
    from zoo.weights import WeightsError

    try:
        model = create_model(args.model, weights=args.weights)
    except (UnknownModelError, WeightsError, ValueError, TypeError) as err:
        print(f"unet-zoo predict: error: {err}", file=sys.stderr)
        return 2
    if not isinstance(model, SegmentationModel):
        print(f"unet-zoo predict: error: {args.model} is not a zoo SegmentationModel", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with logging_redirect_tqdm():
        outcomes = predict_files(
            model,
            args.inputs,
            args.out,
            tta=args.tta,
            tile=args.tile,
            overlap=args.overlap,
            batch_size=args.batch_size,
            probabilities=args.probabilities,
            overlays=args.overlays,
            device=args.device,
            amp=args.amp,
            progress=not args.no_progress,
        )
    done = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    pages = sum(o.pages for o in done)
    print(
        f"predicted {len(done)} of {len(outcomes)} input(s) ({pages} image(s)) into {args.out} "
        f"in {time.perf_counter() - start:.1f} s (tta={args.tta})"
    )
    if failed:
        print(f"{len(failed)} input(s) failed:", file=sys.stderr)
        for o in failed:
            print(f"  {o.error}", file=sys.stderr)
        return 1
    return 0

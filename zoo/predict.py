"""Segment image files of any size with a zoo model: the library behind ``unet-zoo predict``.

Each input is first brought to the scale the weights were trained at (:func:`prediction_size`): weights
trained on resized images (:class:`zoo.weights.TrainingScale`, e.g. Carvana photos squashed to 192x192)
get every input resized the same way, and the class probabilities are resampled back to the input's size
(bilinear) before the argmax, so outputs always have the input's size. ``scale`` overrides this
(``"none"``, a factor, or ``(H, W)``). The image at that size is predicted whole through
:mod:`zoo.tiling` (overlap-tile inference; optional test-time augmentation) and its results are written
to the output folder, named after the input:

- ``<stem>_mask.png`` for PNG, JPEG, GIF and BMP inputs, ``<stem>_mask.tif`` (one page per input page)
  for TIFF stacks: class indices ``0 .. K-1`` as 8-bit pixels. Never JPEG: masks stay lossless.
- ``<stem>_prob.tif`` with ``probabilities``: float32 TIFF (lossless deflate), ``K`` pages per input
  page in the order ``page * K + class`` (one page for one-class models), values in [0, 1]: exact, and
  read by Pillow, tifffile, ImageJ and GDAL alike.
- ``<stem>_overlay.png`` / ``.tif`` with ``overlays``: the image with each foreground class tinted.

An unreadable input, or one whose outputs would overwrite an input or another input's outputs, is
reported with its reason and skipped; the others are still predicted. Output files that exist already
(a mask of the user's named ``<stem>_mask.png``, or an earlier call's) are replaced only with ``force``
(``--force``): without it they are named and nothing is predicted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from zoo.data.datasets import resize_image
from zoo.data.io import DataError, read_image, read_pages, write_image, write_stack
from zoo.errors import ConfigError, ZooError
from zoo.models.base import SegmentationModel
from zoo.runtime import Precision, resolve_device
from zoo.tiling import DEFAULT_TILE, TTA_MODES, TiledInferer, labels_from_probabilities
from zoo.weights import TrainingScale

__all__ = [
    "FAR_FROM_SCALE",
    "IMAGE_SUFFIXES",
    "STACK_SUFFIXES",
    "PredictOutcome",
    "Scale",
    "add_parser",
    "collect_inputs",
    "output_paths",
    "overlay",
    "parse_scale",
    "predict_files",
    "predict_image",
    "prediction_size",
    "resample_probabilities",
    "run",
    "scale_warning",
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


Scale = str | float | tuple[int, int]
"""What ``scale`` accepts: ``"auto"`` (the weights' training scale), ``"none"`` (the input's own size), a
factor (``0.5``: half the height and the width) or a size ``(H, W)``."""

FAR_FROM_SCALE = 2.0
"""Weights trained without a resize expect inputs at their training images' pixel scale, which predict
cannot see; it warns when an input's height or width is more than this factor above or below the
training images' (a hint that the pixels may be at another scale)."""

_SCALE_CHOICES = "auto, none, a size HxW (height x width, e.g. 192x192) or a factor (e.g. 0.5)"
# resampled probabilities are turned into labels band by band within about this many bytes, so that a
# huge input predicted at a smaller scale never holds full-size probabilities (unless they are written)
_BAND_BYTES = 64 << 20
_SHOWN_FILES = 5  # files named in an error; the rest are counted


@dataclass
class PredictOutcome:
    """What happened to one input: the files written, the pages predicted, or why it failed; the size
    ``(H, W)`` the model saw (the input's own, or its resampled one) and the scale rule that chose it;
    warnings about it (an input far from the training images' size)."""

    input: Path
    outputs: list[Path] = field(default_factory=list)
    pages: int = 0
    seconds: float = 0.0
    error: str | None = None
    size: tuple[int, int] | None = None
    scale: str = ""
    warnings: list[str] = field(default_factory=list)

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


def _hw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _checked_scale(scale: Scale) -> Scale:
    if isinstance(scale, str) and scale in ("auto", "none"):
        return scale
    if (
        isinstance(scale, tuple)
        and len(scale) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in scale)
    ):
        return scale
    if isinstance(scale, int | float) and not isinstance(scale, bool) and 0 < scale < float("inf"):
        return float(scale)
    raise ConfigError(f"scale={scale!r} is not a scale; use {_SCALE_CHOICES}")


def parse_scale(text: str) -> Scale:
    """The :data:`Scale` that ``--scale`` text names: ``auto``, ``none``, ``HxW`` or a factor.

    Raises:
        ValueError: anything else, with the forms accepted.
    """
    value = text.strip().lower()
    if value in ("auto", "none"):
        return value
    try:
        if "x" in value:
            h, _, w = value.partition("x")
            parsed: Scale = (int(h), int(w))
        else:
            parsed = float(value)
    except ValueError:
        raise ConfigError(f"scale {text!r} is not a scale; use {_SCALE_CHOICES}") from None
    return _checked_scale(parsed)


def prediction_size(
    size: tuple[int, int], scale: Scale = "auto", training: TrainingScale | None = None
) -> tuple[tuple[int, int], str]:
    """The ``(H, W)`` at which an input of ``size`` is predicted, and the rule that chose it, in words.

    - ``"auto"``: the training scale's ``resize`` when the weights record one (every input resized to it,
      aspect ratio not kept, as the training images were), else the input's own size;
    - ``"none"``: the input's own size; a factor ``f``: ``(round(f * H), round(f * W))``, at least 1;
      ``(H, W)``: that size.

    Raises:
        ValueError: a ``scale`` that is none of these.
    """
    scale = _checked_scale(scale)
    h, w = size
    if scale == "auto":
        if training is not None and training.resize is not None:
            return training.resize, "the weights' training scale"
        return size, "the input's size: the weights record no resize"
    if scale == "none":
        return size, "the input's size: scale none"
    if isinstance(scale, tuple):
        return scale, "the size asked for"
    assert isinstance(scale, float)
    return (max(1, round(h * scale)), max(1, round(w * scale))), f"factor {scale:g} of the input's size"


def scale_warning(
    size: tuple[int, int], training: TrainingScale | None, *, weights: str = "the weights"
) -> str | None:
    """Why an input of ``size``, predicted at its own size by ``weights`` trained without a resize, may be
    at another pixel scale than the training images: a side more than :data:`FAR_FROM_SCALE` times the
    training images' or less than its inverse. None when that is not the case, when the weights record
    a resize (predict then applies it), or when they do not record their training images' size."""
    if training is None or training.resize is not None or training.image_size is None:
        return None
    ratios = [n / t for n, t in zip(size, training.image_size, strict=True)]
    if all(1 / FAR_FROM_SCALE <= r <= FAR_FROM_SCALE for r in ratios):
        return None
    factor = float(f"{(1 / (ratios[0] * ratios[1])) ** 0.5:.2g}")
    return (
        f"{_hw(size)} is more than {FAR_FROM_SCALE:g}x off the {_hw(training.image_size)} (height x width) "
        f"images {weights} were trained on at their own scale. If its pixels are at the training images' "
        f"scale (a larger or smaller field of view), ignore this; otherwise predict it resampled to that "
        f"scale, e.g. with --scale {factor:g}"
    )


def _linear_taps(n_in: int, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
    # pixel centres aligned (align_corners=False), as torch's bilinear interpolation and Pillow place them
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo, hi, (src - lo).float()


def _resampled_bands(
    probabilities: Tensor, size: tuple[int, int], *, band_bytes: int = _BAND_BYTES
) -> Iterator[tuple[int, Tensor]]:
    """``(top, band)``: bilinear resampling of ``probabilities (B, K, h, w)`` to ``size``, a band of
    output rows at a time (each ``(B, K, rows, W)``), so no full-size tensor is ever made."""
    b, k, h, w = probabilities.shape
    out_h, out_w = size
    row_lo, row_hi, row_t = _linear_taps(h, out_h)
    col_lo, col_hi, col_t = _linear_taps(w, out_w)
    rows = max(1, band_bytes // (4 * b * k * max(w, out_w) * 4))  # ~4 float32 temporaries per band
    for top in range(0, out_h, rows):
        sl = slice(top, min(top + rows, out_h))
        t = row_t[sl].view(-1, 1)
        band = torch.lerp(probabilities[:, :, row_lo[sl]], probabilities[:, :, row_hi[sl]], t)
        yield top, torch.lerp(band[..., col_lo], band[..., col_hi], col_t)


def resample_probabilities(probabilities: Tensor, size: tuple[int, int]) -> Tensor:
    """Class probabilities ``(B, K, h, w)`` resampled bilinearly to ``(B, K, H, W)`` with ``size = (H,
    W)`` (pixel centres aligned: equal to ``F.interpolate(mode="bilinear", align_corners=False)``). A
    weighted mean of probabilities: the classes still sum to one at every pixel."""
    return F.interpolate(probabilities, size=size, mode="bilinear", align_corners=False)


def _predict_page(
    model: SegmentationModel,
    page: np.ndarray,
    size: tuple[int, int],
    probabilities: bool,
    inferer: TiledInferer,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels ``(H, W)`` of a page ``(H, W, C)`` predicted at ``size``, and its probabilities
    ``(K, H, W)`` when asked; both at the page's own size."""
    own = page.shape[:2]
    if size == own:  # tiling alone: memory bounded by the tile and band sizes, whatever the image size
        x = torch.from_numpy(page).permute(2, 0, 1)  # (C, H, W) uint8: tiling scales it tile by tile
        if not probabilities:
            return inferer.labels(model, x)[0].numpy(), None
        probs = inferer.probabilities(model, x)
        return labels_from_probabilities(probs)[0].numpy(), probs[0].numpy()
    # the image is resampled as the training images were, and the class probabilities back rather than
    # the labels: boundaries then follow the interpolated probabilities at the input's resolution instead
    # of the blocks of the coarse pixels
    x = torch.from_numpy(resize_image(page, size)).permute(2, 0, 1)
    probs = inferer.probabilities(model, x)
    if probabilities:
        full = resample_probabilities(probs, own)
        return labels_from_probabilities(full)[0].numpy(), full[0].numpy()
    bands = [labels_from_probabilities(band)[0].numpy() for _, band in _resampled_bands(probs, own)]
    return np.concatenate(bands), None


def predict_image(
    model: SegmentationModel,
    image: np.ndarray,
    *,
    scale: Scale = "auto",
    inferer: TiledInferer | None = None,
    probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One decoded image predicted as :func:`predict_files` predicts a file's page: brought to ``scale``
    (:func:`prediction_size`: by default the weights' training scale), predicted whole by overlap-tile
    inference, and its classes brought back to the image's size.

    Args:
        image: uint8 ``(H, W, C)``, ``C`` the model's input channels (gray or RGB as 8-bit files decode).
        inferer: default: predict's for the model's device (:func:`predict_files`); the model runs where
            it is, and should already be in the inferer's memory format.

    Returns:
        The class of each pixel, uint8 ``(H, W)``, and with ``probabilities`` the class probabilities,
        float32 ``(K, H, W)`` (None without).

    Raises:
        ValueError: an image that is not uint8 ``(H, W, in_channels)``; a bad scale.
    """
    channels = model.in_channels
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != channels:
        kind = "gray" if channels == 1 else f"{channels}-channel"
        raise ConfigError(
            f"an image of {image.dtype} {tuple(image.shape)}: {model.model_name or 'the model'} predicts "
            f"uint8 (H, W, {channels}) images (8-bit {kind} pixels)"
        )
    device = next(model.parameters()).device
    inferer = inferer or TiledInferer(precision=Precision.resolve("auto", device))
    own = (image.shape[0], image.shape[1])
    size, _ = prediction_size(own, _checked_scale(scale), getattr(model, "training_scale", None))
    return _predict_page(model, image, size, probabilities, inferer)


def _read_pages(path: Path, in_channels: int) -> np.ndarray:
    """``(N, H, W, C)`` uint8: one page for an image, every page of a TIFF stack; each decoded as the
    data loader decodes it (gray or RGB as the model takes, 16-bit scaled), so an RGB TIFF is RGB here too."""
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES + STACK_SUFFIXES:
        raise DataError(
            f"{path}: {suffix or 'no suffix'} is not a format predict reads; use one of "
            f"{', '.join(IMAGE_SUFFIXES + STACK_SUFFIXES)}"
        )
    mode = "L" if in_channels == 1 else "RGB"
    if suffix in STACK_SUFFIXES:
        pages = read_pages(path, mode=mode)
    else:  # the first frame of an animated GIF, as training reads it
        pages = read_image(path, mode=mode, sixteen_bit="scale")[None]
    return pages[..., None] if pages.ndim == 3 else pages


def _write_float_pages(path: Path, pages: Sequence[np.ndarray]) -> None:
    images = [Image.fromarray(np.ascontiguousarray(p, dtype=np.float32)) for p in pages]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], compression="tiff_deflate")


def _predict_one(
    model: SegmentationModel,
    outcome: PredictOutcome,
    outputs: dict[str, Path],
    scale: Scale,
    inferer: TiledInferer,
) -> None:
    """Predict ``outcome.input`` into ``outputs``, recording its pages, size, scale rule and warnings."""
    path = outcome.input
    pages = _read_pages(path, model.in_channels)  # zoo.data.io's pixel limit applies (UNET_ZOO_MAX_PIXELS)
    training: TrainingScale | None = getattr(model, "training_scale", None)
    own = pages.shape[1:3]
    outcome.size, outcome.scale = prediction_size(own, scale, training)
    if scale == "auto" and outcome.size == own:
        weights = getattr(model, "pretrained_weights", None) or "the weights"
        warning = scale_warning(own, training, weights=weights)
        if warning is not None:
            outcome.warnings.append(f"{path}: {warning}")
    masks: list[np.ndarray] = []
    probability_pages: list[np.ndarray] = []
    overlays: list[np.ndarray] = []
    for page in pages:
        labels, probs = _predict_page(model, page, outcome.size, "probabilities" in outputs, inferer)
        if probs is not None:
            probability_pages.extend(probs)
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
    outcome.pages = len(pages)


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


def _refuse_existing(
    out: Path, paths: Sequence[Path], inputs: set[Path], *, probabilities: bool, overlays: bool
) -> None:
    """Refuse, before anything is predicted, outputs that would replace files this call did not write
    (a mask the user drew, named like predict's output). Outputs that are inputs are not among them: those
    inputs are skipped with their reason (:func:`_conflict`)."""
    found = sorted(
        {
            target
            for path in paths
            for target in output_paths(path, out, probabilities=probabilities, overlays=overlays).values()
            if target.exists() and target.resolve() not in inputs
        }
    )
    if found:
        shown = ", ".join(str(t) for t in found[:_SHOWN_FILES])
        more = f" and {len(found) - _SHOWN_FILES} more" if len(found) > _SHOWN_FILES else ""
        raise ConfigError(
            f"{len(found)} output file(s) exist already and would be replaced: {shown}{more}; nothing was "
            "predicted: choose another output folder (--out), or replace them with force (--force)"
        )


def predict_files(
    model: SegmentationModel,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    scale: Scale = "auto",
    inferer: TiledInferer | None = None,
    probabilities: bool = False,
    overlays: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    force: bool = False,
) -> list[PredictOutcome]:
    """Predict every input file (folders expanded by :func:`collect_inputs`) into ``out_dir``.

    Args:
        model: a zoo model with its weights; moved to ``device`` (and channels-last when used).
        scale: the size each input is predicted at (:func:`prediction_size`): ``"auto"`` (default) the
            training scale of the model's weights (``model.training_scale``, set by ``create_model(...,
            weights=...)``); ``"none"`` the input's size; a factor; or ``(H, W)``. Outputs always have
            the input's size. An input predicted at its own size that is far from the size of the images
            the weights were trained on gets a warning (:func:`scale_warning`), logged and returned.
        inferer: tiling, batch, precision and test-time augmentation (:class:`zoo.tiling.TiledInferer`);
            default: its defaults at the precision the harness trains with on the device (bf16 with
            channels-last where the hardware has it).
        probabilities, overlays: also write ``<stem>_prob.tif`` / ``<stem>_overlay.*`` (module docstring).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; None keeps the model where it is.
        progress: a progress bar over the files.
        force: replace output files that exist already; without it, any such file is refused before
            anything is predicted (it may be a file of the user's, such as a hand-drawn ``<stem>_mask.png``).

    Returns:
        One :class:`PredictOutcome` per input, in order. Failures (unreadable files, outputs that would
        overwrite an input or another input's outputs) are logged and returned, never raised.

    Raises:
        ValueError: a model whose input channels or classes predict cannot read or write; a bad scale;
            outputs that exist already, without ``force`` (nothing is predicted then).
    """
    if model.in_channels not in (1, 3):
        raise ConfigError(
            f"{model.model_name or type(model).__name__} takes {model.in_channels} input channels; predict "
            "reads gray (1 channel) or RGB (3 channels) images"
        )
    if model.num_classes > 256:
        raise ConfigError(f"{model.num_classes} classes do not fit 8-bit mask files (at most 256)")
    scale = _checked_scale(scale)
    # resolved either way: on a CPU that also flushes denormals (several times faster on some CPUs)
    dev = resolve_device(str(next(model.parameters()).device if device is None else device))
    inferer = inferer or TiledInferer(precision=Precision.resolve("auto", dev))
    inferer.check(model)  # bad tiling options fail now, not at the first file
    inferer.precision.model(model.to(dev))
    out = Path(out_dir)
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
    input_set = {p.resolve() for p in paths}
    if not force:
        _refuse_existing(out, paths, input_set, probabilities=probabilities, overlays=overlays)
    for outcome in outcomes:
        log.error("%s", outcome.error)
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
                    _predict_one(model, outcome, targets, scale, inferer)
                    outcome.outputs = list(targets.values())
                except (DataError, OSError) as err:
                    # the reason names the file (DataError) or the failing path (OSError)
                    outcome.error = str(err) if str(path) in str(err) else f"{path}: {err}"
            outcome.seconds = time.perf_counter() - start
            for warning in outcome.warnings:
                log.warning("%s", warning)
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
            "Segment images of any size: each input is brought to the scale its weights were trained at "
            "(see --scale), then overlap-tile inference with mirror padding (valid-convolution "
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
    p.add_argument(
        "--model",
        default=None,
        help="registered model name, e.g. unet (see `unet-zoo models`); default: the one the weights name "
        "(a .safetensors file written by unet-zoo, an hf-hub: repository's, a models:/ version's)",
    )
    p.add_argument(
        "--weights",
        required=True,
        metavar="TAG|PATH|hf-hub:ORG/REPO|models:/NAME@ALIAS",
        help="a weights tag of the model, a .safetensors file, a Hugging Face Hub repository "
        "(hf-hub:ORG/REPO[@REVISION]: downloaded into huggingface_hub's cache and checked against the size "
        "and sha256 its config.json records) or a version in MLflow's model registry (models:/NAME@ALIAS "
        "or models:/NAME/VERSION, from MLFLOW_TRACKING_URI, else ./runs/mlflow.db; checked against the "
        "version's size and sha256 tags)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument(
        "--scale",
        type=_scale_arg,
        default="auto",
        metavar="auto|none|HxW|FACTOR",
        help="the size each input is predicted at; masks, probabilities and overlays always have the "
        "input's size (probabilities resampled bilinearly). auto (default): the weights' training scale "
        "(e.g. 192x192 for weights trained on images resized to it), else the input's size; none: the "
        "input's size; HxW (height x width, e.g. 192x192); or a factor of the input's size (e.g. 0.5)",
    )
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
    p.add_argument(
        "--force",
        action="store_true",
        help="replace output files that exist already (without it, predict names them and predicts nothing)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _scale_arg(text: str) -> Scale:
    try:
        return parse_scale(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run(args: argparse.Namespace) -> int:
    """``unet-zoo predict``: 0 when every input was predicted, 1 when some failed, 2 for a bad model or
    outputs that exist already (without ``--force``)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from zoo.factory import REMOTE_PREFIXES, create_model, fetch_remote
    from zoo.weights import read_metadata

    try:
        device = resolve_device(args.device)
        inferer = TiledInferer(
            tile=args.tile,
            overlap=args.overlap,
            batch_size=args.batch_size,
            precision=Precision.resolve(args.amp, device),
            tta=args.tta,
        )
        name = args.model
        if name is None and str(args.weights).startswith(REMOTE_PREFIXES):
            # the model a Hub repository's or a registered version's file names; the cached copy after this
            name = read_metadata(fetch_remote(args.weights)).get("model_name")
        if name is None:
            if not str(args.weights).endswith(".safetensors"):
                raise ConfigError(f"--weights {args.weights}: a tag needs --model (the model it is a tag of)")
            name = read_metadata(args.weights).get("model_name")
            if not name:
                raise ConfigError(f"{args.weights} names no model in its metadata: give --model")
        model = create_model(name, weights=args.weights)
    except ZooError as err:
        print(f"unet-zoo predict: error: {err}", file=sys.stderr)
        return 2
    if not isinstance(model, SegmentationModel):
        print(f"unet-zoo predict: error: {name} is not a zoo SegmentationModel", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        with logging_redirect_tqdm():
            outcomes = predict_files(
                model,
                args.inputs,
                args.out,
                scale=args.scale,
                inferer=inferer,
                probabilities=args.probabilities,
                overlays=args.overlays,
                device=device,
                progress=not args.no_progress,
                force=args.force,
            )
    except ZooError as err:  # refused before any input was predicted (outputs that exist already)
        print(f"unet-zoo predict: error: {err}", file=sys.stderr)
        return 2
    done = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    pages = sum(o.pages for o in done)
    print(
        f"predicted {len(done)} of {len(outcomes)} input(s) ({pages} image(s)) into {args.out} "
        f"in {time.perf_counter() - start:.1f} s (tta={args.tta})"
    )
    rules: dict[str, list[PredictOutcome]] = {}
    for o in done:
        rules.setdefault(o.scale, []).append(o)
    for rule, group in rules.items():
        sizes = sorted({_hw(o.size) for o in group if o.size is not None})
        shown = ", ".join(sizes[:3]) + (f" and {len(sizes) - 3} more" if len(sizes) > 3 else "")
        print(f"scale: {len(group)} input(s) predicted at {shown} ({rule}); outputs at each input's size")
    warnings = [w for o in outcomes for w in o.warnings]
    if warnings:
        print(f"{len(warnings)} warning(s):", file=sys.stderr)
        for w in warnings:
            print(f"  {w}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} input(s) failed:", file=sys.stderr)
        for o in failed:
            print(f"  {o.error}", file=sys.stderr)
        return 1
    return 0

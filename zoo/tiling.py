"""Whole-image prediction for any model and any image size; the one tiling implementation in the zoo.

Valid-convolution models (the paper's ``unet``) use the overlap-tile strategy of Ronneberger et al. 2015
(Fig. 2): the image is mirrored by the model's context and cut into input tiles whose outputs meet edge
to edge. Every tile sits on one pooling grid anchored at the image's top-left corner (strides are
multiples of the model's input multiple), so the stitched logits equal, up to float rounding, one pass
over the whole mirror-padded image, whatever the tile size.

Padded ("same") models see zero padding at every window border, so their windows overlap and are
blended: each window's logits are weighted by a flat-topped window whose sides rise and fall as a
raised cosine across the overlap with its neighbour; the weights of all windows sum to one at every
pixel, so the result is continuous and equals the window's own logits wherever only one window reaches.
An image that fits one window runs in one pass, mirror-padded up to a size the model accepts.

Memory stays bounded for any image size: the model only ever sees ``batch_size`` tiles at once, and the
stitching keeps a band of rows about one tile high; finished rows are handed on
(:meth:`TiledInferer.bands`). :meth:`TiledInferer.labels` without test-time augmentation therefore never holds
full-size logits. Images may be float in [0, 1] or uint8 (scaled by 1/255 tile by tile, as the zoo's
datasets scale them), so a huge image costs one byte per pixel and channel.

Shapes: ``image (C, H, W)`` or ``(B, C, H, W)`` -> logits or probabilities ``(B, K, H, W)`` float32 and
labels ``(B, H, W)``, on the CPU.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from zoo.errors import ConfigError
from zoo.models.base import SegmentationModel
from zoo.runtime import Precision

__all__ = [
    "DEFAULT_TILE",
    "TTA_MODES",
    "AxisPlan",
    "TiledInferer",
    "labels_from_probabilities",
    "mirror_index",
    "mirror_pad",
    "plan_axis",
    "predict_labels",
    "predict_logits",
    "predict_probabilities",
    "probabilities_from_logits",
]

DEFAULT_TILE = 1024
"""Largest tile side by default. Tiles shrink to the smallest size that covers the image with as many
tiles as this size needs; at 1024 the recomputed context of the paper's ``unet`` costs about 12% more
FLOPs than one pass over a whole mirror-padded Carvana image (1918x1280), against 32% for the paper's
572 tiles."""

_Geometric = Callable[[Tensor], Tensor]
# name -> (transform, its inverse) on the last two axes; every one maps the pixel grid onto itself
_TRANSFORMS: dict[str, tuple[_Geometric, _Geometric]] = {
    "identity": (lambda t: t, lambda t: t),
    "flip_w": (lambda t: t.flip(-1), lambda t: t.flip(-1)),
    "flip_h": (lambda t: t.flip(-2), lambda t: t.flip(-2)),
    "rot180": (lambda t: t.flip(-2, -1), lambda t: t.flip(-2, -1)),
    "rot90": (lambda t: t.rot90(1, (-2, -1)), lambda t: t.rot90(-1, (-2, -1))),
    "rot270": (lambda t: t.rot90(-1, (-2, -1)), lambda t: t.rot90(1, (-2, -1))),
    "transpose": (lambda t: t.transpose(-2, -1), lambda t: t.transpose(-2, -1)),
    "antitranspose": (
        lambda t: t.flip(-2, -1).transpose(-2, -1),
        lambda t: t.flip(-2, -1).transpose(-2, -1),
    ),
}
TTA_MODES: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "flips": ("identity", "flip_w", "flip_h", "rot180"),
    "d4": tuple(_TRANSFORMS),  # the 8 symmetries of the square: flips, rotations, transposes
}


# -- mirror padding ------------------------------------------------------------------------------------
def mirror_index(start: int, stop: int, length: int, *, device: torch.device | str | None = None) -> Tensor:
    """Indices into an axis of ``length`` for the positions ``start .. stop - 1`` (any integers), mirrored
    at the borders without repeating the edge pixel and periodically beyond (``-1 -> 1``, ``length ->
    length - 2``). An axis of length 1 repeats its pixel."""
    pos = torch.arange(start, stop, device=device)
    if length == 1:
        return torch.zeros_like(pos)
    period = 2 * (length - 1)
    pos = pos.remainder(period)
    return torch.where(pos < length, pos, period - pos)


def mirror_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Reflect-pad ``(..., H, W)`` by any amount (:func:`mirror_index`: reflecting again beyond the image)."""
    h, w = x.shape[-2:]
    rows = mirror_index(-top, h + bottom, h, device=x.device)
    cols = mirror_index(-left, w + right, w, device=x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


# -- the plan: where the windows go along one axis -------------------------------------------------------
@dataclass(frozen=True, eq=False)
class AxisPlan:
    """How one image axis of ``length`` pixels is cut into model windows.

    Window ``i`` reads the input pixels ``starts[i] .. starts[i] + window - 1`` (image coordinates;
    positions outside the image are mirrored) and its output pixel ``j`` is image pixel
    ``starts[i] + offset + j``. Its output is written, multiplied by ``weights[i]``, into the image range
    ``spans[i]``; over all windows the weights sum to one at every pixel.
    """

    length: int
    window: int
    offset: int
    starts: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    weights: tuple[Tensor, ...]

    @property
    def count(self) -> int:
        return len(self.starts)

    @property
    def extent(self) -> tuple[int, int]:
        """The mirror-padded range the windows read, ``(first, stop)`` in image coordinates."""
        return self.starts[0], self.starts[-1] + self.window


def plan_axis(
    model: SegmentationModel, length: int, *, tile: int | None = None, overlap: int | None = None
) -> AxisPlan:
    """Windows along one axis of ``length`` pixels for ``model``.

    Args:
        tile: the largest window side (rounded down to a size the model accepts; default
            :data:`DEFAULT_TILE`). Windows shrink to the smallest accepted size that covers ``length``
            with as many windows as ``tile`` needs, so little is computed beyond the image.
        overlap: padded models only: the least overlap of neighbouring windows in pixels (default
            ``tile // 8``). Valid-convolution models need none: their tiles stitch exactly.

    Raises:
        ConfigError: a tile too small for the model or an overlap not below the tile, naming what works.
    """
    if length < 1:
        raise ValueError(f"cannot plan windows over an axis of {length} pixels; images need at least 1")
    requested = DEFAULT_TILE if tile is None else tile
    cap = _largest_valid(model, requested)
    if model.padding_mode == "same":
        if cap is None:
            raise ConfigError(
                f"tile={requested} is smaller than the smallest input {_name(model)} accepts "
                f"({model.min_input_size}); use a tile of at least {model.min_input_size}"
            )
        return _plan_blended(model, length, cap, overlap)
    return _plan_valid(model, length, cap, requested)


def _name(model: SegmentationModel) -> str:
    return model.model_name or type(model).__name__


def _largest_valid(model: SegmentationModel, n: int) -> int | None:
    """The largest input side the model accepts that is at most ``n`` (None if there is none)."""
    if n < model.min_input_size:
        return None
    # accepted sizes repeat with period input_multiple above the minimum, so one period down suffices
    return next(n - d for d in range(model.input_multiple) if model.is_valid_input_size(n - d))


def _smallest_tile_with_stride(model: SegmentationModel, stride: int) -> int:
    """The smallest accepted input whose output, floored to the input multiple, is at least ``stride``."""
    m = model.input_multiple
    t = model.next_valid_input_size(stride)
    while model.output_size(t) // m * m < stride:
        t = model.next_valid_input_size(t + 1)
    return t


def _plan_valid(model: SegmentationModel, length: int, cap: int | None, requested: int) -> AxisPlan:
    m = model.input_multiple
    stride_cap = 0 if cap is None else model.output_size(cap) // m * m
    if stride_cap <= 0:
        smallest = _smallest_tile_with_stride(model, m)
        raise ConfigError(
            f"tile={requested} is too small for {_name(model)}: its output must cover at least one "
            f"{m}-pixel pooling cell; use a tile of at least {smallest}"
        )
    count = math.ceil(length / stride_cap)
    # the smallest grid-aligned stride that covers the axis with that many tiles: the least padding
    stride = math.ceil(math.ceil(length / count) / m) * m
    window = _smallest_tile_with_stride(model, stride)
    offset = (window - model.output_size(window)) // 2
    spans = tuple((i * stride, min((i + 1) * stride, length)) for i in range(count))
    return AxisPlan(
        length=length,
        window=window,
        offset=offset,
        starts=tuple(i * stride - offset for i in range(count)),
        spans=spans,
        weights=tuple(torch.ones(hi - lo) for lo, hi in spans),
    )


def _plan_blended(model: SegmentationModel, length: int, cap: int, overlap: int | None) -> AxisPlan:
    if length <= cap:
        window = model.next_valid_input_size(length)
        start = -((window - length) // 2)  # centred: equal mirrored borders on both sides
        return AxisPlan(length, window, 0, (start,), ((0, length),), (torch.ones(length),))
    ov = cap // 8 if overlap is None else overlap
    if not 0 <= ov < cap:
        raise ConfigError(
            f"overlap={ov} must be at least 0 and below the tile ({cap}); e.g. overlap={cap // 8}"
        )
    count = math.ceil((length - ov) / (cap - ov))
    window = model.next_valid_input_size(math.ceil((length + (count - 1) * ov) / count))
    # spread evenly from the first pixel to the last, so every overlap is about the same (>= ov)
    starts = tuple((i * (length - window) + (count - 1) // 2) // (count - 1) for i in range(count))
    raw = []
    for i, s in enumerate(starts):
        w = torch.ones(window, dtype=torch.float64)
        if i > 0:
            w *= _raised_cosine(window, starts[i - 1] + window - s)
        if i < count - 1:
            w *= _raised_cosine(window, s + window - starts[i + 1]).flip(0)
        raw.append(w)
    total = torch.zeros(length, dtype=torch.float64)
    for s, w in zip(starts, raw, strict=True):
        total[s : s + window] += w
    weights = tuple((w / total[s : s + window]).float() for s, w in zip(starts, raw, strict=True))
    return AxisPlan(length, window, 0, starts, tuple((s, s + window) for s in starts), weights)


def _raised_cosine(window: int, ramp: int) -> Tensor:
    """Ones, except the first ``ramp`` pixels rising as sin^2 from near 0 (never 0: pixel centres)."""
    w = torch.ones(window, dtype=torch.float64)
    ramp = min(max(ramp, 0), window)
    if ramp:
        k = torch.arange(ramp, dtype=torch.float64)
        w[:ramp] = torch.sin(0.5 * math.pi * (k + 0.5) / ramp) ** 2
    return w


# -- running the model on tiles ----------------------------------------------------------------------------
@contextlib.contextmanager
def _eval_mode(model: SegmentationModel) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _tile_runner(model: SegmentationModel, precision: Precision) -> Callable[[Tensor], Tensor]:
    param = next(p for p in model.parameters() if p.is_floating_point())
    device, dtype = param.device, param.dtype

    def run(tiles: Tensor) -> Tensor:
        tiles = tiles.to(device)
        if tiles.dtype == torch.uint8:
            tiles = tiles.float().div_(255.0).to(dtype)  # as the zoo's datasets scale 8-bit images
        elif not tiles.is_floating_point():
            raise TypeError(f"images must be float (in [0, 1]) or uint8, got {tiles.dtype}")
        else:
            tiles = tiles.to(dtype)
        with precision.autocast(device):
            return model(precision.input(tiles)).float()

    return run


@dataclass(frozen=True, eq=False)
class _Window:
    """One window's pixels along an axis: the image range ``lo:hi`` it touches and, relative to ``lo``,
    the (mirrored) index of each of its pixels."""

    lo: int
    hi: int
    index: Tensor | None  # None: the window lies inside the image, ``lo:hi`` is all of it

    @staticmethod
    def along(start: int, size: int, length: int, device: torch.device) -> _Window:
        if start >= 0 and start + size <= length:
            return _Window(start, start + size, None)
        index = mirror_index(start, start + size, length, device=device)
        lo, hi = int(index.min()), int(index.max()) + 1
        return _Window(lo, hi, index - lo)


def _cut(x: Tensor, rows: _Window, cols: _Window) -> Tensor:
    # narrow first (a view), so a mirrored window gathers its own pixels, not whole rows of a huge image
    sub = x[..., rows.lo : rows.hi, cols.lo : cols.hi]
    if rows.index is not None:
        sub = sub.index_select(-2, rows.index)
    if cols.index is not None:
        sub = sub.index_select(-1, cols.index)
    return sub


def _as_batch(image: Tensor) -> Tensor:
    if image.dim() == 3:
        return image.unsqueeze(0)
    if image.dim() != 4:
        raise ValueError(
            f"expected an image (C, H, W) or a batch (B, C, H, W), got shape {tuple(image.shape)}"
        )
    return image


# -- probabilities and labels ------------------------------------------------------------------------------
def probabilities_from_logits(logits: Tensor) -> Tensor:
    """Softmax over the classes (dim 1); a one-class model's logit goes through a sigmoid instead."""
    return logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(1)


def _argmax_classes(scores: Tensor, threshold: float) -> Tensor:
    """Index of the highest score along dim 1 (the first on ties, as ``argmax``); one class: above the
    threshold. uint8 for up to 256 classes (int64 beyond), so a huge mask costs one byte per pixel."""
    k = scores.shape[1]
    dtype = torch.uint8 if k <= 256 else torch.int64
    if k == 1:
        return (scores[:, 0] > threshold).to(dtype)
    # a running maximum over the classes: several times faster than argmax over the strided class axis
    best = scores[:, 0]
    labels = torch.zeros(scores.shape[0], *scores.shape[2:], dtype=dtype, device=scores.device)
    for c in range(1, k):
        labels.masked_fill_(scores[:, c] > best, c)
        best = torch.maximum(best, scores[:, c])
    return labels


def labels_from_probabilities(probabilities: Tensor) -> Tensor:
    """Class indices ``(B, H, W)``: the most probable class (one-class models: probability > 0.5),
    uint8 for up to 256 classes (int64 beyond) so a huge mask costs one byte per pixel."""
    return _argmax_classes(probabilities, 0.5)


# -- the inferer -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TiledInferer:
    """Whole-image inference for any model and any image size, with its options in one place (as MONAI's
    ``SlidingWindowInferer`` holds them): build it once, call it with a model and images.

    Attributes:
        tile: largest window side (:func:`plan_axis`; default :data:`DEFAULT_TILE`).
        overlap: padded models: least overlap of blended windows (default ``tile // 8``).
        batch_size: tiles per forward pass; with the tile it bounds the activations held at once.
        precision: the autocast dtype and memory format the model runs in (:class:`zoo.runtime.Precision`;
            bf16 with channels-last is the fast path on CPUs that have it).
        tta: test-time augmentation of :meth:`probabilities` and :meth:`labels`: ``"none"``; ``"flips"``
            (the image, its horizontal, vertical and double flips); ``"d4"`` (all 8 flips and rotations;
            the paper averaged rotated copies for ISBI).

    Every method takes ``image`` ``(C, H, W)`` or ``(B, C, H, W)``, float in [0, 1] or uint8, on any
    device, of any size; the model runs in eval mode on its own device and dtype, and gets its mode back.
    """

    tile: int | None = None
    overlap: int | None = None
    batch_size: int = 4
    precision: Precision = field(default_factory=Precision)
    tta: str = "none"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be at least 1")
        if self.tta not in TTA_MODES:
            close = difflib.get_close_matches(self.tta, list(TTA_MODES), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"tta={self.tta!r} is not one of {', '.join(map(repr, TTA_MODES))}.{hint}")

    def check(self, model: SegmentationModel) -> None:
        """Raise now, naming what works, if the tile or overlap does not suit ``model`` (rather than at
        the first image): a plan longer than a tile checks both."""
        plan_axis(model, 2 * (self.tile or DEFAULT_TILE), tile=self.tile, overlap=self.overlap)

    @torch.no_grad()
    def bands(self, model: SegmentationModel, image: Tensor) -> Iterator[tuple[int, Tensor]]:
        """Stitched logits as bands of whole rows, top to bottom: ``(first_row, logits)`` with logits
        ``(B, num_classes, rows, W)`` float32 on the model's device (no test-time augmentation).

        A caller that reduces each band (argmax, a file writer) holds no full-size logits. Tiles of all
        ``B`` images at the same window position run together, ``batch_size`` tiles per forward pass (at
        least one position)."""
        x = _as_batch(image)
        b, _, h, w = x.shape
        py = plan_axis(model, h, tile=self.tile, overlap=self.overlap)
        px = plan_axis(model, w, tile=self.tile, overlap=self.overlap)
        run = _tile_runner(model, self.precision)
        device = next(model.parameters()).device
        rows = [_Window.along(s, py.window, h, x.device) for s in py.starts]
        cols = [_Window.along(s, px.window, w, x.device) for s in px.starts]
        wy = [t.to(device) for t in py.weights]
        wx = [t.to(device) for t in px.weights]
        # valid-convolution tiles and a single window meet edge to edge with weight one: copy, don't blend
        disjoint = all(bool((t == 1).all()) for t in (*py.weights, *px.weights))
        positions = [(iy, ix) for iy in range(py.count) for ix in range(px.count)]
        per_pass = max(1, self.batch_size // b)
        band = torch.zeros(b, model.num_classes, 0, w, device=device)
        top = 0  # image row of band[..., 0, :]
        with _eval_mode(model):
            for first in range(0, len(positions), per_pass):
                group = positions[first : first + per_pass]
                tiles = torch.cat([_cut(x, rows[iy], cols[ix]) for iy, ix in group])
                logits = run(tiles)
                for k, (iy, ix) in enumerate(group):
                    (y0, y1), (x0, x1) = py.spans[iy], px.spans[ix]
                    oy, ox = y0 - py.starts[iy] - py.offset, x0 - px.starts[ix] - px.offset
                    piece = logits[k * b : (k + 1) * b, :, oy : oy + y1 - y0, ox : ox + x1 - x0]
                    if y1 - top > band.shape[2]:
                        grow = band.new_zeros(b, model.num_classes, y1 - top - band.shape[2], w)
                        band = torch.cat([band, grow], dim=2)
                    target = band[:, :, y0 - top : y1 - top, x0:x1]
                    if disjoint:
                        target.copy_(piece)
                    else:
                        target.add_(piece * (wy[iy][:, None] * wx[ix][None, :]))
                # rows above the first row of the next unfinished window row get nothing more
                last_y, last_x = group[-1]
                finished = last_y + 1 if last_x == px.count - 1 else last_y  # window rows all run
                if finished == 0:
                    continue
                done = h if finished == py.count else py.spans[finished][0]
                if done > top:
                    yield top, band[:, :, : done - top]
                    band = band[:, :, done - top :]
                    top = done

    def logits(self, model: SegmentationModel, image: Tensor) -> Tensor:
        """Logits of the whole image(s), ``(B, num_classes, H, W)`` float32 on the CPU (no test-time
        augmentation: logits of transformed copies are not comparable)."""
        x = _as_batch(image)
        out = torch.empty(x.shape[0], model.num_classes, *x.shape[-2:])
        for top, band in self.bands(model, x):
            out[:, :, top : top + band.shape[2]] = band.cpu()
        return out

    def probabilities(self, model: SegmentationModel, image: Tensor) -> Tensor:
        """Class probabilities ``(B, num_classes, H, W)`` float32 on the CPU, averaged over the test-time
        augmentation's copies.

        Each transformed copy is predicted whole (tiling handles the swapped sides of a rotated
        non-square image), its probabilities are mapped back and the copies averaged. Probabilities
        rather than logits are averaged: each copy then has one vote per pixel, however confident, and
        the mean is itself a probability map."""
        transforms = TTA_MODES[self.tta]
        x = _as_batch(image)
        total: Tensor | None = None
        for name in transforms:
            forward, inverse = _TRANSFORMS[name]
            xt = forward(x)
            probs = torch.empty(x.shape[0], model.num_classes, *xt.shape[-2:])
            for top, band in self.bands(model, xt):  # band by band: full-size logits are never held
                probs[:, :, top : top + band.shape[2]] = probabilities_from_logits(band).cpu()
            probs = inverse(probs)
            total = probs.contiguous() if total is None else total.add_(probs)
        assert total is not None
        return total.div_(len(transforms))

    def labels(self, model: SegmentationModel, image: Tensor) -> Tensor:
        """Class indices ``(B, H, W)`` (:func:`labels_from_probabilities`) on the CPU.

        Without test-time augmentation the labels are taken band by band: beside the image and the labels
        only a band of rows is held, never full-size logits. With it, the averaged probabilities
        ``(B, K, H, W)`` float32 are held."""
        if len(TTA_MODES[self.tta]) > 1:
            return labels_from_probabilities(self.probabilities(model, image))
        x = _as_batch(image)
        out: Tensor | None = None
        for top, band in self.bands(model, x):
            labels = _argmax_classes(band, 0.0).cpu()  # the labels of the probabilities, without softmax
            if out is None:
                out = torch.empty(x.shape[0], *x.shape[-2:], dtype=labels.dtype)
            out[:, top : top + labels.shape[1]] = labels
        assert out is not None
        return out


# -- one-call shortcuts: an inferer built from keyword options, used once -------------------------------
def predict_logits(model: SegmentationModel, image: Tensor, **options: Any) -> Tensor:
    """``TiledInferer(**options).logits(model, image)``."""
    return TiledInferer(**options).logits(model, image)


def predict_probabilities(model: SegmentationModel, image: Tensor, **options: Any) -> Tensor:
    """``TiledInferer(**options).probabilities(model, image)``."""
    return TiledInferer(**options).probabilities(model, image)


def predict_labels(model: SegmentationModel, image: Tensor, **options: Any) -> Tensor:
    """``TiledInferer(**options).labels(model, image)``."""
    return TiledInferer(**options).labels(model, image)

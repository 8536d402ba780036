"""Whole-image prediction for any model and any image size; the one tiling implementation in the zoo.

Valid-convolution models (the paper's ``unet``) use the paper's overlap-tile strategy: the image is
mirror-padded by the model's context and cut into input tiles whose outputs stitch without seams. Tile
strides are multiples of the model's pooling factor, so the stitched result equals, up to float
rounding, one pass over the whole mirror-padded image. Padded models run on the whole image, mirror-
padded up to the nearest size they accept and cropped back.

Shapes: ``image (C, H, W)`` or ``(B, C, H, W)`` -> logits ``(B, num_classes, H, W)`` in float32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.models.base import SegmentationModel

__all__ = ["mirror_pad", "predict_logits", "tile_plan"]


def mirror_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Reflect-pad ``(..., H, W)`` by any amount, reflecting again where a pad exceeds the image."""
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        t, b = min(top, h - 1), min(bottom, h - 1)
        lft, r = min(left, w - 1), min(right, w - 1)
        if h == 1 or w == 1:  # reflection needs 2 pixels; repeat the edge instead
            return F.pad(x, [left, right, top, bottom], mode="replicate")
        x = F.pad(x, [lft, r, t, b], mode="reflect")
        top, bottom, left, right = top - t, bottom - b, left - lft, right - r
    return x


def tile_plan(model: SegmentationModel, length: int, tile: int | None) -> tuple[int, int, int, int]:
    """For a valid-convolution model and an image side ``length``: ``(tile_in, stride, offset, count)``.

    ``tile_in`` is a size the model accepts (default: the largest not above 572 that is needed);
    ``stride`` is the output tile rounded down to a multiple of the model's input multiple (so tiles sit
    on one pooling grid); ``offset`` is the context lost on each side; ``count`` tiles cover ``length``.
    """
    multiple = model.input_multiple
    if tile is None:
        tile = _default_tile(model, length)
    tile_in = model.nearest_valid_input_size(tile)
    out = model.output_size(tile_in)
    stride = out // multiple * multiple
    if stride <= 0:
        raise ValueError(
            f"tile {tile_in} gives an output of {out}, smaller than the model's multiple {multiple}; "
            "use a larger tile"
        )
    offset = (tile_in - out) // 2
    return tile_in, stride, offset, math.ceil(length / stride)


def _default_tile(model: SegmentationModel, length: int) -> int:
    """The smallest tile whose output covers ``length`` in one go, capped at the paper's 572."""
    cap = model.nearest_valid_input_size(572)
    n = model.min_input_size
    while n < cap:
        if model.output_size(n) // model.input_multiple * model.input_multiple >= length:
            return n
        n += model.input_multiple
    return cap


@torch.no_grad()
def predict_logits(
    model: SegmentationModel,
    image: Tensor,
    *,
    tile: int | None = None,
    batch_size: int = 4,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Tensor:
    """Logits of the whole image(s), ``(B, num_classes, H, W)`` float32, in eval mode (restored after)."""
    x = image.unsqueeze(0) if image.dim() == 3 else image
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )

    def run(batch: Tensor) -> Tensor:
        batch = batch.to(device)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast:
            return model(batch).float()

    try:
        if model.padding_mode == "same":
            chunks = [x[i : i + batch_size] for i in range(0, x.shape[0], batch_size)]
            return torch.cat([_predict_padded(run, model, c) for c in chunks])
        return torch.cat(
            [_predict_tiled(run, model, x[i : i + 1], tile, batch_size) for i in range(x.shape[0])]
        )
    finally:
        model.train(was_training)


def _predict_padded(run: Callable[[Tensor], Tensor], model: SegmentationModel, x: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    ph, pw = model.next_valid_input_size(h), model.next_valid_input_size(w)
    top, left = (ph - h) // 2, (pw - w) // 2
    padded = mirror_pad(x, top, ph - h - top, left, pw - w - left)
    out = run(padded)
    return out[..., top : top + h, left : left + w].cpu()


def _predict_tiled(
    run: Callable[[Tensor], Tensor], model: SegmentationModel, x: Tensor, tile: int | None, batch_size: int
) -> Tensor:
    h, w = x.shape[-2:]
    tin_y, sy, off_y, ny = tile_plan(model, h, tile)
    tin_x, sx, off_x, nx = tile_plan(model, w, tile if tile is not None else tin_y)
    pad_h = (ny - 1) * sy + tin_y
    pad_w = (nx - 1) * sx + tin_x
    padded = mirror_pad(x, off_y, pad_h - h - off_y, off_x, pad_w - w - off_x)
    out = torch.empty(1, model.num_classes, ny * sy, nx * sx)
    origins = [(iy * sy, ix * sx) for iy in range(ny) for ix in range(nx)]
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        tiles = torch.cat([padded[..., y : y + tin_y, x0 : x0 + tin_x] for y, x0 in chunk])
        logits = run(tiles).cpu()
        for k, (y, x0) in enumerate(chunk):
            out[0, :, y : y + sy, x0 : x0 + sx] = logits[k, :, :sy, :sx]
    return out[..., :h, :w]

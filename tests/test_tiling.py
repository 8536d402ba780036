"""Whole-image prediction: the paper's overlap-tile stitching is exact; padded models keep the size."""

from __future__ import annotations

import pytest
import torch

from zoo import create_model
from zoo.models import SegmentationModel
from zoo.tiling import mirror_pad, predict_logits, tile_plan


def _whole_padded(model: SegmentationModel, x: torch.Tensor, tile: int | None) -> torch.Tensor:
    h, w = x.shape[-2:]
    tin_y, sy, oy, ny = tile_plan(model, h, tile)
    tin_x, sx, ox, nx = tile_plan(model, w, tile if tile is not None else tin_y)
    ph, pw = (ny - 1) * sy + tin_y, (nx - 1) * sx + tin_x
    with torch.no_grad():
        return model(mirror_pad(x, oy, ph - h - oy, ox, pw - w - ox))[..., :h, :w]


@pytest.mark.parametrize(
    ("h", "w", "tile"), [(100, 130, None), (333, 517, 204), (61, 47, None), (257, 190, 252)]
)
def test_tiles_stitch_to_the_whole_padded_image(h: int, w: int, tile: int | None) -> None:
    model = create_model("unet", in_channels=1, num_classes=2, base_channels=4).eval()
    assert isinstance(model, SegmentationModel)
    x = torch.randn(1, 1, h, w)
    tiled = predict_logits(model, x, tile=tile, batch_size=3)
    assert tiled.shape == (1, 2, h, w)
    torch.testing.assert_close(tiled, _whole_padded(model, x, tile), rtol=1e-4, atol=1e-4)


def test_mirror_pad_reflects_beyond_the_image() -> None:
    x = torch.arange(3.0).view(1, 1, 1, 3).expand(1, 1, 2, 3)
    padded = mirror_pad(x, 0, 0, 5, 0)
    assert padded[0, 0, 0].tolist() == [1, 0, 1, 2, 1, 0, 1, 2]  # the periodic mirror of 0 1 2


@pytest.mark.parametrize("name", ["unet_bn", "unetpp_resnet34"])
def test_padded_models_predict_any_size(name: str) -> None:
    model = create_model(name, in_channels=1, num_classes=2).train()
    assert isinstance(model, SegmentationModel)
    x = torch.randn(2, 1, 70, 99)
    out = predict_logits(model, x)
    assert model.training  # predict_logits evaluates in eval mode and restores the mode
    assert out.shape == (2, 2, 70, 99)
    if model.is_valid_input_size(70) and model.is_valid_input_size(99):
        with torch.no_grad():
            torch.testing.assert_close(out, model.eval()(x))

"""Whole-image prediction: exact overlap-tile stitching for valid models, seamless blending for padded
ones, bounded memory, any dtype, and test-time augmentation."""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from zoo import create_model
from zoo.models import SegmentationModel
from zoo.runtime import Precision
from zoo.tiling import (
    DEFAULT_TILE,
    mirror_index,
    mirror_pad,
    plan_axis,
    predict_labels,
    predict_logits,
    predict_probabilities,
)

from .helpers import AnySizeModel


def tiny_unet(**overrides: Any) -> SegmentationModel:
    args: dict[str, Any] = {"base_channels": 4, **overrides}
    model = create_model("unet", in_channels=1, num_classes=2, **args).eval()
    assert isinstance(model, SegmentationModel)
    return model


def whole_image_oracle(model: SegmentationModel, x: Tensor) -> Tensor:
    """One pass over the image mirrored by the model's context on the top/left and up to the next
    accepted size on the bottom/right; computed without the tiling module's plan."""
    h, w = x.shape[-2:]
    smallest = model.min_input_size
    context = (smallest - model.output_size(smallest)) // 2
    ph = model.next_valid_input_size(h + 2 * context)
    pw = model.next_valid_input_size(w + 2 * context)
    padded = torch.from_numpy(
        np.pad(
            x.numpy(), [(0, 0), (0, 0), (context, ph - h - context), (context, pw - w - context)], "reflect"
        )
    )
    with torch.no_grad():
        return model(padded)[..., :h, :w]


class Pointwise(AnySizeModel):
    """A padded model of 1x1 convolutions: every output pixel depends on its own input pixel only, so any
    correct tiling and blending reproduces one pass exactly."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.in_channels, self.num_classes = 1, num_classes
        self.net: nn.Module = nn.Sequential(nn.Conv2d(1, 8, 1), nn.Tanh(), nn.Conv2d(8, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ValidConv(Pointwise):
    """A valid-convolution model in its simplest form: one unpadded 5x5 convolution (n -> n - 4)."""

    padding_mode = "valid"

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Conv2d(1, 2, 5)

    @property
    def min_input_size(self) -> int:
        return 5

    def _output_length(self, n: int) -> int | None:
        return n - 4 if n >= 5 else None


class WindowMean(Pointwise):
    """Logits constant over each window: the mean of its input. Stitching windows with hard edges would
    make a step at every window border; blending must turn it into a smooth ramp."""

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return mean.expand(-1, self.num_classes, *x.shape[-2:]).contiguous()


# -- valid-convolution models: exact stitching ---------------------------------------------------------
@pytest.mark.parametrize(
    ("h", "w", "tile"),
    [
        (100, 130, None),
        (61, 47, None),
        (1, 5, None),  # one row: mirroring repeats it
        (133, 217, 250),  # 250 is not a valid tile: rounded down to 236
        (257, 190, 300),  # 300 -> 284
        (97, 301, 204),  # the smallest tile that works (stride 16)
        (250, 33, 700),
    ],
)
def test_tiles_stitch_to_one_pass_over_the_mirror_padded_image(h: int, w: int, tile: int | None) -> None:
    model = tiny_unet()
    x = torch.randn(1, 1, h, w)
    tiled = predict_logits(model, x, tile=tile, batch_size=3)
    assert tiled.shape == (1, 2, h, w)
    torch.testing.assert_close(tiled, whole_image_oracle(model, x), rtol=1e-4, atol=1e-4)
    for length in (h, w):
        plan = plan_axis(model, length, tile=tile)
        assert model.is_valid_input_size(plan.window)
        assert plan.window <= (tile or DEFAULT_TILE)
        assert plan.spans[0][0] == 0 and plan.spans[-1][1] == length  # the spans tile the axis
        assert all(a[1] == b[0] for a, b in itertools.pairwise(plan.spans))


def test_a_batch_of_images_stitches_like_each_image_alone() -> None:
    model = tiny_unet()
    x = torch.randn(3, 1, 90, 70)
    together = predict_logits(model, x, tile=204, batch_size=5)
    alone = torch.cat([predict_logits(model, x[i], tile=236, batch_size=1) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def test_a_tile_too_small_names_the_smallest_that_works() -> None:
    with pytest.raises(ValueError, match=r"tile=200 is too small for unet.*at least 204"):
        predict_logits(tiny_unet(), torch.rand(1, 1, 50, 50), tile=200)


def test_mirror_pad_reflects_beyond_the_image() -> None:
    x = torch.arange(3.0).view(1, 1, 1, 3).expand(1, 1, 2, 3)
    padded = mirror_pad(x, 0, 0, 5, 0)
    assert padded[0, 0, 0].tolist() == [1, 0, 1, 2, 1, 0, 1, 2]  # the periodic mirror of 0 1 2


@pytest.mark.parametrize(("length", "before", "after"), [(7, 3, 6), (2, 1, 1), (10, 9, 0)])
def test_mirror_index_is_numpy_reflect_padding(length: int, before: int, after: int) -> None:
    expected = np.pad(np.arange(length), (before, after), mode="reflect")
    assert mirror_index(-before, length + after, length).tolist() == expected.tolist()


# -- padded models: blended windows ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["unet_bn", "unetpp_resnet34"])
@pytest.mark.parametrize("length", [16, 100, 257, 1000, 1919])
@pytest.mark.parametrize(("tile", "overlap"), [(None, None), (128, 16), (100, 40), (64, 0)])
def test_blending_weights_cover_every_pixel_once(
    name: str, length: int, tile: int | None, overlap: int | None
) -> None:
    with torch.device("meta"):
        model = create_model(name, in_channels=1, num_classes=2)
    assert isinstance(model, SegmentationModel)
    plan = plan_axis(model, length, tile=tile, overlap=overlap)
    total = torch.zeros(length, dtype=torch.float64)
    for (lo, hi), weight in zip(plan.spans, plan.weights, strict=True):
        assert weight.shape == (hi - lo,) and bool((weight > 0).all())
        total[max(lo, 0) : hi] += weight[max(lo, 0) - lo : min(hi, length) - lo].double()
    torch.testing.assert_close(total, torch.ones(length, dtype=torch.float64), rtol=0, atol=1e-6)
    assert model.is_valid_input_size(plan.window)
    if plan.count > 1:
        assert plan.window <= (tile or DEFAULT_TILE)
        assert plan.starts[0] == 0 and plan.starts[-1] + plan.window == length  # inside the image
        gaps = [b - a for a, b in itertools.pairwise(plan.starts)]
        wanted = (tile or DEFAULT_TILE) // 8 if overlap is None else overlap
        assert min(plan.window - g for g in gaps) >= wanted - 1  # overlaps as asked (even spread rounds)


def test_blended_tiles_of_a_pointwise_model_equal_one_pass() -> None:
    model = Pointwise().eval()
    x = torch.randn(2, 1, 70, 131)
    tiled = predict_logits(model, x, tile=32, overlap=9, batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(tiled, model(x), rtol=1e-6, atol=1e-6)


def test_blending_turns_window_steps_into_smooth_ramps() -> None:
    model = WindowMean().eval()
    w, tile, overlap = 200, 64, 16
    x = torch.linspace(0, 1, w).expand(1, 1, 8, w).contiguous()  # brighter to the right
    out = predict_logits(model, x, tile=tile, overlap=overlap)[0, 0, 0]
    plan = plan_axis(model, w, tile=tile, overlap=overlap)
    means = [float(x[..., s : s + plan.window].mean()) for s in plan.starts]
    step = max(b - a for a, b in itertools.pairwise(means))
    smallest_overlap = min(plan.window - (b - a) for a, b in itertools.pairwise(plan.starts))
    jumps = out[1:] - out[:-1]
    assert bool((jumps >= -1e-6).all())  # monotone: no window border shows as a step back
    # a raised-cosine cross-fade over m pixels changes by at most pi / (2 m) of the step per pixel
    assert float(jumps.max()) <= step * math.pi / (2 * smallest_overlap) + 1e-6
    assert float(jumps.max()) < 0.2 * step  # hard edges would jump by the whole step
    # where one window alone reaches, the output is that window's own
    first_overlap = plan.starts[1]
    torch.testing.assert_close(out[:first_overlap], torch.full((first_overlap,), means[0]))


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


def test_blended_unet_bn_stays_close_to_one_pass() -> None:
    model = create_model("unet_bn", in_channels=1, num_classes=2, base_channels=4).eval()
    assert isinstance(model, SegmentationModel)
    x = torch.rand(1, 1, 96, 150)
    with torch.no_grad():
        whole = model(x)
    tiled = predict_logits(model, x, tile=64, overlap=24)
    # zero padding at window borders changes logits there; blending keeps the labels nearly the same
    agree = (tiled.argmax(1) == whole.argmax(1)).float().mean()
    assert float(agree) > 0.9


# -- memory, dtypes, devices ------------------------------------------------------------------------------
@pytest.mark.parametrize("padded", [False, True])
def test_a_large_image_never_feeds_more_than_a_tile_batch(padded: bool) -> None:
    model = Pointwise().eval() if padded else ValidConv().eval()
    seen: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    tile, batch = 256, 6
    x = torch.rand(1, 1, 3000, 3000)
    labels = predict_labels(model, x, tile=tile, batch_size=batch)
    assert labels.shape == (1, 3000, 3000) and labels.dtype == torch.uint8
    assert max(b * h * w for b, _, h, w in seen) <= batch * tile * tile
    assert max(b for b, *_ in seen) == batch  # tiles are batched
    assert 3000 * 3000 / (tile * tile) <= sum(b for b, *_ in seen) <= 2.5 * 3000 * 3000 / (tile * tile)


@pytest.mark.parametrize("model_name", ["unet", "unet_bn"])
def test_labels_streamed_band_by_band_equal_the_argmax_of_the_logits(model_name: str) -> None:
    model = create_model(model_name, in_channels=1, num_classes=3, base_channels=4).eval()
    assert isinstance(model, SegmentationModel)
    x = torch.rand(2, 1, 150, 97)
    logits = predict_logits(model, x, tile=220, overlap=30, batch_size=2)
    labels = predict_labels(model, x, tile=220, overlap=30, batch_size=2)
    assert torch.equal(labels, logits.argmax(1).to(torch.uint8))


def test_uint8_images_are_scaled_like_the_datasets() -> None:
    model = tiny_unet()
    pixels = torch.randint(0, 256, (1, 80, 90), dtype=torch.uint8)
    torch.testing.assert_close(predict_logits(model, pixels), predict_logits(model, pixels.float() / 255))


def test_bf16_autocast_and_channels_last_run_and_stay_close() -> None:
    model = tiny_unet()
    x = torch.rand(1, 1, 120, 100)
    reference = predict_logits(model, x)
    fast = predict_logits(
        model.to(memory_format=torch.channels_last),
        x,
        precision=Precision(torch.bfloat16, channels_last=True),
    )
    assert fast.dtype == torch.float32 and fast.shape == reference.shape
    scale = float(reference.abs().max())
    assert float((fast - reference).abs().max()) < 0.05 * scale


def test_a_bf16_model_gets_tiles_in_its_dtype() -> None:
    model = Pointwise().eval()
    x = torch.rand(1, 1, 40, 50)
    reference = predict_logits(model, x, tile=32)
    low = predict_logits(model.to(torch.bfloat16), x, tile=32)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, reference, rtol=0.05, atol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tiles_match_the_cpu() -> None:
    model = tiny_unet()
    x = torch.rand(1, 1, 300, 260)
    on_cpu = predict_logits(model, x, tile=236)
    on_gpu = predict_logits(model.cuda(), x, tile=236)
    assert on_gpu.device.type == "cpu"
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)


# -- test-time augmentation ---------------------------------------------------------------------------
# the 8 symmetries of the square, written with numpy as an independent oracle: (transform, inverse)
D4 = [
    (lambda a: a, lambda a: a),
    (lambda a: a[..., ::-1], lambda a: a[..., ::-1]),
    (lambda a: a[..., ::-1, :], lambda a: a[..., ::-1, :]),
    (lambda a: np.rot90(a, 2, (-2, -1)), lambda a: np.rot90(a, 2, (-2, -1))),
    (lambda a: np.rot90(a, 1, (-2, -1)), lambda a: np.rot90(a, 3, (-2, -1))),
    (lambda a: np.rot90(a, 3, (-2, -1)), lambda a: np.rot90(a, 1, (-2, -1))),
    (lambda a: np.swapaxes(a, -1, -2), lambda a: np.swapaxes(a, -1, -2)),
    (
        lambda a: np.rot90(np.swapaxes(a, -1, -2), 2, (-2, -1)),
        lambda a: np.rot90(np.swapaxes(a, -1, -2), 2, (-2, -1)),
    ),
]


def _t(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("model_name", ["unet", "unet_bn"])
def test_d4_tta_is_the_mean_of_the_transformed_predictions(model_name: str) -> None:
    model = create_model(model_name, in_channels=1, num_classes=2, base_channels=4).eval()
    assert isinstance(model, SegmentationModel)
    x = torch.rand(1, 1, 45, 61).numpy()  # not square: rotated copies have the sides swapped
    manual = np.mean(
        [inverse(predict_logits(model, _t(forward(x))).softmax(1).numpy()) for forward, inverse in D4], axis=0
    )
    tta = predict_probabilities(model, _t(x), tta="d4")
    torch.testing.assert_close(tta, _t(manual), rtol=1e-5, atol=1e-5)
    flips = predict_probabilities(model, _t(x), tta="flips")
    manual_flips = np.mean(
        [inverse(predict_logits(model, _t(forward(x))).softmax(1).numpy()) for forward, inverse in D4[:4]],
        axis=0,
    )
    torch.testing.assert_close(flips, _t(manual_flips), rtol=1e-5, atol=1e-5)


def _symmetrise(model: nn.Module) -> None:
    """Make every convolution kernel invariant under the 8 symmetries of the square."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                w = m.weight.numpy()
                m.weight.copy_(_t(np.mean([forward(w) for forward, _ in D4], axis=0)))


def test_tta_changes_nothing_for_a_symmetric_model_on_a_symmetric_image() -> None:
    model = create_model("unet_bn", in_channels=1, num_classes=2, base_channels=4).eval()
    assert isinstance(model, SegmentationModel)
    x = torch.rand(1, 1, 64, 64).numpy()
    symmetric = _t(np.mean([forward(x) for forward, _ in D4], axis=0))
    plain = predict_probabilities(model, symmetric)
    # control: an ordinary model's prediction is not symmetric, so TTA does change it
    assert float((predict_probabilities(model, symmetric, tta="d4") - plain).abs().max()) > 1e-3
    _symmetrise(model)
    plain = predict_probabilities(model, symmetric)
    for tta in ("flips", "d4"):
        torch.testing.assert_close(
            predict_probabilities(model, symmetric, tta=tta), plain, rtol=1e-5, atol=1e-5
        )


def test_an_unknown_tta_mode_lists_the_choices() -> None:
    with pytest.raises(
        ValueError, match=re.escape("tta='flip' is not one of 'none', 'flips', 'd4'. Did you mean 'flips'?")
    ):
        predict_probabilities(Pointwise(), torch.rand(1, 8, 8), tta="flip")

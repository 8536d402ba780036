"""Prediction at the training scale: the scale rule, its records (manifest, file metadata), ``--scale``,
resampling back to the input's size, the far-from-scale warning, and the shipped Carvana model on
full-resolution photos."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch import Tensor, nn

from zoo import create_model
from zoo.data.datasets import resize_image
from zoo.data.io import read_image, write_image
from zoo.predict import (
    add_parser,
    parse_scale,
    predict_files,
    prediction_size,
    resample_probabilities,
    scale_warning,
)
from zoo.tiling import TiledInferer, predict_labels
from zoo.weights import TrainingScale, WeightsError, find_weights, save_weights

from .helpers import AnySizeModel, tiny_model


class CenterSurround(AnySizeModel):
    """A detector of bright spots about 3 pixels wide, built by hand: foreground where the 3x3 mean
    exceeds the 7x7 mean by 0.35. Tuned to one pixel scale: the same spots at twice the size are missed
    (their 3x3 and 7x7 means are nearly equal), as a network trained at one scale misses objects at
    another."""

    def __init__(self) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.model_name = 1, 2, "center_surround"
        kernel = torch.full((7, 7), -1 / 49)
        kernel[2:5, 2:5] += 1 / 9
        self.kernel = nn.Parameter(kernel.view(1, 1, 7, 7), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        response = F.conv2d(F.pad(x, (3, 3, 3, 3), mode="replicate"), self.kernel)
        return torch.cat([torch.zeros_like(response), 40 * (response - 0.35)], dim=1)


def _spots(seed: int = 0, h: int = 48, w: int = 64, count: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w), np.uint8)
    for _ in range(count):
        i, j = rng.integers(2, h - 2), rng.integers(2, w - 2)
        image[i - 1 : i + 2, j - 1 : j + 2] = 255
    return image


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="unet-zoo")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["predict", *argv])
    return int(args.func(args))


# -- the rule ---------------------------------------------------------------------------------------


def test_scale_text_parses_to_auto_none_a_size_or_a_factor() -> None:
    assert parse_scale("auto") == "auto" and parse_scale(" NONE ") == "none"
    assert parse_scale("192x256") == (192, 256) and parse_scale("0.5") == 0.5 and parse_scale("2") == 2.0
    for bad in ("0", "-1", "inf", "nan", "192x", "x192", "192x0", "big"):
        with pytest.raises(ValueError, match="use auto, none, a size HxW"):
            parse_scale(bad)


def test_prediction_size_follows_the_rule() -> None:
    trained = TrainingScale(resize=(192, 192))
    assert prediction_size((1280, 1918), "auto", trained) == (
        (192, 192),
        "the weights' training scale",
    )
    native = TrainingScale(image_size=(512, 512))
    assert prediction_size((1280, 1918), "auto", native)[0] == (1280, 1918)
    assert prediction_size((1280, 1918), "auto", None)[0] == (1280, 1918)
    assert prediction_size((1280, 1918), "none", trained)[0] == (1280, 1918)
    assert prediction_size((1280, 1918), 0.1, trained)[0] == (128, 192)
    assert prediction_size((3, 5), 0.1, trained)[0] == (1, 1)  # never below one pixel
    assert prediction_size((1280, 1918), (100, 150), trained) == ((100, 150), "the size asked for")
    with pytest.raises(ValueError, match=r"scale=-2\.0 is not a scale"):
        prediction_size((10, 10), -2.0)


def test_a_resize_is_the_image_size_too_and_bad_records_are_refused() -> None:
    assert TrainingScale(resize=(96, 144)).image_size == (96, 144)
    record = TrainingScale(image_size=(512, 512)).as_record()
    assert record == {"resize": None, "image_size": [512, 512]}
    assert TrainingScale.from_record(record) == TrainingScale(image_size=(512, 512))
    as_metadata = {"resize": "[192, 192]", "image_size": "[192, 192]"}  # how files store it: JSON text
    assert TrainingScale.from_record(as_metadata) == TrainingScale(resize=(192, 192))
    assert TrainingScale.from_record({}) == TrainingScale()
    for bad in ({"resize": [192]}, {"resize": "[0, 5]"}, {"image_size": "512x512"}, {"resize": [1.5, 2]}):
        with pytest.raises(WeightsError, match=r"m\.t: .* fix the manifest entry"):
            TrainingScale.from_record(bad, origin="m.t")


# -- where the rule is read from --------------------------------------------------------------------


def test_the_shipped_manifest_records_each_checkpoints_training_scale() -> None:
    carvana = find_weights("unet_bilinear", "carvana512-w16-s0")
    assert carvana.training_scale == TrainingScale(resize=(256, 256))
    isbi = find_weights("unet_bn", "isbi2012-w16-s0")  # trained on the native 512x512 slices
    assert isbi.training_scale == TrainingScale(resize=None, image_size=(512, 512))
    odd = dataclasses.replace(isbi, evaluation={**isbi.evaluation, "resize": [0, 0]})
    with pytest.raises(WeightsError, match=r"unet_bn\.isbi2012-w16-s0: resize=\[0, 0\]"):
        _ = odd.training_scale
    model = create_model("unet_bilinear", weights="carvana512-w16-s0")
    assert model.training_scale == TrainingScale(resize=(256, 256))  # type: ignore[attr-defined]


def test_a_bare_files_metadata_gives_its_training_scale(tmp_path: Path) -> None:
    model = tiny_model("unet_bn")
    save_weights(model, tmp_path / "resized.safetensors", {"resize": [48, 64]})
    save_weights(model, tmp_path / "native.safetensors", {"resize": None, "image_size": [512, 512]})
    save_weights(model, tmp_path / "unrecorded.safetensors")
    scales = {
        p.stem: create_model("unet_bn", weights=str(p)).training_scale  # type: ignore[attr-defined]
        for p in sorted(tmp_path.glob("*.safetensors"))
    }
    assert scales == {
        "native": TrainingScale(image_size=(512, 512)),
        "resized": TrainingScale(resize=(48, 64)),
        "unrecorded": TrainingScale(),
    }


# -- prediction -------------------------------------------------------------------------------------


def test_an_image_twice_the_training_scale_predicts_to_the_upsampled_mask(tmp_path: Path) -> None:
    model = CenterSurround().eval()
    model.training_scale = TrainingScale(resize=(48, 64))  # type: ignore[assignment]
    small = _spots()
    expected = np.kron(
        predict_labels(model, torch.from_numpy(small)[None])[0].numpy(), np.ones((2, 2), np.uint8)
    )
    assert 0.03 < expected.mean() < 0.2
    write_image(tmp_path / "big.png", np.kron(small, np.ones((2, 2), np.uint8)))  # 96x128

    [auto] = predict_files(
        model, [tmp_path / "big.png"], tmp_path / "auto", inferer=TiledInferer(), progress=False
    )
    assert auto.ok and auto.size == (48, 64) and auto.scale == "the weights' training scale"
    mask = read_image(tmp_path / "auto" / "big_mask.png")
    assert mask.shape == (96, 128)
    # the same spots, up to pixels on their boundaries (the resampled image's soft edges)
    fg = expected.astype(bool)
    boundary = ndimage.binary_dilation(fg, iterations=2) & ~ndimage.binary_erosion(fg, iterations=2)
    assert not ((mask != expected) & ~boundary).any()
    assert _dice(mask, expected) > 0.8

    [own] = predict_files(
        model, [tmp_path / "big.png"], tmp_path / "none", scale="none", inferer=TiledInferer(), progress=False
    )
    assert own.size == (96, 128) and own.scale == "the input's size: scale none"
    at_own_size = read_image(tmp_path / "none" / "big_mask.png")
    big = torch.from_numpy(read_image(tmp_path / "big.png"))[None]
    np.testing.assert_array_equal(at_own_size, predict_labels(model, big)[0].numpy())
    assert _dice(at_own_size, expected) < 0.6  # the detector misses spots at twice its scale


def test_resampled_probabilities_are_bilinear_and_outputs_keep_the_input_size(tmp_path: Path) -> None:
    probs = torch.rand(2, 3, 7, 11).softmax(dim=1)
    for size in ((20, 31), (3, 4), (7, 11), (1, 1)):
        got = resample_probabilities(probs, size)
        want = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.sum(dim=1), torch.ones(2, *size))

    model = tiny_model("unet_bn").eval()
    write_image(tmp_path / "a.png", _spots(1, 45, 70))
    [outcome] = predict_files(
        model,
        [tmp_path / "a.png"],
        tmp_path / "out",
        scale=0.5,
        probabilities=True,
        overlays=True,
        inferer=TiledInferer(),
        progress=False,
    )
    assert outcome.size == (22, 35) and outcome.scale == "factor 0.5 of the input's size"
    mask = read_image(tmp_path / "out" / "a_mask.png")
    with Image.open(tmp_path / "out" / "a_prob.tif") as im:
        background = np.array(im)
        im.seek(1)
        foreground = np.array(im)
    assert mask.shape == background.shape == (45, 70)
    assert read_image(tmp_path / "out" / "a_overlay.png").shape == (45, 70, 3)
    # the mask written band by band is the argmax of the full-size probabilities written beside it
    np.testing.assert_array_equal(mask, (foreground > background).astype(np.uint8))


def test_an_input_far_from_the_training_images_size_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    native = TrainingScale(image_size=(32, 32))  # trained at the images' own scale, as ISBI models
    assert scale_warning((64, 64), native) is None  # 2x: within the rule
    assert scale_warning((16, 20), native) is None
    assert scale_warning((80, 60), native) is not None
    assert scale_warning((15, 32), native) is not None
    assert scale_warning((80, 60), TrainingScale(resize=(32, 32))) is None  # a resize applies instead
    assert scale_warning((80, 60), TrainingScale()) is None  # nothing to compare with

    model = tiny_model("unet_bn")
    weights = tmp_path / "native.safetensors"
    save_weights(model, weights, {"resize": None, "image_size": [32, 32]})
    write_image(tmp_path / "in" / "near.png", _spots(2, 40, 50))
    write_image(tmp_path / "in" / "far.png", _spots(3, 80, 70))
    argv = ["--model", "unet_bn", "--weights", str(weights), "--out", str(tmp_path / "out"), "--amp", "none"]
    with caplog.at_level(logging.WARNING, logger="zoo.predict"):
        assert _cli(*argv, "--no-progress", str(tmp_path / "in")) == 0
    captured = capsys.readouterr()
    far = str(tmp_path / "in" / "far.png")
    assert "1 warning(s)" in captured.err
    assert (
        f"{far}: 80x70 is more than 2x off the 32x32 (height x width) images unet_bn.native were"
        in captured.err
    )
    assert "--scale 0.43" in captured.err and "near.png" not in captured.err
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [far]
    assert (
        "scale: 2 input(s) predicted at 40x50, 80x70 (the input's size: the weights record no resize); "
        "outputs at each input's size"
    ) in captured.out
    caplog.clear()
    # an explicit scale is the user's choice: no warning (--force: the first call's masks are replaced)
    assert _cli(*argv, "--no-progress", "--force", "--scale", "none", str(tmp_path / "in")) == 0
    assert "warning" not in capsys.readouterr().err and not caplog.records


def test_a_bad_scale_is_refused_by_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _cli("--model", "unet_bn", "--weights", "x", "--out", "o", "--scale", "half", "a.png")
    assert exit_info.value.code == 2
    assert "scale 'half' is not a scale; use auto, none, a size HxW" in capsys.readouterr().err


# -- the shipped Carvana model on full-resolution photos ----------------------------------------------


def test_the_carvana_model_scores_on_full_resolution_photos_as_at_its_training_scale(
    real_data: Path, tmp_path: Path
) -> None:
    root = real_data / "carvana"
    photos = [root / "train" / f"0cdf5b5d0ce1_{n}.jpg" for n in ("01", "09")]
    if not all(p.is_file() for p in photos):
        pytest.skip(f"full-resolution Carvana photos not found under {root}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = create_model("unet_bilinear", weights="carvana512-w16-s0").eval()
        outcomes = predict_files(model, photos, tmp_path, inferer=TiledInferer(), progress=False)
        full, trained = [], []
        for photo, outcome in zip(photos, outcomes, strict=True):
            assert outcome.size == (256, 256)
            truth = read_image(root / "train_masks" / f"{photo.stem}_mask.gif")
            mask = read_image(tmp_path / f"{photo.stem}_mask.png")
            assert mask.shape == truth.shape == (1280, 1918)
            full.append(_dice(mask, truth))
            # the same photo as the harness evaluated: resized for the model, against the resized mask
            small = resize_image(read_image(photo, mode="RGB"), (256, 256))
            labels = predict_labels(model, torch.from_numpy(small).permute(2, 0, 1))[0].numpy()
            small_truth = np.array(Image.fromarray(truth).resize((256, 256), Image.Resampling.NEAREST))
            trained.append(_dice(labels, small_truth))
    finally:
        torch.set_num_threads(threads)
    # measured (fp32): full resolution 0.9005 / 0.8947, training scale 0.9000 / 0.8926
    assert np.mean(full) > 0.85
    assert abs(np.mean(full) - np.mean(trained)) < 0.01, (full, trained)

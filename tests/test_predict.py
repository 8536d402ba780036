"""``unet-zoo predict``: masks in the input's format, stacks, probabilities, overlays, TTA, bad inputs."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from zoo import create_model
from zoo.data.io import read_image, read_stack, write_image, write_stack
from zoo.models import SegmentationModel
from zoo.predict import add_parser, collect_inputs, output_paths, overlay, predict_files
from zoo.tiling import TiledInferer, labels_from_probabilities, predict_labels, predict_probabilities
from zoo.weights import save_weights


def _model(name: str = "unet", in_channels: int = 1) -> SegmentationModel:
    model = create_model(name, in_channels=in_channels, num_classes=2, base_channels=4).eval()
    assert isinstance(model, SegmentationModel)
    return model


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[SegmentationModel, Path]:
    torch.manual_seed(1)
    model = _model()
    path = tmp_path_factory.mktemp("weights") / "tiny-unet.safetensors"
    save_weights(model, path)
    return model, path


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="unet-zoo")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["predict", *argv])
    return int(args.func(args))


def _image(seed: int, h: int = 40, w: int = 53) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _expected_mask(model: SegmentationModel, image: np.ndarray, **options: object) -> np.ndarray:
    """The tiling library's labels for an 8-bit image (what the files must hold)."""
    x = torch.from_numpy(image).unsqueeze(0)
    return predict_labels(model, x, **options)[0].numpy()  # type: ignore[arg-type]


def _pages(path: Path) -> list[np.ndarray]:
    with Image.open(path) as im:
        return [np.array(page) for page in ImageSequence.Iterator(im)]


def test_png_masks_are_written_and_a_corrupt_file_does_not_stop_the_others(
    weights: tuple[SegmentationModel, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, path = weights
    src = tmp_path / "in"
    images = {"a": _image(0), "c": _image(1, 61, 37)}
    for stem, image in images.items():
        write_image(src / f"{stem}.png", image)
    good = (src / "a.png").read_bytes()
    (src / "b.png").write_bytes(good[: len(good) // 2])  # truncated: not decodable
    out = tmp_path / "out"
    argv = ["--model", "unet", "--weights", str(path), str(src), "--out", str(out), "--amp", "none"]
    code = _cli(*argv)  # with its progress bar
    assert code == 1
    err = capsys.readouterr().err
    assert "1 input(s) failed" in err and f"{src / 'b.png'}: truncated: " in err
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "c_mask.png"]
    for stem, image in images.items():
        mask = read_image(out / f"{stem}_mask.png")
        assert mask.shape == image.shape and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, _expected_mask(model, image))
    assert set(np.unique(read_image(out / "a_mask.png"))) <= {0, 1}


def test_a_stack_round_trips_with_probabilities_and_overlays(
    weights: tuple[SegmentationModel, Path], tmp_path: Path
) -> None:
    model, _ = weights
    slices = [_image(i, 45, 38) for i in range(3)]
    write_stack(tmp_path / "volume.tif", slices)
    outcomes = predict_files(
        model,
        [tmp_path / "volume.tif"],
        tmp_path / "out",
        probabilities=True,
        overlays=True,
        inferer=TiledInferer(),
        progress=False,
    )
    assert [o.ok for o in outcomes] == [True] and outcomes[0].pages == 3
    masks = read_stack(tmp_path / "out" / "volume_mask.tif")
    assert masks.shape == (3, 45, 38)
    for mask, image in zip(masks, slices, strict=True):
        np.testing.assert_array_equal(mask, _expected_mask(model, image))
    probs = _pages(tmp_path / "out" / "volume_prob.tif")
    assert len(probs) == 3 * 2 and all(p.dtype == np.float32 and p.shape == (45, 38) for p in probs)
    for i, mask in enumerate(masks):  # pages in the order page * K + class
        np.testing.assert_allclose(probs[2 * i] + probs[2 * i + 1], 1.0, atol=1e-6)
        np.testing.assert_array_equal((probs[2 * i + 1] > probs[2 * i]).astype(np.uint8), mask)
    overlays = _pages(tmp_path / "out" / "volume_overlay.tif")
    assert len(overlays) == 3 and overlays[0].shape == (45, 38, 3)
    background = masks[0] == 0
    np.testing.assert_array_equal(overlays[0][background], np.repeat(slices[0][background][:, None], 3, 1))


def test_jpeg_and_gif_inputs_get_lossless_png_masks(tmp_path: Path) -> None:
    model = _model("unet_bn", in_channels=3)
    rgb = np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    write_image(tmp_path / "car.jpg", rgb)
    write_image(tmp_path / "pal.gif", rgb[..., 0], palette_mask=True)
    outcomes = predict_files(
        model,
        [tmp_path / "car.jpg", tmp_path / "pal.gif"],
        tmp_path / "o",
        inferer=TiledInferer(),
        progress=False,
    )
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["car_mask.png", "pal_mask.png"]
    decoded = read_image(tmp_path / "car.jpg", mode="RGB")  # the JPEG's own pixels, not the array written
    x = torch.from_numpy(decoded).permute(2, 0, 1)
    np.testing.assert_array_equal(
        read_image(tmp_path / "o" / "car_mask.png"), predict_labels(model, x)[0].numpy()
    )


def test_outputs_never_overwrite_inputs_or_each_other(
    weights: tuple[SegmentationModel, Path], tmp_path: Path
) -> None:
    model, _ = weights
    write_image(tmp_path / "a.png", _image(3))
    write_image(tmp_path / "a_mask.png", _image(4))  # an input that a.png's mask would overwrite
    before = (tmp_path / "a_mask.png").read_bytes()
    (tmp_path / "other").mkdir()
    write_image(tmp_path / "other" / "b.png", _image(5))
    write_image(tmp_path / "b.bmp", _image(6))  # same stem as other/b.png: same mask name
    outcomes = predict_files(
        model,
        [tmp_path / "a.png", tmp_path / "a_mask.png", tmp_path / "other" / "b.png", tmp_path / "b.bmp"],
        tmp_path,
        inferer=TiledInferer(),
        progress=False,
    )
    assert [o.ok for o in outcomes] == [False, True, True, False]
    assert "would overwrite the input" in str(outcomes[0].error) and "choose another --out" in str(
        outcomes[0].error
    )
    assert "an output of" in str(outcomes[3].error) and str(tmp_path / "other" / "b.png") in str(
        outcomes[3].error
    )
    assert (tmp_path / "a_mask.png").read_bytes() == before
    assert (tmp_path / "a_mask_mask.png").is_file() and (tmp_path / "b_mask.png").is_file()


def test_folders_expand_to_their_images_without_predict_outputs(tmp_path: Path) -> None:
    for name in ("b.png", "a.tif", "a_mask.png", "c_overlay.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in collect_inputs([tmp_path])] == ["a.tif", "a_mask.png", "b.png", "c_overlay.png"]
    # in the output folder itself, earlier outputs are not inputs
    assert [p.name for p in collect_inputs([tmp_path], out_dir=tmp_path)] == ["a.tif", "b.png"]
    assert output_paths("x/scan.TIFF", "o", probabilities=True, overlays=True) == {
        "mask": Path("o/scan_mask.tif"),
        "probabilities": Path("o/scan_prob.tif"),
        "overlay": Path("o/scan_overlay.tif"),
    }


def test_missing_files_empty_folders_and_unknown_formats_are_reported(
    weights: tuple[SegmentationModel, Path], tmp_path: Path
) -> None:
    model, _ = weights
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    write_image(tmp_path / "ok.png", _image(7))
    outcomes = predict_files(
        model,
        [tmp_path / "gone.png", tmp_path / "empty", tmp_path / "notes.txt", tmp_path / "ok.png"],
        tmp_path / "out",
        inferer=TiledInferer(),
        progress=False,
    )
    errors = {o.input.name: o.error for o in outcomes}
    assert "no image files in this folder" in str(errors["empty"])
    assert "file not found" in str(errors["gone.png"])
    assert ".txt is not a format predict reads" in str(errors["notes.txt"])
    assert errors["ok.png"] is None


def test_tta_on_the_command_line_averages_like_the_library(
    weights: tuple[SegmentationModel, Path], tmp_path: Path
) -> None:
    model, path = weights
    image = _image(8, 47, 60)
    write_image(tmp_path / "x.png", image)
    code = _cli(
        "--model", "unet", "--weights", str(path), str(tmp_path / "x.png"), "--out", str(tmp_path / "o"),
        "--tta", "d4", "--amp", "none", "--tile", "300", "--no-progress",
    )  # fmt: skip
    assert code == 0
    probs = predict_probabilities(model, torch.from_numpy(image)[None], tta="d4", tile=300)
    np.testing.assert_array_equal(
        read_image(tmp_path / "o" / "x_mask.png"), labels_from_probabilities(probs)[0].numpy()
    )


def test_bf16_default_path_writes_masks(weights: tuple[SegmentationModel, Path], tmp_path: Path) -> None:
    _, path = weights
    write_image(tmp_path / "x.png", _image(9, 70, 90))
    assert (
        _cli("--model", "unet", "--weights", str(path), str(tmp_path / "x.png"), "--out", str(tmp_path)) == 0
    )
    assert read_image(tmp_path / "x_mask.png").shape == (70, 90)


def test_weights_of_another_model_or_a_bad_tile_fail_before_any_file(
    weights: tuple[SegmentationModel, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = weights
    write_image(tmp_path / "x.png", _image(10))
    assert (
        _cli("--model", "unet_bn", "--weights", str(path), str(tmp_path / "x.png"), "--out", str(tmp_path))
        == 2
    )
    assert "holds weights for model 'unet'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="tile=100 is too small"):
        predict_files(
            _model(), [tmp_path / "x.png"], tmp_path / "o", inferer=TiledInferer(tile=100), progress=False
        )
    assert not (tmp_path / "o").exists()


def test_overlay_tints_foreground_classes_only() -> None:
    gray = np.full((2, 3), 100, dtype=np.uint8)
    labels = np.array([[0, 1, 2], [0, 0, 1]])
    out = overlay(gray, labels)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [178, 50, 178]  # half magenta
    assert out[0, 2].tolist() == [50, 178, 50]  # half green

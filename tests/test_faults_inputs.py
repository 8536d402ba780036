"""Hostile input, round two (issue 26): a user's file where predict writes, validation images of mixed
sizes, RGB TIFF photos. Each case: the message and exit code, and nothing written or lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.cli import main
from zoo.data.folder import FolderDataset, FolderSpec
from zoo.data.io import image_info, read_image, read_pages, write_image, write_stack
from zoo.harness.evaluate import evaluate
from zoo.models import SegmentationModel
from zoo.predict import predict_image
from zoo.tiling import TiledInferer
from zoo.weights import save_weights

from .helpers import tiny_model

CLASSES = (("background", 0), ("object", 1))


def _weights(folder: Path, in_channels: int) -> tuple[SegmentationModel, Path]:
    model = tiny_model("unet_bn", in_channels=in_channels).eval()
    path = folder / f"tiny-{in_channels}.safetensors"
    save_weights(model, path)
    return model, path


@pytest.fixture(scope="module")
def gray(tmp_path_factory: pytest.TempPathFactory) -> tuple[SegmentationModel, Path]:
    return _weights(tmp_path_factory.mktemp("weights"), 1)


@pytest.fixture(scope="module")
def rgb(tmp_path_factory: pytest.TempPathFactory) -> tuple[SegmentationModel, Path]:
    return _weights(tmp_path_factory.mktemp("weights"), 3)


def _predict(weights: Path, out: Path, *inputs: Path | str) -> int:
    argv = ["predict", "--weights", str(weights), "--out", str(out), "--amp", "none", "--no-progress"]
    return main([*argv, *map(str, inputs)])


def _noise(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- 1. predict never replaces a file it did not write in this call ---------------------------------------


@pytest.mark.parametrize(
    ("same_folder", "options", "theirs"),
    [
        (True, [], ["0_mask.png"]),  # `predict DIR --out DIR` beside the user's own mask
        (False, [], ["0_mask.png"]),
        (False, ["--probabilities", "--overlays"], ["0_prob.tif", "1_overlay.png"]),
    ],
    ids=["out-is-input-folder", "out-folder", "probabilities-and-overlays"],
)
def test_an_output_that_exists_is_refused_before_anything_is_predicted(
    gray: tuple[SegmentationModel, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    same_folder: bool,
    options: list[str],
    theirs: list[str],
) -> None:
    _, weights = gray
    src = tmp_path / "in"
    out = src if same_folder else tmp_path / "out"
    for stem in ("0", "1"):
        write_image(src / f"{stem}.png", _noise(int(stem), 40, 44))
    for name in theirs:  # the user's files, named as predict names its outputs
        write_image(out / name, np.full((40, 44), 7, np.uint8))
    before_in, before_out = _snapshot(src), _snapshot(out)
    assert _predict(weights, out, *options, src) == 2
    err = capsys.readouterr().err.strip()
    shown = ", ".join(str(out / name) for name in theirs)
    assert err == (
        f"unet-zoo predict: error: {len(theirs)} output file(s) exist already and would be replaced: "
        f"{shown}; nothing was predicted: choose another output folder (--out), or replace them with force "
        "(--force)"
    )
    # nothing lost, nothing written: not even the outputs of the inputs whose names were free
    assert _snapshot(src) == before_in and _snapshot(out) == before_out


def test_force_replaces_existing_outputs_and_only_those(
    gray: tuple[SegmentationModel, Path], tmp_path: Path
) -> None:
    model, weights = gray
    image = _noise(0, 40, 44)
    write_image(tmp_path / "0.png", image)
    write_image(tmp_path / "0_mask.png", np.full((40, 44), 7, np.uint8))
    write_image(tmp_path / "notes.png", np.zeros((4, 4), np.uint8))
    notes = (tmp_path / "notes.png").read_bytes()
    assert _predict(weights, tmp_path, "--force", tmp_path / "0.png") == 0
    np.testing.assert_array_equal(
        read_image(tmp_path / "0_mask.png"), predict_image(model, image[..., None])[0]
    )
    assert (tmp_path / "notes.png").read_bytes() == notes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", "0_mask.png", "notes.png"]


# -- 2. validation images of different sizes ---------------------------------------------------------------


def _folder(root: Path, sizes: list[tuple[int, int]], *, channels: int = 1) -> FolderDataset:
    for i, (h, w) in enumerate(sizes):
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : h // 2 + i, w // 5 : w // 2] = 1
        image = _noise(i, h, w) // 2 + 120 * mask  # the object brighter: a model gets some of it right
        write_image(root / "images" / f"{i}.png", image)
        write_image(root / "masks" / f"{i}.png", mask)
    spec = FolderSpec(
        name="mixed", images=root / "images", masks=root / "masks", classes=CLASSES, channels=channels
    )
    return FolderDataset(spec, cache=False)


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_validation_takes_any_mix_of_sizes_with_each_image_scored_alone(
    tmp_path: Path, batch_size: int
) -> None:
    # a 64x48 image among 64x64 ones, and sizes that change back and forth within a batch
    sizes = [(64, 64), (64, 48), (64, 64), (64, 64), (37, 53), (64, 48)]
    dataset = _folder(tmp_path, sizes)
    model = tiny_model("unet_bn").eval()
    inferer = TiledInferer(batch_size=batch_size)
    got = evaluate(model, dataset, range(len(sizes)), inferer=inferer)
    alone = [evaluate(model, dataset, [i], inferer=TiledInferer(batch_size=1)) for i in range(len(sizes))]
    assert set(got) == {"dice", "iou", "misclassified"}
    for key, value in got.items():  # per image, then the mean over images: none dropped, none merged
        assert value == pytest.approx(float(np.mean([a[key] for a in alone])), abs=1e-12)
    assert len({a["dice"] for a in alone}) > 1  # the images score differently: the mean is a real check
    assert not model.training


# -- 3. RGB TIFF photos: one decoding for training and predict ----------------------------------------------


def _gif_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    im.putpalette([v for i in range(256) for v in (i, i, i)])
    im.save(path)


@pytest.mark.parametrize(
    ("pages", "colour", "in_channels"),
    [
        (1, True, 3),  # a photo saved as TIFF, predicted by the model trained on it
        (1, True, 1),  # the same photo, a gray model: converted to gray, as training converts it
        (3, False, 1),  # a gray stack stays a stack of gray pages
        (3, False, 3),  # ... and gives an RGB model each page copied to three channels, as a gray PNG
    ],
    ids=["rgb-tiff-rgb-model", "rgb-tiff-gray-model", "gray-stack-gray-model", "gray-stack-rgb-model"],
)
def test_a_tiff_is_read_by_predict_as_the_data_loader_reads_it(
    gray: tuple[SegmentationModel, Path],
    rgb: tuple[SegmentationModel, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pages: int,
    colour: bool,
    in_channels: int,
) -> None:
    model, weights = rgb if in_channels == 3 else gray
    shape = (40, 52, 3) if colour else (40, 52)
    slices = [_noise(k, *shape) for k in range(pages)]
    image = tmp_path / "images" / "car.tif"
    masks = [np.zeros((40, 52), np.uint8) for _ in slices]
    if pages == 1:
        image.parent.mkdir(parents=True)
        Image.fromarray(slices[0]).save(image)
        _gif_mask(tmp_path / "masks" / "car.gif", masks[0])
    else:
        write_stack(image, slices)
        write_stack(tmp_path / "masks" / "car.tif", masks)
    spec = FolderSpec(
        name="photos",
        images=tmp_path / "images",
        masks=tmp_path / "masks",
        classes=CLASSES,
        channels=in_channels,
    )
    loaded = FolderDataset(spec, cache=False)
    decoded = [loaded.arrays(i)[0] for i in range(len(loaded))]  # what training sees
    assert len(decoded) == pages
    np.testing.assert_array_equal(read_pages(image, mode="L" if in_channels == 1 else "RGB"), decoded)
    if colour and in_channels == 3:
        np.testing.assert_array_equal(decoded[0], slices[0])  # RGB kept, not turned gray

    out = tmp_path / "out"
    assert _predict(weights, out, image) == 0
    assert "predicted 1 of 1 input(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["car_mask.tif"]
    assert image_info(out / "car_mask.tif").pages == pages
    for k, page in enumerate(decoded):
        expected = predict_image(model, page if page.ndim == 3 else page[..., None])[0]
        np.testing.assert_array_equal(read_image(out / "car_mask.tif", page=k), expected)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["car.tif"]


def test_tiff_pages_of_different_sizes_are_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "odd.tif"
    first, second = Image.fromarray(_noise(0, 8, 8, 3)), Image.fromarray(_noise(1, 8, 6, 3))
    first.save(path, save_all=True, append_images=[second])
    with pytest.raises(ValueError, match=r"odd\.tif: pages differ in size .*a stack needs equal-sized pages"):
        read_pages(path, mode="RGB")

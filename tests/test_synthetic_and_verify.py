"""Synthetic twins (deterministic, real formats, plausible) and `unet-zoo data verify/synth`."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.cli import main
from zoo.data import CarvanaDataset, ISBI2012Dataset
from zoo.data.loader import RandomCrops, make_loader, unit_float
from zoo.data.synthetic import em_volume, write_car_twin, write_em_twin
from zoo.data.verify import verify_dataset


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_twins_are_deterministic_by_seed(tmp_path: Path) -> None:
    a = write_em_twin(tmp_path / "a", count=2, seed=1, size=96)
    b = write_em_twin(tmp_path / "b", count=2, seed=1, size=96)
    c = write_em_twin(tmp_path / "c", count=2, seed=2, size=96)
    assert _digest(a) == _digest(b) != _digest(c)
    x = write_car_twin(tmp_path / "x", count=3, seed=1, height=64, width=96)
    y = write_car_twin(tmp_path / "y", count=3, seed=1, height=64, width=96)
    assert _digest(x) == _digest(y)


def test_em_twin_looks_like_isbi(em_twin: Path) -> None:
    ds = ISBI2012Dataset(em_twin)
    masks = np.stack([ds.arrays(i)[1] for i in range(len(ds))])
    assert set(np.unique(masks).tolist()) == {0, 1}
    assert 0.12 < masks.mean() < 0.35  # membrane share near ISBI's ~0.22
    images = np.stack([ds.arrays(i)[0] for i in range(len(ds))]).astype(float)
    # membranes are darker on average, but not separable by a threshold (organelles, fading, noise)
    assert images[masks == 1].mean() < images[masks == 0].mean() - 30
    best_threshold_accuracy = max(((images < t) == (masks == 1)).mean() for t in range(0, 256, 4))
    assert best_threshold_accuracy < 0.95


def test_em_twin_is_a_volume_of_neighbouring_slices() -> None:
    _, labels = em_volume(8, size=96, seed=0)
    near = (labels[0] == labels[1]).mean()
    far = (labels[0] == labels[7]).mean()
    assert near > far


def test_car_twin_looks_like_carvana(car_twin: Path) -> None:
    ds = CarvanaDataset(car_twin)
    fractions = [ds.arrays(i)[1].mean() for i in range(len(ds))]
    assert min(fractions) > 0.08 and max(fractions) < 0.5
    full_car = max(set(ds.groups), key=ds.groups.count)
    views = [n.split("_")[1] for n, g in zip(ds.names, ds.groups, strict=True) if g == full_car]
    assert views == [f"{k:02d}" for k in range(1, 17)]


def test_verify_passes_on_twins_and_real_data(em_twin: Path, car_twin: Path, real_data: Path) -> None:
    for root in (em_twin, car_twin, real_data / "isbi2012", real_data / "carvana"):
        report = verify_dataset(root)
        assert report.ok, report.problems
    real = verify_dataset(real_data / "isbi2012", checksums=True)
    assert real.ok and "checksums: 78 file(s) compared" in real.notes[-1]
    assert "train images: 24 found, a complete copy has 30 (a subset?)" in real.notes


def test_verify_lists_every_problem_with_its_file(
    car_twin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "car"
    shutil.copytree(car_twin, root)
    images = sorted((root / "train").glob("*.jpg"))
    masks = sorted((root / "train_masks").glob("*.gif"))
    images[0].write_bytes(images[0].read_bytes()[:500])  # truncated
    masks[1].unlink()  # missing partner
    from zoo.data.io import write_image

    write_image(masks[2], np.full((10, 10), 1, np.uint8), palette_mask=True)  # wrong size
    write_image(masks[3], np.full((96, 144), 7, np.uint8), palette_mask=True)  # bad values
    (root / "train_masks" / "deadbeef0000_01_mask.gif").write_bytes(masks[4].read_bytes())  # orphan
    assert main(["data", "verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM {images[0]}: cannot decode image" in out
    assert f"PROBLEM {images[1]}: image without a mask" in out
    assert f"PROBLEM {masks[2]}: mask is 10x10 but its image {images[2]} is 144x96" in out
    assert f"PROBLEM {masks[3]}: mask values [7] are outside the expected [0, 1] or [0, 255]" in out
    assert "deadbeef0000_01_mask.gif: mask without an image" in out
    assert out.rstrip().endswith("5 problem(s)")


def test_verify_checksums_catch_a_modified_real_file(real_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "isbi"
    shutil.copytree(real_data / "isbi2012", root)
    label = root / "train" / "label" / "3.png"
    from PIL import Image

    Image.open(label).save(label, optimize=True)  # same pixels, different bytes
    report = verify_dataset(root, checksums=True)
    assert report.problems == [
        (str(label), "content differs from the published file (sha256 mismatch): re-download it")
    ]


def test_synth_cli_writes_a_verifiable_twin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "isbi2012", str(tmp_path / "em"), "--count", "2", "--size", "64"]) == 0
    assert main(["data", "verify", str(tmp_path / "em"), "--dataset", "isbi2012"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK: no problems")
    assert main(["data", "verify", str(tmp_path / "em"), "--dataset", "carvana"]) == 2
    assert "no known dataset layout found (expected one of carvana)" in capsys.readouterr().err


def test_random_crops_are_reproducible_and_cover_small_images(em_twin: Path) -> None:
    ds = ISBI2012Dataset(em_twin, weight_map=True)
    crops = RandomCrops(ds, [0, 1, 2], (160, 100), repeats=2, seed=3)  # taller than the 128 px slices
    loader = make_loader(crops, batch_size=4, shuffle=True, in_memory=True, seed=0)
    first = [t.clone() for t in next(iter(loader))]
    again = next(iter(make_loader(crops, batch_size=4, shuffle=True, in_memory=True, seed=0)))
    assert all(a.equal(b) for a, b in zip(first, again, strict=True))
    assert (
        first[0].shape == (4, 1, 160, 100)
        and first[1].shape == (4, 160, 100)
        and first[2].shape == (4, 160, 100)
    )
    assert (first[0].dtype, first[1].dtype, first[2].dtype) == (torch.uint8, torch.int64, torch.float32)
    assert sum(len(b[0]) for b in loader) == 6  # the last partial batch is kept
    crops.set_epoch(1)
    assert not next(iter(make_loader(crops, batch_size=4, shuffle=True, in_memory=True, seed=0)))[0].equal(
        first[0]
    )


def test_crops_for_valid_models_put_the_output_window_anywhere_in_the_image(em_twin: Path) -> None:
    ds = ISBI2012Dataset(em_twin)  # 128 px slices
    crop, out = 188, 4  # the tiny paper unet: a 188 input gives a 4 px output window
    context = (crop - out) // 2
    crops = RandomCrops(ds, [0], (crop, crop), repeats=300, seed=1, context=context)
    image = ds[0][0]
    tops = []
    for position in range(300):
        window = unit_float(crops[position][0][:, context : context + out, context : context + out])
        top, left = crops.origin(position, 128 + 2 * context, 128 + 2 * context)
        assert 0 <= top <= 128 - out and 0 <= left <= 128 - out  # the window lies on real pixels
        assert torch.equal(window, image[:, top : top + out, left : left + out])  # and is aligned with them
        tops.append(top)
    assert min(tops) < 10 and max(tops) > 128 - out - 10  # borders are reached, not only the centre


@pytest.mark.parametrize(
    ("size", "context"), [((64, 48), 0), ((160, 100), 0), ((188, 188), 92), ((400, 90), 30)]
)
def test_a_crop_is_the_window_of_the_mirror_padded_sample(
    em_twin: Path, size: tuple[int, int], context: int
) -> None:
    """Oracle: numpy's reflect padding (by the context, then evenly up to the crop) and a slice at the
    crop's origin; the crops only index the stored pixels, and must give the same ones."""
    ds = ISBI2012Dataset(em_twin, weight_map=True)  # 128 px slices
    crops = RandomCrops(ds, [1, 2], size, repeats=3, seed=5, context=context)
    crops.set_epoch(2)
    for position in range(len(crops)):
        index = crops.indices[position % 2]
        image, mask = ds.arrays(index)
        planes = [image, mask, ds.weights[index]]  # type: ignore[index]
        padded = [np.pad(p, context, mode="reflect") for p in planes]
        short = [max(want - got, 0) for want, got in zip(size, padded[0].shape, strict=True)]
        pads = [(s // 2, s - s // 2) for s in short]
        padded = [np.pad(p, pads, mode="reflect") for p in padded]
        top, left = crops.origin(position, *padded[0].shape)
        expected = [p[top : top + size[0], left : left + size[1]] for p in padded]
        got = crops[position]
        assert got[0].dtype == torch.uint8 and np.array_equal(got[0][0].numpy(), expected[0])
        assert np.array_equal(got[1].numpy(), expected[1]) and np.array_equal(got[2].numpy(), expected[2])

"""Loaders on the real data (skipped when absent) and on synthetic twins; splits; bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data import CarvanaDataset, DataError, ISBI2012Dataset, block_kfold, group_split
from zoo.data.datasets import Item, Selection
from zoo.data.io import read_image, write_image, write_stack


def _raw(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


# -- ISBI 2012 ---------------------------------------------------------------------------------------
def test_isbi_real_png_membrane_is_the_foreground(real_data: Path) -> None:
    root = real_data / "isbi2012"
    ds = ISBI2012Dataset(root)
    assert len(ds) == 24 and ds.names[:3] == ["0", "1", "2"] and ds.names[-1] == "23"  # numeric order
    image, mask = ds[5]
    assert (
        image.shape == (1, 512, 512) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    )
    assert mask.shape == (512, 512) and mask.dtype == torch.int64
    raw = _raw(root / "train" / "label" / "5.png")
    assert torch.equal(mask, torch.from_numpy((raw == 0).astype(np.int64)))  # label 0 = membrane = class 1
    torch.testing.assert_close(
        image[0] * 255, torch.from_numpy(_raw(root / "train" / "image" / "5.png")).float()
    )
    assert 0.15 < mask.float().mean() < 0.3  # membranes are about a fifth of the pixels
    test = ISBI2012Dataset(root, split="test")
    assert len(test) == 30 and bool((test[0][1] == -1).all())


@pytest.mark.parametrize("source", ["real", "twin"])
def test_isbi_tiff_stacks_load_identically_to_png_slices(
    source: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    root = (
        request.getfixturevalue("real_data") / "isbi2012"
        if source == "real"
        else request.getfixturevalue("em_twin")
    )
    png = ISBI2012Dataset(root)
    test_png = ISBI2012Dataset(root, split="test")
    write_stack(tmp_path / "train-volume.tif", [png.arrays(i)[0] for i in range(len(png))])
    write_stack(tmp_path / "train-labels.tif", [_raw(Path(it.mask)) for it in png.items if it.mask])
    write_stack(tmp_path / "test-volume.tif", [test_png.arrays(i)[0] for i in range(len(test_png))])
    tif = ISBI2012Dataset(tmp_path)
    assert tif.layout == "isbi2012-tif" and png.layout == "isbi2012-png"
    assert len(tif) == len(png)
    for i in range(len(png)):
        for a, b in zip(tif[i], png[i], strict=True):
            assert torch.equal(a, b)
    assert len(ISBI2012Dataset(tmp_path, split="test")) == len(test_png)


def test_isbi_weight_map_is_returned_with_each_sample(em_twin: Path) -> None:
    ds = ISBI2012Dataset(em_twin, weight_map=True)
    _, mask, weight = ds[0]
    assert weight.shape == mask.shape and weight.dtype == torch.float32
    assert weight[mask == 1].mean() > 2 * weight[mask == 0].mean()  # membranes carry the weight


# -- Carvana -----------------------------------------------------------------------------------------
def test_carvana_real_full_resolution(real_data: Path) -> None:
    ds = CarvanaDataset(real_data / "carvana", resize=(320, 480))
    assert len(ds) == 16 and set(ds.groups) == {"0cdf5b5d0ce1"}
    image, mask = ds[0]
    assert image.shape == (3, 320, 480) and mask.shape == (320, 480)
    assert set(mask.unique().tolist()) == {0, 1} and 0.1 < mask.float().mean() < 0.4
    full = CarvanaDataset(real_data / "carvana", cache=False)
    img, msk = full.arrays(3)
    assert img.shape == (1280, 1918, 3)
    raw = _raw(real_data / "carvana" / "train_masks" / "0cdf5b5d0ce1_04_mask.gif")
    assert np.array_equal(msk, raw.astype(np.int64))


def test_carvana512_is_split_by_car(real_data: Path) -> None:
    ds = CarvanaDataset(real_data / "carvana512")
    assert len(ds) == 4576 and len(set(ds.groups)) == 286
    assert ds._cache is None  # 3.6 GB decoded: too big to keep, decoded per access instead
    split = group_split(ds.groups, val_fraction=0.2, seed=0)
    train_cars = {ds.groups[i] for i in split.train}
    val_cars = {ds.groups[i] for i in split.val}
    assert not train_cars & val_cars and len(val_cars) == round(286 * 0.2)
    assert len(split.train) + len(split.val) == len(ds)
    image, mask = ds[split.val[0]]
    assert image.shape == (3, 512, 512) and set(mask.unique().tolist()) <= {0, 1}


def test_carvana_masks_in_0_255_read_the_same(car_twin: Path, tmp_path: Path) -> None:
    copy = tmp_path / "c255"
    shutil.copytree(car_twin, copy)
    for gif in (copy / "train_masks").glob("*.gif"):
        write_image(gif, read_image(gif) * 255, palette_mask=True)
    a, b = CarvanaDataset(car_twin), CarvanaDataset(copy)
    for i in range(0, len(a), 7):
        assert torch.equal(a[i][1], b[i][1])


def test_carvana_twin_loads_and_caches(car_twin: Path) -> None:
    ds = CarvanaDataset(car_twin)
    assert ds._cache is not None and len(ds) == 40 and len(set(ds.groups)) == 3
    assert ds.in_channels == 3 and ds[0][0].shape == (3, 96, 144)
    subset = CarvanaDataset(car_twin, select=Selection(max_groups=1, seed=3), resize=(48, 72))
    assert len(set(subset.groups)) == 1 and subset[0][0].shape == (3, 48, 72)
    assert subset[0][1].dtype == torch.int64
    one = CarvanaDataset(car_twin, select=Selection(names=frozenset([ds.names[5], ds.names[-1]])))
    assert one.names == [ds.names[5], ds.names[-1]]  # in the dataset's order, nothing else decoded
    assert one._cache is not None and len(one._cache) == 2
    with pytest.raises(DataError, match="none of the images is selected"):
        CarvanaDataset(car_twin, select=Selection(names=frozenset(["nosuchcar_01"])))


def test_a_selection_of_groups_is_the_seeds_choice_of_the_sorted_groups() -> None:
    items = [Item(f"{g}_{k}", g, "", None) for g in ("c", "a", "b", "d") for k in range(2)]
    chosen = [items[i].group for i in Selection(max_groups=2, seed=0).keep(items)]
    groups = sorted({"a", "b", "c", "d"})
    expected = {groups[j] for j in np.random.default_rng(0).permutation(4)[:2]}
    assert set(chosen) == expected and len(chosen) == 4
    assert Selection(max_groups=2, seed=0).keep(items) == Selection(max_groups=2, seed=0).keep(items)


# -- splits ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,folds", [(24, 3), (30, 5), (7, 2)])
def test_block_kfold_is_contiguous_disjoint_and_covering(n: int, folds: int) -> None:
    vals = []
    for fold in range(folds):
        split = block_kfold(n, folds=folds, fold=fold)
        assert not set(split.train) & set(split.val)
        assert set(split.train) | set(split.val) == set(range(n))
        assert list(split.val) == list(range(split.val[0], split.val[-1] + 1))  # one contiguous block
        assert split == block_kfold(n, folds=folds, fold=fold)  # reproducible
        vals.extend(split.val)
    assert sorted(vals) == list(range(n))  # the folds partition the slices


def test_block_kfold_gap_keeps_neighbours_out_of_training() -> None:
    split = block_kfold(24, folds=3, fold=1, gap=2)
    assert split.val == tuple(range(8, 16))
    assert split.train == (*range(0, 6), *range(18, 24))
    assert split.as_params([str(i) for i in range(24)])["split_val_items"] == ",".join(map(str, range(8, 16)))
    with pytest.raises(ValueError, match=r"fold=3 must be in 0\.\.2"):
        block_kfold(24, folds=3, fold=3)


def test_group_split_is_reproducible_and_ignores_order() -> None:
    groups = [f"car{i // 16}" for i in range(16 * 10)]
    a = group_split(groups, val_fraction=0.3, seed=4)
    assert a == group_split(groups, val_fraction=0.3, seed=4)
    assert {groups[i] for i in a.val}.isdisjoint({groups[i] for i in a.train})
    assert len({groups[i] for i in a.val}) == 3
    shuffled = groups[::-1]
    b = group_split(shuffled, val_fraction=0.3, seed=4)
    assert {shuffled[i] for i in b.val} == {groups[i] for i in a.val}
    assert group_split(groups, val_fraction=0.3, seed=5) != a
    with pytest.raises(ValueError, match="need at least 2 groups"):
        group_split(["one"] * 5)


# -- bad input -----------------------------------------------------------------------------------------
def test_truncated_image_names_the_file_and_leaves_it(em_twin: Path, tmp_path: Path) -> None:
    root = tmp_path / "em"
    shutil.copytree(em_twin, root)
    bad = root / "train" / "image" / "2.png"
    data = bad.read_bytes()[:300]
    bad.write_bytes(data)
    with pytest.raises(DataError, match=r"image/2\.png: truncated: .*re-export or re-download it"):
        ISBI2012Dataset(root)
    assert bad.read_bytes() == data  # nothing was changed or deleted


def test_mask_of_the_wrong_size_is_named_with_both_sizes(car_twin: Path, tmp_path: Path) -> None:
    root = tmp_path / "car"
    shutil.copytree(car_twin, root)
    mask = sorted((root / "train_masks").glob("*.gif"))[5]
    write_image(mask, np.zeros((90, 144), dtype=np.uint8), palette_mask=True)
    with pytest.raises(DataError, match=rf"{mask.name}: mask is 144x90 but its image .* is 144x96"):
        CarvanaDataset(root)


def test_mask_values_outside_the_set_are_listed(em_twin: Path, tmp_path: Path) -> None:
    root = tmp_path / "em"
    shutil.copytree(em_twin, root)
    label = root / "train" / "label" / "1.png"
    raw = _raw(label)
    raw[0, :3] = [7, 128, 254]
    write_image(label, raw)
    with pytest.raises(
        DataError, match=r"label/1\.png: mask values \[7, 128, 254\] are outside the expected set \[0, 255\]"
    ):
        ISBI2012Dataset(root)


def test_missing_partner_and_wrong_folder_fail_clearly(car_twin: Path, tmp_path: Path) -> None:
    root = tmp_path / "car"
    shutil.copytree(car_twin, root)
    gone = sorted((root / "train_masks").glob("*.gif"))[0]
    gone.unlink()
    with pytest.raises(DataError, match=rf"{gone.name}: mask missing for image"):
        CarvanaDataset(root)
    with pytest.raises(DataError, match="not an ISBI 2012 folder"):
        ISBI2012Dataset(root)
    with pytest.raises(DataError, match="not a Carvana folder"):
        CarvanaDataset(tmp_path)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's own warning about the broken file
def test_truncated_tiff_stack_names_the_file(em_twin: Path, tmp_path: Path) -> None:
    png = ISBI2012Dataset(em_twin)
    write_stack(tmp_path / "train-volume.tif", [png.arrays(i)[0] for i in range(len(png))])
    write_stack(tmp_path / "train-labels.tif", [_raw(Path(it.mask)) for it in png.items if it.mask])
    vol = tmp_path / "train-volume.tif"
    vol.write_bytes(vol.read_bytes()[: vol.stat().st_size // 2])
    with pytest.raises(DataError, match=r"train-volume\.tif: cannot decode TIFF stack .*truncated"):
        ISBI2012Dataset(tmp_path)

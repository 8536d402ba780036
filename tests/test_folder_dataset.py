"""A user's folder dataset: the TOML spec, pairing rules, mask formats, stacks, ROI, inference, verify."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data.folder import FolderDataset, FolderSpec, PairingRule, infer_spec, load_spec, verify_folder
from zoo.data.io import DataError, read_image, write_image, write_stack
from zoo.data.splits import block_kfold
from zoo.data.synthetic import write_shapes_twin

BINARY = (("background", 0), ("fg", 255))


def _spec_file(root: Path, body: str, classes: str = "background = 0\nfg = 255\n") -> Path:
    path = root / "dataset.toml"
    path.write_text(f'name = "t"\nimages = "images"\nmasks = "masks"\n{body}\n[classes]\n{classes}')
    return path


def _binary_pair(root: Path, image: str, mask: str, *, size: tuple[int, int] = (8, 10)) -> np.ndarray:
    """Write a gray image and a 0/255 mask; return the mask's expected class indices."""
    rng = np.random.default_rng(len(image))
    write_image(root / "images" / image, rng.integers(0, 256, size, dtype=np.uint8))
    classes = rng.integers(0, 2, size, dtype=np.uint8)
    write_image(root / "masks" / mask, classes * 255, palette_mask=mask.endswith(".gif"))  # GIF: palette
    return classes.astype(np.int64)


# -- the spec file ----------------------------------------------------------------------------------
def test_spec_round_trips_through_toml(tmp_path: Path) -> None:
    for d in ("images", "masks", "fov", "elsewhere/colour"):
        (tmp_path / d).mkdir(parents=True)
    specs = [
        FolderSpec(
            name="scan-2",
            images=tmp_path / "images",
            masks=tmp_path / "masks",
            roi=tmp_path / "fov",
            classes=(("background", 0), ("vessel", 1), ("odd 'name\"", 65535)),
            pairing=PairingRule("id", pattern=r"^(\d+)_"),
            channels=1,
            split="blocks",
            group=r"^(\w+?)_\d+$",
            weight_map_class="vessel",
        ),
        FolderSpec(
            name="c",
            images=tmp_path / "images",
            masks=tmp_path / "elsewhere" / "colour",
            classes=(("background", (0, 0, 0)), ("road", (128, 64, 128))),
            pairing=PairingRule("suffix", suffix="_mask"),
        ),
    ]
    for spec in specs:
        text = spec.to_toml(relative_to=tmp_path)
        assert 'images = "images"' in text and str(tmp_path) not in text  # written relative
        (tmp_path / "d.toml").write_text(text)
        assert load_spec(tmp_path / "d.toml") == spec
        (tmp_path / "elsewhere" / "abs.toml").write_text(spec.to_toml())  # absolute paths
        assert load_spec(tmp_path / "elsewhere" / "abs.toml") == spec
    assert load_spec(tmp_path / "d.toml").source == tmp_path / "d.toml"


def test_spec_typo_names_the_key_the_valid_keys_and_the_closest(tmp_path: Path) -> None:
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    path = _spec_file(tmp_path, "chanels = 3\n")
    with pytest.raises(DataError) as err:
        load_spec(path)
    message = str(err.value)
    assert message.startswith(f"{path}: unknown key 'chanels'")
    assert "valid keys: name, images, masks, roi, channels, split, group" in message
    assert message.endswith("did you mean 'channels'?")
    with pytest.raises(DataError, match=r"unknown key 'pairing.rul'; valid keys in \[pairing\]: .*'rule'"):
        load_spec(_spec_file(tmp_path, '[pairing]\nrul = "stem"\n'))
    with pytest.raises(DataError, match=r"channels = '3' must be 1 or 3"):
        load_spec(_spec_file(tmp_path, 'channels = "3"\n'))
    with pytest.raises(DataError, match=r"split = 'random' must be one of 'groups', 'blocks'"):
        load_spec(_spec_file(tmp_path, 'split = "random"\n'))
    with pytest.raises(DataError, match=r"roi = 'fov': folder .*fov not found"):
        load_spec(_spec_file(tmp_path, 'roi = "fov"\n'))
    with pytest.raises(DataError, match=r"mixes mask values and \[R, G, B\] colours"):
        load_spec(_spec_file(tmp_path, "", "a = 0\nb = [255, 0, 0]\n"))
    with pytest.raises(DataError, match=r"lists 1 class\(es\); a segmentation needs at least 2"):
        load_spec(_spec_file(tmp_path, "", "a = 0\n"))
    with pytest.raises(DataError, match=r"weight_map_class = 'fgg' is not a class.*did you mean 'fg'\?"):
        load_spec(_spec_file(tmp_path, 'weight_map_class = "fgg"\n'))
    with pytest.raises(DataError, match=r"pairing.suffix is used only with rule = \"suffix\""):
        load_spec(_spec_file(tmp_path, '[pairing]\nsuffix = "_mask"\n'))


# -- pairing ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "names,pairing,inferred",
    [
        ([("a.png", "a.gif"), ("b.jpg", "b.png")], "", "stem"),
        (
            [("a.png", "a_mask.png"), ("b.png", "b_mask.png")],
            '[pairing]\nrule = "suffix"\nsuffix = "_mask"\n',
            "suffix '_mask'",
        ),
        (
            [("12_scan.tif", "12_label.gif"), ("13_scan.tif", "13_label.gif")],
            "[pairing]\nrule = \"id\"\npattern = '^(\\d+)_'\n",
            "id '^(\\d+)'",
        ),
    ],
)
def test_each_pairing_rule_and_inference_finds_it(
    tmp_path: Path, names: list[tuple[str, str]], pairing: str, inferred: str
) -> None:
    expected = [_binary_pair(tmp_path, image, mask) for image, mask in names]
    ds = FolderDataset(_spec_file(tmp_path, pairing))
    assert ds.names == [Path(image).stem for image, _ in names] and ds.num_classes == 2
    for i, truth in enumerate(expected):
        assert np.array_equal(ds.arrays(i)[1], truth)
    spec, inspection = infer_spec(tmp_path / "images", tmp_path / "masks")
    assert inspection.rule == inferred and inspection.pairs == 2
    assert spec.classes == (("background", 0), ("foreground", 255)) and spec.channels == 1
    assert FolderDataset(spec).names == ds.names


def test_shared_id_inference_rejects_ambiguous_and_weaker_rules(tmp_path: Path) -> None:
    for k in (3, 12, 40):
        _binary_pair(tmp_path, f"{k}_scan.tif", f"{k}_label.gif")
    spec, inspection = infer_spec(tmp_path / "images", tmp_path / "masks", name="drive")
    assert spec.pairing == PairingRule("id", pattern=r"^(\d+)")
    why = dict(inspection.rejected)
    assert why["stem"] == "pairs no image"
    assert why["id '([^_-]+)$'"].startswith("ambiguous: 3_scan.tif and 12_scan.tif")
    assert "comes later" in why["id '^([^_-]+)'"]  # pairs as many: the earlier rule wins the tie
    assert any(line.startswith("pairing: rule id '^(\\d+)' pairs 3") for line in inspection.lines())
    assert FolderDataset(spec).names == ["3_scan", "12_scan", "40_scan"]  # natural order


def test_unpaired_images_are_each_named_and_unpaired_masks_only_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _binary_pair(tmp_path, "a.png", "a.png")
    _binary_pair(tmp_path, "lonely.png", "x.png")
    _binary_pair(tmp_path, "alone.png", "y.png")
    with pytest.raises(
        DataError, match=r"2 image\(s\) have no mask .*: alone\.png, lonely\.png; add their masks"
    ):
        FolderDataset(_spec_file(tmp_path, ""))
    (tmp_path / "images" / "alone.png").unlink()
    (tmp_path / "images" / "lonely.png").unlink()
    with caplog.at_level(logging.WARNING, logger="zoo.data.folder"):
        ds = FolderDataset(_spec_file(tmp_path, ""))
    assert ds.names == ["a"] and [p.name for p in ds.unpaired_masks] == ["x.png", "y.png"]
    assert "2 mask(s) without an image, not used: x.png, y.png" in caplog.text


def test_ambiguous_pairs_name_both_files(tmp_path: Path) -> None:
    _binary_pair(tmp_path, "a.png", "a.png")
    _binary_pair(tmp_path, "a.png", "a.gif")
    with pytest.raises(
        DataError, match=r"masks/a\.gif and .*masks/a\.png pair the same way under pairing rule stem"
    ):
        FolderDataset(_spec_file(tmp_path, ""))
    _binary_pair(tmp_path, "12_x.png", "12_y.png")
    _binary_pair(tmp_path, "12_z.png", "12_y.png")
    with pytest.raises(DataError, match=r"images/12_x\.png and .*images/12_z\.png pair the same way"):
        FolderDataset(_spec_file(tmp_path, "[pairing]\nrule = \"id\"\npattern = '^(\\d+)_'\n"))


# -- mask formats -------------------------------------------------------------------------------------
def test_multi_class_mask_with_an_unlisted_value_names_file_value_and_fix(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png", np.zeros((6, 6, 3), dtype=np.uint8))
    mask = np.array([[0, 1, 2, 7, 9, 1]] * 6, dtype=np.uint8)
    write_image(tmp_path / "masks" / "a.png", mask)
    toml = _spec_file(tmp_path, "", "bg = 0\nroad = 1\ncar = 2\n")
    with pytest.raises(DataError) as err:
        FolderDataset(toml)
    assert str(err.value).startswith(
        f"{tmp_path / 'masks' / 'a.png'}: mask values 7, 9 are not listed in [classes] (bg = 0, road = 1, "
        f"car = 2); add each to [classes] in {toml}, or fix the mask"
    )
    toml.write_text(toml.read_text() + "bike = 9\nbus = 7\n")
    ds = FolderDataset(toml)
    assert ds.num_classes == 5 and ds.arrays(0)[1][0].tolist() == [0, 1, 2, 4, 3, 1]


def test_palette_masks_by_index_or_by_colour_and_rgb_masks(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 2, 2], [1, 1, 0, 0]], dtype=np.uint8)
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [9, 9, 9] * 253
    pal = Image.frombytes("P", (4, 2), indices.tobytes())
    pal.putpalette(palette)
    write_image(tmp_path / "images" / "p.png", np.zeros((2, 4, 3), dtype=np.uint8))
    (tmp_path / "masks").mkdir()
    pal.save(tmp_path / "masks" / "p.png")
    by_index = FolderDataset(_spec_file(tmp_path, "", "bg = 0\nroad = 1\ncar = 2\n"))
    assert np.array_equal(by_index.arrays(0)[1], indices)
    colours = "bg = [0, 0, 0]\ncar = [0, 255, 0]\nroad = [255, 0, 0]\n"  # listed order: the class index
    by_colour = FolderDataset(_spec_file(tmp_path, "", colours))
    assert np.array_equal(by_colour.arrays(0)[1], np.array([0, 2, 1])[indices])
    rgb = np.array(palette[:9], dtype=np.uint8).reshape(3, 3)[indices]
    write_image(tmp_path / "masks" / "p.png", rgb)  # the same colours, as an RGB mask
    assert np.array_equal(
        FolderDataset(_spec_file(tmp_path, "", colours)).arrays(0)[1], by_colour.arrays(0)[1]
    )
    rgb[0, 0] = (1, 2, 3)
    write_image(tmp_path / "masks" / "p.png", rgb)
    with pytest.raises(DataError, match=r"mask values \[1, 2, 3\] are not listed .*bg = \[0, 0, 0\]"):
        FolderDataset(_spec_file(tmp_path, "", colours))
    spec, _ = infer_spec(tmp_path / "images", tmp_path / "masks")
    assert spec.colour and [v for _, v in spec.classes] == [(0, 0, 0), (0, 255, 0), (1, 2, 3), (255, 0, 0)]


def test_16_bit_image_is_scaled_and_16_bit_mask_keeps_its_values(tmp_path: Path) -> None:
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    image = np.array([[0, 65535, 32768, 257, 1000, 128]], dtype=np.uint16)
    Image.fromarray(image).save(tmp_path / "images" / "s.tif")
    mask = np.array([[0, 1000, 40000, 40000, 0, 1000]], dtype=np.uint16)
    Image.fromarray(mask).save(tmp_path / "masks" / "s.png")
    assert Image.open(tmp_path / "masks" / "s.png").mode == "I;16"
    ds = FolderDataset(_spec_file(tmp_path, "channels = 1\n", "bg = 0\nnucleus = 40000\ncell = 1000\n"))
    img, labels = ds.arrays(0)
    assert img.dtype == np.uint8 and img[0].tolist() == [0, 255, 128, 1, 4, 0]  # round(v * 255 / 65535)
    assert labels[0].tolist() == [0, 2, 1, 1, 0, 2]
    with pytest.raises(DataError, match=r"16-bit pixels \(mode I;16\) where 8-bit ones are expected"):
        read_image(tmp_path / "images" / "s.tif", mode="L")  # never clipped unnoticed


# -- stacks, ROI, sizes -------------------------------------------------------------------------------
def test_multi_page_tiff_stacks_pair_page_by_page(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 256, (4, 6, 5), dtype=np.uint8)
    labels = rng.integers(0, 2, (4, 6, 5), dtype=np.uint8) * 255
    write_stack(tmp_path / "images" / "train-volume.tif", volume)
    write_stack(tmp_path / "masks" / "train-labels.tif", labels)
    spec, _ = infer_spec(tmp_path / "images", tmp_path / "masks")
    assert spec.pairing.rule == "id" and spec.split == "blocks" and spec.channels == 1
    ds = FolderDataset(spec)
    assert ds.names == [f"train-volume[{i}]" for i in range(4)] and set(ds.groups) == {"train-volume"}
    assert ds.split_rule == "blocks" and len(block_kfold(len(ds), folds=2).val) == 2
    for i in range(4):
        image, mask = ds.arrays(i)
        assert np.array_equal(image, volume[i]) and np.array_equal(mask, labels[i] // 255)
    write_stack(tmp_path / "masks" / "train-labels.tif", labels[:3])
    with pytest.raises(
        DataError, match=r"train-labels\.tif: has 3 page\(s\) but its image .*train-volume\.tif has 4"
    ):
        FolderDataset(spec)


def test_roi_turns_outside_pixels_into_ignore(tmp_path: Path) -> None:
    truth = _binary_pair(tmp_path, "eye.png", "eye.png", size=(8, 8))
    roi = np.zeros((8, 8), dtype=np.uint8)
    roi[2:6, 1:7] = 255
    write_image(tmp_path / "fov" / "eye.png", roi)
    ds = FolderDataset(_spec_file(tmp_path, 'roi = "fov"\n'))
    mask = ds.arrays(0)[1]
    assert np.array_equal(mask, np.where(roi > 0, truth, -1))
    resized = FolderDataset(_spec_file(tmp_path, 'roi = "fov"\n'), resize=(16, 16))
    assert set(np.unique(resized.arrays(0)[1]).tolist()) <= {-1, 0, 1}  # -1 survives resizing
    assert int((resized[0][1] == -1).sum()) == 4 * int((mask == -1).sum())
    write_image(tmp_path / "fov" / "eye.png", roi[:, :5])
    with pytest.raises(DataError, match=r"fov/eye\.png: ROI is 5x8 but its image .*eye\.png is 8x8"):
        FolderDataset(_spec_file(tmp_path, 'roi = "fov"\n'))
    (tmp_path / "fov" / "eye.png").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) have no ROI here: eye\.png"):
        FolderDataset(_spec_file(tmp_path, 'roi = "fov"\n'))


def test_mask_of_the_wrong_size_names_both_files_and_sizes(tmp_path: Path) -> None:
    _binary_pair(tmp_path, "a.png", "a.png", size=(8, 10))
    write_image(tmp_path / "masks" / "a.png", np.zeros((7, 10), dtype=np.uint8))
    with pytest.raises(DataError, match=r"masks/a\.png: mask is 10x7 but its image .*images/a\.png is 10x8"):
        FolderDataset(_spec_file(tmp_path, ""))


def test_verify_folder_collects_every_problem(tmp_path: Path) -> None:
    for stem in ("good", "short", "values", "broken"):
        _binary_pair(tmp_path, f"{stem}.png", f"{stem}.png")
    _binary_pair(tmp_path, "nomask.png", "other.png")
    write_image(tmp_path / "masks" / "short.png", np.zeros((3, 10), dtype=np.uint8))
    write_image(tmp_path / "masks" / "values.png", np.full((8, 10), 17, dtype=np.uint8))
    broken = tmp_path / "images" / "broken.png"
    broken.write_bytes(broken.read_bytes()[:60])
    report = verify_folder(_spec_file(tmp_path, ""))
    found = {Path(path).name: message for path, message in report.problems}
    assert sorted(found) == ["broken.png", "nomask.png", "other.png", "short.png", "values.png"]
    assert found["nomask.png"].startswith(f"image without a mask in {tmp_path / 'masks'}")
    assert found["other.png"].startswith(f"mask without an image in {tmp_path / 'images'}")
    assert found["broken.png"].startswith("truncated: ")
    assert found["short.png"].startswith("mask is 10x3 but its image")
    assert found["values.png"].startswith("mask values 17 are not listed in [classes]")
    assert not report.ok and report.counts == {"images": 5, "masks": 5, "pairs": 4}


# -- the synthetic twin and the old API's case ---------------------------------------------------------
def test_shapes_twin_is_a_deterministic_4_class_folder_dataset(tmp_path: Path) -> None:
    toml = write_shapes_twin(tmp_path / "a", count=6, size=48, seed=1)
    ds = FolderDataset(toml)
    assert len(ds) == 6 and ds.num_classes == 4 and ds.in_channels == 3
    assert ds.class_names == ("background", "disc", "square", "triangle")
    image, mask = ds[0]
    assert image.shape == (3, 48, 48) and mask.dtype == torch.int64
    masks = np.stack([ds.arrays(i)[1] for i in range(len(ds))])
    assert set(np.unique(masks).tolist()) == {0, 1, 2, 3}
    assert verify_folder(toml).ok

    def digest(root: Path) -> str:
        return hashlib.sha256(
            b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())
        ).hexdigest()

    write_shapes_twin(tmp_path / "b", count=6, size=48, seed=1)
    write_shapes_twin(tmp_path / "c", count=6, size=48, seed=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_folder_dataset_groups_by_pattern_and_names_a_missing_mask(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for patient in ("p1", "p2"):
        for k in range(3):
            write_image(
                tmp_path / "images" / f"{patient}_{k}.png", rng.integers(0, 255, (20, 30), dtype=np.uint8)
            )
            write_image(
                tmp_path / "masks" / f"{patient}_{k}_seg.png", rng.integers(0, 3, (20, 30), dtype=np.uint8)
            )
    classes = "a = 0\nb = 1\nc = 2\n"
    body = 'channels = 1\ngroup = \'^(p\\d+)_\'\n[pairing]\nrule = "suffix"\nsuffix = "_seg"\n'
    ds = FolderDataset(_spec_file(tmp_path, body, classes))
    assert len(ds) == 6 and ds.groups == ["p1"] * 3 + ["p2"] * 3 and ds.split_rule == "groups"
    image, mask = ds[4]
    assert image.shape == (1, 20, 30)
    expected = np.array(Image.open(tmp_path / "masks" / "p2_1_seg.png")).astype(np.int64)
    assert torch.equal(mask, torch.from_numpy(expected))
    with pytest.raises(
        DataError, match=r"6 image\(s\) have no mask .* under pairing rule suffix '_mask': p1_0\.png"
    ):
        FolderDataset(_spec_file(tmp_path, body.replace("_seg", "_mask"), classes))


def test_weight_map_class_resolves_to_its_index(tmp_path: Path) -> None:
    _binary_pair(tmp_path, "a.png", "a.png")
    toml = _spec_file(tmp_path, 'weight_map_class = "fg"\n')
    assert load_spec(toml).weight_map_index == 1
    assert len(FolderDataset(toml, weight_map=True)[0]) == 3  # image, mask, weight
    with pytest.raises(DataError, match="weight maps need weight_map_class"):
        FolderDataset(_spec_file(tmp_path, ""), weight_map=True)

"""The dataset registry: every registered dataset gets the loader, split and verify checks; a dataset file
goes wherever a registered name goes; no module branches on a dataset's name."""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.cli import main
from zoo.data import DataError, Selection
from zoo.data.registry import UnknownDatasetError, get_dataset, list_datasets
from zoo.data.synthetic import write_shapes_twin
from zoo.data.verify import verify_dataset
from zoo.harness.config import TrainConfig
from zoo.harness.data import build_data
from zoo.harness.recipes import resolve_recipe

ZOO = Path(__file__).resolve().parents[1] / "zoo"


@pytest.fixture(scope="module", params=list_datasets())
def twin(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Each registered dataset's synthetic twin, small."""
    entry = get_dataset(request.param)
    assert entry.twin is not None, f"{entry.name}: every registered dataset has a twin the tests can use"
    root = tmp_path_factory.mktemp(entry.name)
    entry.twin.write(root, count=32 if entry.twin.kind == "carvana" else 8, size=64, seed=1)
    return entry.name, root


def test_the_loader_returns_what_the_entry_says(twin: tuple[str, Path]) -> None:
    name, root = twin
    entry = get_dataset(name)
    ds = entry.load(root)
    assert (ds.in_channels, ds.num_classes, tuple(ds.class_names)) == (
        entry.in_channels,
        entry.num_classes,
        entry.class_names,
    )
    image, mask = ds[0][:2]
    assert image.shape[0] == entry.in_channels and image.dtype == torch.float32
    assert mask.dtype == torch.int64 and int(mask.max()) < entry.num_classes
    if entry.weight_map_class is not None:
        weighted = entry.load(root, weight_map=True)
        assert len(weighted[0]) == 3 and weighted[0][2].shape == mask.shape


def test_the_split_follows_the_entrys_rule_and_never_splits_a_group(twin: tuple[str, Path]) -> None:
    name, root = twin
    entry = get_dataset(name)
    ds = entry.load(root)
    split = entry.split(ds, folds=4, fold=3, val_fraction=0.34, seed=0)
    assert split.train and split.val and not set(split.train) & set(split.val)
    assert sorted((*split.train, *split.val)) == list(range(len(ds)))
    val_groups = {ds.groups[i] for i in split.val}
    assert not val_groups & {ds.groups[i] for i in split.train}
    if entry.split_rule == "blocks":  # one contiguous block of the ordered samples
        assert list(split.val) == list(range(split.val[0], split.val[-1] + 1))


def test_the_twin_verifies_against_the_entrys_card(twin: tuple[str, Path]) -> None:
    name, root = twin
    entry = get_dataset(name)
    assert entry.card is not None
    report = verify_dataset(root, dataset=entry.card)
    assert report.ok, report.problems


def test_a_selection_keeps_the_named_samples_only(twin: tuple[str, Path]) -> None:
    name, root = twin
    entry = get_dataset(name)
    names = entry.load(root).names
    picked = frozenset([names[1], names[-1]])
    assert set(entry.load(root, select=Selection(names=picked)).names) == picked


def test_an_unknown_dataset_names_the_close_ones_and_the_fix() -> None:
    with pytest.raises(UnknownDatasetError, match=r"'isbi2021'.*Did you mean 'isbi2012'.*data init"):
        get_dataset("isbi2021")
    with pytest.raises(ValueError, match="Did you mean 'carvana512'"):
        TrainConfig(model="unet_bn", dataset="carvana152")


def test_the_weight_map_is_refused_where_the_dataset_names_no_object_class() -> None:
    with pytest.raises(ValueError, match=r"weight_map=True.*'carvana512' names no object class"):
        TrainConfig(model="unet_bn", dataset="carvana512", weight_map=True)


def test_a_missing_data_folder_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"carvana512: dataset folder not found.*--data-root"):
        get_dataset("carvana512").root(tmp_path)


def test_data_list_shows_every_registered_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in list_datasets():
        entry = get_dataset(name)
        assert any(line.startswith(name + " ") and entry.split_rule in line for line in out.splitlines())


def test_no_module_compares_a_value_with_a_dataset_name() -> None:
    """Dataset knowledge lives in the registry entries: `x == "isbi2012"` anywhere in zoo/ is a branch
    that a new dataset would have to be added to."""
    names = set(list_datasets())
    found = []
    for path in sorted(ZOO.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for operand in (node.left, *node.comparators):
                    if isinstance(operand, ast.Constant) and operand.value in names:
                        found.append(f"{path.relative_to(ZOO)}:{node.lineno}")
    assert found == []


# -- a dataset file where a name goes ------------------------------------------------------------------
@pytest.fixture
def shapes(tmp_path: Path) -> Path:
    return write_shapes_twin(tmp_path / "shapes", count=12, size=64, seed=0)


def test_a_dataset_file_is_an_entry_with_its_classes_and_rule(shapes: Path) -> None:
    entry = get_dataset(str(shapes))
    assert entry.name == "shapes" and entry.num_classes == 4 and entry.source == shapes.resolve()
    assert entry.folder is None and entry.twin is None and entry.recipe == "folder-cpu"
    cfg = resolve_recipe("folder-cpu", {"dataset": str(shapes)})
    assert cfg.dataset == str(shapes) and cfg.run_name == "unet_bn-shapes-s0"
    data = build_data(cfg, shapes.parent / "runs")
    assert data.entry.name == "shapes" and len(data.dataset) == 12 and data.source == str(shapes.resolve())
    described = entry.describe(data.dataset)
    assert described["dataset_files"] == "24"  # 12 images, 12 masks
    assert len(described["dataset_file_sha256"]) == 64


def test_the_fingerprint_changes_when_a_file_does(shapes: Path) -> None:
    entry = get_dataset(str(shapes))
    before = entry.describe(entry.load(shapes.parent))["dataset_files_fingerprint"]
    mask = next((shapes.parent / "masks").iterdir())
    mask.write_bytes(mask.read_bytes() + b"\0")
    assert entry.describe(entry.load(shapes.parent))["dataset_files_fingerprint"] != before


def test_a_registered_dataset_is_fingerprinted_too_and_the_board_names_it(tmp_path: Path) -> None:
    """Registered datasets record the fingerprint of the files they read (relative to their folder):
    moving the folder keeps it, changing a file changes it; the leaderboard's data column shows it."""
    import shutil

    from zoo.data.synthetic import write_em_twin
    from zoo.report.leaderboard import describe_data

    entry = get_dataset("isbi2012")
    write_em_twin(tmp_path / "a", count=4, size=64)
    first = entry.describe(entry.load(tmp_path / "a"))
    assert first["dataset_files"] == "8" and "dataset_file" not in first  # 4 slices, 4 labels; no TOML
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert (
        entry.describe(entry.load(tmp_path / "b"))["dataset_files_fingerprint"]
        == first["dataset_files_fingerprint"]
    )
    label = sorted((tmp_path / "b").rglob("*.png"))[-1]
    label.write_bytes(label.read_bytes() + b"\0")
    assert (
        entry.describe(entry.load(tmp_path / "b"))["dataset_files_fingerprint"]
        != first["dataset_files_fingerprint"]
    )
    fingerprint = first["dataset_files_fingerprint"]
    assert (
        describe_data("/data/isbi2012", fingerprint)
        == f"real data (/data/isbi2012; files {fingerprint[:12]})"
    )


def test_a_recipe_for_any_dataset_needs_one_named() -> None:
    with pytest.raises(ValueError, match="made for any dataset: name one"):
        resolve_recipe("folder-cpu", {})


def test_three_commands_from_folders_to_predicted_masks(
    tmp_path: Path, shapes: Path, capsys: pytest.CaptureFixture[str], fresh_store: Callable[[Path], Path]
) -> None:
    """data init -> train -> predict, as the README shows them, on a 4-class folder dataset."""
    toml = tmp_path / "my.toml"
    images, masks = shapes.parent / "images", shapes.parent / "masks"
    assert main(["data", "init", "--images", str(images), "--masks", str(masks), "--out", str(toml)]) == 0
    out = capsys.readouterr().out
    assert "rule suffix '_mask' pairs 12 image(s)" in out and f"wrote {toml}" in out
    assert main(["data", "init", "--images", str(images), "--masks", str(masks), "--out", str(toml)]) == 2
    assert "exists" in capsys.readouterr().err  # never overwritten silently
    workdir = fresh_store(tmp_path / "runs")
    train = ["train", "--dataset", str(toml), "--workdir", str(workdir), "--override", "base_channels=4"]
    for setting in ("epochs=1", "steps_per_epoch=2", "crop=64", "batch_size=2", "cost_batch=1"):
        train += ["--set", setting]
    assert main(train) == 0
    (run_dir,) = (workdir / "train").iterdir()
    assert run_dir.name.startswith("unet_bn-shapes-s0-")
    assert json.loads((run_dir / "config.json").read_text())["recipe"] == "folder-cpu"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(json.loads((run_dir / "run.json").read_text())["run_id"])
    assert run.data.params["dataset_name"] == "shapes"
    assert (
        run.data.params["dataset_file_sha256"]
        == get_dataset(str(toml)).describe(get_dataset(str(toml)).load(tmp_path))["dataset_file_sha256"]
    )
    recorded = Path(client.download_artifacts(run.info.run_id, f"dataset/{toml.name}", str(tmp_path / "a")))
    assert recorded.read_text() == toml.read_text()
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--workdir", str(workdir)]) == 0  # the run's dataset file again
    assert f"dice         {run.data.metrics['dice']:.4f}" in capsys.readouterr().out
    pred = tmp_path / "pred"
    weights = str(run_dir / "best.safetensors")
    assert main(["predict", "--weights", weights, "--out", str(pred), str(images)]) == 0  # model: the file's
    from zoo.data.io import read_image

    mask = read_image(pred / "shape_000_mask.png")
    assert mask.shape == (64, 64) and int(mask.max()) <= 3


def test_predict_without_a_model_needs_a_file_that_names_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "--weights", "isbi2012-w16-s0", "--out", str(tmp_path), str(tmp_path)]) == 2
    assert "a tag needs --model" in capsys.readouterr().err


def test_only_the_region_of_interest_is_scored(tmp_path: Path) -> None:
    """Outside the field of view the mask is unknown: a prediction there must not count."""
    from zoo.data import FolderDataset
    from zoo.data.io import write_image
    from zoo.harness.evaluate import evaluate
    from zoo.tiling import TiledInferer

    from .helpers import AnySizeModel

    class AllForeground(AnySizeModel):
        def __init__(self) -> None:
            super().__init__()
            self.in_channels, self.num_classes, self.model_name = 1, 2, "all_foreground"
            self.margin = torch.nn.Parameter(torch.ones(()), requires_grad=False)  # tiling reads its dtype

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            zero = torch.zeros_like(x[:, :1])
            return torch.cat([zero, zero + self.margin], 1)

    truth = np.zeros((32, 32), np.uint8)
    truth[:, :16] = 255  # foreground on the left
    fov = np.zeros((32, 32), np.uint8)
    fov[:, :16] = 255  # only the left half was annotated
    for stem in ("a", "b"):
        write_image(tmp_path / "images" / f"{stem}.png", np.full((32, 32), 128, np.uint8))
        write_image(tmp_path / "masks" / f"{stem}.png", truth)
        write_image(tmp_path / "fov" / f"{stem}.png", fov)
    spec = tmp_path / "fov.toml"
    spec.write_text(
        'name = "fov"\nimages = "images"\nmasks = "masks"\nroi = "fov"\nchannels = 1\n'
        "[classes]\nbackground = 0\nforeground = 255\n"
    )
    ds = FolderDataset(spec)
    assert int((ds[0][1] == -1).sum()) == 32 * 16
    scored = evaluate(AllForeground().eval(), ds, [0, 1], inferer=TiledInferer(batch_size=2))  # type: ignore[arg-type]
    assert scored["dice"] == pytest.approx(1.0) and scored["misclassified"] == pytest.approx(0.0)
    spec.write_text(spec.read_text().replace('roi = "fov"\n', ""))
    unmasked = evaluate(
        AllForeground().eval(), FolderDataset(spec), [0, 1], inferer=TiledInferer(batch_size=2)
    )  # type: ignore[arg-type]
    assert unmasked["dice"] == pytest.approx(2 * 512 / (1024 + 512))  # the right half counted


def test_a_suite_runs_on_a_dataset_file(shapes: Path) -> None:
    from zoo.harness import load_suite

    suite = load_suite("smoke", models="unet_bn", datasets=[str(shapes)], seeds=2)
    assert [(r.dataset, r.run_name) for r in suite.runs] == [
        (str(shapes), "unet_bn-shapes-s0"),
        (str(shapes), "unet_bn-shapes-s1"),
    ]


def test_an_edited_dataset_file_is_read_again(shapes: Path) -> None:
    assert get_dataset(str(shapes)) is get_dataset(str(shapes))  # parsed once per version
    text = shapes.read_text().replace('name = "shapes"', 'name = "edited"')
    shapes.write_text(text)
    os.utime(shapes, ns=(shapes.stat().st_atime_ns, shapes.stat().st_mtime_ns + 1_000_000))
    assert get_dataset(str(shapes)).name == "edited"

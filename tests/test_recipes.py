"""Recipes: the built-in file, resolution and overrides, suites that refer to recipes, what runs record."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from zoo import create_model, list_models
from zoo.cli import main
from zoo.data.registry import list_datasets
from zoo.harness import Tracker, load_suite, train
from zoo.harness.config import TrainConfig
from zoo.harness.recipes import (
    UnknownRecipeError,
    get_recipe,
    list_recipes,
    load_recipes,
    recipe_files,
    resolve_recipe,
    use_recipe_files,
)

RECIPES = list_recipes()


def test_there_are_recipes_for_both_datasets_and_the_paper_network() -> None:
    names = {r.name for r in RECIPES}
    assert {"unet-isbi2012-paper", "unet_bn-isbi2012-cpu", "unet_bilinear-carvana512-cpu"} <= names
    assert {r.dataset for r in RECIPES} >= {"isbi2012", "carvana512"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
def test_every_recipe_resolves_for_its_models(recipe) -> None:  # type: ignore[no-untyped-def]
    assert recipe.dataset in [*list_datasets(), "*"]
    dataset = list_datasets()[0] if recipe.dataset == "*" else recipe.dataset
    matched = [m for m in list_models() if recipe.applies_to(m, dataset)]
    assert matched, f"{recipe.name}: its model patterns {recipe.models} match no registered model"
    assert recipe.description and recipe.default_model in [*list_models(), "*"]
    for model in matched:
        cfg = resolve_recipe(recipe, {"model": model, "dataset": dataset})
        assert cfg.recipe == recipe.name and cfg.model == model and cfg.dataset == dataset
        for key, value in recipe.fields.items():
            if key != "overrides":
                assert getattr(cfg, key) == value, key


def test_the_paper_networks_cpu_recipe_trains_it_without_dropout() -> None:
    cfg = resolve_recipe("unet-isbi2012-cpu", {})
    model = create_model(cfg.model, in_channels=1, num_classes=2, **cfg.overrides)
    assert isinstance(model.dropout, torch.nn.Identity)  # the paper's 0.5 costs Dice at width 16 (README)
    assert cfg.overrides["base_channels"] == 16
    paper = create_model("unet", in_channels=1, num_classes=2, base_channels=16)
    assert paper.dropout.p == 0.5  # the registered network keeps the paper's dropout


def test_fields_given_win_over_the_recipe_and_overrides_merge() -> None:
    cfg = resolve_recipe(
        "unet_bn-isbi2012-cpu",
        {"lr": 5e-4, "epochs": 3, "overrides": {"norm": "group"}, "data_root": "/data"},
    )
    assert (cfg.model, cfg.lr, cfg.epochs, cfg.data_root) == ("unet_bn", 5e-4, 3, "/data")
    assert cfg.overrides == {"base_channels": 16, "norm": "group"}  # the recipe's width kept
    assert cfg.steps_per_epoch == get_recipe("unet_bn-isbi2012-cpu").fields["steps_per_epoch"]
    wider = resolve_recipe(
        "unet_bn-isbi2012-cpu", {"overrides": {"base_channels": 32}, "model": "attention_unet"}
    )
    assert (wider.model, wider.overrides) == ("attention_unet", {"base_channels": 32})


def test_a_recipe_for_another_dataset_is_refused() -> None:
    with pytest.raises(ValueError, match="made for dataset 'isbi2012', not 'carvana512'"):
        resolve_recipe("unet_bn-isbi2012-cpu", {"dataset": "carvana512"})


def test_an_unknown_recipe_names_the_close_ones() -> None:
    with pytest.raises(UnknownRecipeError, match="Did you mean 'unet-isbi2012-paper'"):
        get_recipe("unet-isbi2012-papr")


def test_a_bad_field_value_in_a_recipe_fails_like_a_bad_config() -> None:
    with pytest.raises(ValueError, match="optimizer='sdg'"):
        resolve_recipe("unet-isbi2012-cpu", {"optimizer": "sdg"})


def test_a_recipes_file_with_a_typo_names_the_key_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "recipes.toml"
    path.write_text(
        '[mine]\ndescription = "x"\nmodels = ["unet_bn"]\ndataset = "isbi2012"\n'
        "learning_rate = 0.1\nepoch = 3\n"
    )
    with pytest.raises(
        ValueError,
        match=r"unknown field\(s\) \['epoch', 'learning_rate'\] 'epoch' \(did you mean 'epochs'\?\)",
    ):
        load_recipes(path)
    path.write_text('[mine]\ndescription = "x"\nmodels = "unet_bn"\ndataset = "isbi2012"\n')
    with pytest.raises(ValueError, match="models must be a non-empty list"):
        load_recipes(path)
    path.write_text('[mine]\nmodels = ["unet_bn"]\ndataset = "isbi2012"\n')
    with pytest.raises(ValueError, match="lacks description"):
        load_recipes(path)


def test_each_command_names_its_own_recipes_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files given before are replaced, not added to (one workdir's study never leaks into the next
    command), and kept as absolute paths (a later change of folder does not lose them)."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "r.toml").write_text(
            f'[mine-{folder}]\ndescription = "x"\nmodels = ["unet_bn"]\ndataset = "isbi2012"\n'
        )
    monkeypatch.chdir(tmp_path)
    try:
        use_recipe_files("a/r.toml")
        monkeypatch.chdir(tmp_path / "b")
        assert recipe_files() == [tmp_path / "a" / "r.toml"]
        assert get_recipe("mine-a").models == ("unet_bn",)
        use_recipe_files("r.toml")
        assert [r.name for r in list_recipes("mine-*")] == ["mine-b"]
    finally:
        use_recipe_files()
    assert not list_recipes("mine-*")


def test_the_cpu_suite_starts_from_its_recipes() -> None:
    suite = load_suite("cpu", data_root="/data")
    by_dataset = {c.dataset: c for c in suite.runs if c.model == "unet_bn"}
    isbi, cars = by_dataset["isbi2012"], by_dataset["carvana512"]
    assert (isbi.recipe, cars.recipe) == ("short-isbi2012", "short-carvana512")
    assert (isbi.epochs, isbi.steps_per_epoch, isbi.crop, isbi.lr) == (15, 20, 192, 2e-3)
    assert (cars.resize, cars.max_cars, cars.max_val_images) == ([192, 192], 48, 48)
    unet = next(c for c in suite.runs if c.model == "unet")
    assert unet.crop == 316 and unet.overrides == {"base_channels": 16}  # the suite's [model.unet] on top


def test_the_gpu_suite_gives_the_paper_network_its_own_recipe() -> None:
    suite = load_suite("gpu")
    runs = {(c.model, c.dataset): c for c in suite.runs if c.seed == 0}
    paper = runs["unet", "isbi2012"]
    assert paper.recipe == "unet-isbi2012"
    assert (paper.optimizer, paper.lr, paper.crop, paper.batch_size, paper.accumulate) == (
        "adamw",
        3e-4,
        572,
        1,
        4,
    )
    assert runs["unet_bn", "isbi2012"].recipe == "gpu-isbi2012"
    assert runs["unet_bn", "carvana512"].optimizer == "adamw"


def test_suite_fields_override_the_recipe_and_unknown_recipes_fail_early(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\nmodels = ["unet_bn"]\ndatasets = ["isbi2012"]\nrecipes = ["unet_bn-isbi2012-cpu"]\n'
        "[train]\nepochs = 2\n"
    )
    (cfg,) = load_suite(str(path)).runs
    assert (cfg.recipe, cfg.epochs, cfg.lr) == ("unet_bn-isbi2012-cpu", 2, 2e-3)
    path.write_text(path.read_text().replace("unet_bn-isbi2012-cpu", "unet_bn-isbi-cpu"))
    with pytest.raises(UnknownRecipeError, match="Did you mean 'unet_bn-isbi2012-cpu'"):
        load_suite(str(path))


def test_a_run_records_its_recipe_and_resolved_config(
    tmp_path: Path, fresh_store: Callable[[Path], Path]
) -> None:
    workdir = str(fresh_store(tmp_path))
    args = ["train", "--recipe", "unet_bn-isbi2012-cpu", "--workdir", workdir, "--experiment", "r"]
    tiny = {
        "overrides": '{"base_channels": 4}',
        "epochs": "1",
        "steps_per_epoch": "1",
        "batch_size": "2",
        "crop": "64",
        "max_val_images": "1",
        "cost_batch": "1",
        "synthetic": '{"count": 6, "size": 96}',
    }
    for key, value in tiny.items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    tracker = Tracker("r", workdir=tmp_path)
    (run,) = tracker.client.search_runs([tracker.experiment_id])
    params = run.data.params
    assert params["cfg.recipe"] == "unet_bn-isbi2012-cpu"
    assert params["cfg.optimizer"] == "adamw" and float(params["cfg.lr"]) == 2e-3  # from the recipe
    assert params["cfg.weight_map"] == "True" and params["cfg.epochs"] == "1"  # --set on top
    (run_dir,) = (tmp_path / "r").iterdir()
    saved = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    assert saved == resolve_recipe("unet_bn-isbi2012-cpu", {**{k: json.loads(v) for k, v in tiny.items()}})


def test_recipes_command_lists_and_shows(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert listed == [r.name for r in RECIPES]
    assert main(["recipes", "unet-isbi2012-paper", "--show"]) == 0
    shown = capsys.readouterr().out
    assert 'optimizer = "sgd"' in shown and "momentum = 0.99" in shown
    assert main(["recipes", "nothing*"]) == 1


def test_gradient_clipping_bounds_each_step_and_the_norm_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_store: Callable[[Path], Path]
) -> None:
    fields = {
        "model": "unet_bn",
        "dataset": "isbi2012",
        "overrides": {"base_channels": 4},
        "epochs": 1,
        "steps_per_epoch": 2,
        "batch_size": 2,
        "crop": 64,
        "max_val_images": 1,
        "cost_batch": 1,
        "synthetic": {"count": 6, "size": 96},
        "optimizer": "sgd",
        "lr": 1.0,
        "amp": "none",
    }
    seen: list[float] = []  # the global norm of the gradient each SGD step is given
    real_step = torch.optim.SGD.step

    def step(self: torch.optim.SGD, closure: object = None) -> object:
        grads = [p.grad.flatten() for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.cat(grads).norm()))
        return real_step(self, closure)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    tracker = Tracker("clip", workdir=fresh_store(tmp_path))
    cfg = TrainConfig.from_dict({**fields, "clip_grad_norm": 1e-3})
    result = train(cfg, tracker=tracker, workdir=tmp_path, progress=False)
    assert len(seen) == 2 and seen == pytest.approx([1e-3, 1e-3], rel=1e-4)  # clipped to the limit
    (logged,) = tracker.client.get_metric_history(result.run_id, "grad_norm")
    assert logged.value > 1e-2  # the mean norm before clipping
    with pytest.raises(ValueError, match="clip_grad_norm=0 must be > 0"):
        TrainConfig.from_dict({**fields, "clip_grad_norm": 0})

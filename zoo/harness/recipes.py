"""Training recipes: named, versioned settings that train one model family on one dataset well.

A recipe is data (``zoo/harness/recipes.toml``): the optimiser, learning rate and schedule, loss,
augmentation, crop, batch and budget, as :class:`~zoo.harness.config.TrainConfig` fields, plus the model
patterns and the dataset it was made for. ``unet-zoo train --recipe NAME`` trains with it (any field still
overridable with ``--set``), suites name the recipes their runs start from, and every run records the
recipe's name (``cfg.recipe``) beside its resolved config, as do the weights published from it: the
reference recipes that torchvision's weights record, kept in one file.

Resolution, lowest to highest: ``TrainConfig``'s defaults, the recipe's fields, the caller's fields.
Model overrides (``overrides``) merge key by key in the same order.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import tomllib

from zoo.data.registry import get_dataset, list_datasets
from zoo.errors import ConfigError, ZooError, close_names
from zoo.harness.config import TrainConfig

__all__ = [
    "RECIPES_FILE",
    "TUNED_FILE",
    "Recipe",
    "UnknownRecipeError",
    "get_recipe",
    "list_recipes",
    "recipe_files",
    "resolve_recipe",
    "use_recipe_files",
]

log = logging.getLogger(__name__)

RECIPES_FILE = Path(__file__).with_name("recipes.toml")
TUNED_FILE = Path(__file__).with_name("tuned.toml")
"""The published tuned recipes (``unet-zoo tune --recipes-out``): built in, as the hand-made ones are."""
ANY_DATASET = "*"
_META = ("description", "models", "dataset", "reference", "tuned")


class UnknownRecipeError(ZooError, ValueError):
    """No recipe of that name; the message lists the close and the known ones."""


@dataclass(frozen=True)
class Recipe:
    """One recipe.

    Attributes:
        name: how suites, the CLI, runs and weights refer to it.
        description: what it is for, on what hardware, how long it takes.
        models: registry patterns of the models it was made for; the first is the default model.
        dataset: the dataset it was made for (a registered name), or ``"*"``: any dataset, a dataset file
            included (a starting point for a user's data).
        fields: ``TrainConfig`` fields (the dataset and model excepted).
        reference: where its settings and expected results come from (a measurement, a paper).
        tuned: for a recipe a study wrote (``unet-zoo tune``), its provenance: study, trials, budget,
            what was searched, the best trial, engine, date and commit (:mod:`zoo.harness.tuning`).
    """

    name: str
    description: str
    models: tuple[str, ...]
    dataset: str
    fields: Mapping[str, Any]
    reference: str = ""
    tuned: Mapping[str, Any] | None = None

    def applies_to(self, model: str, dataset: str) -> bool:
        """Whether it was made for ``model`` on ``dataset`` (a registered name or a dataset file)."""
        return self.fits(dataset) and any(fnmatch.fnmatchcase(model, p) for p in self.models)

    def fits(self, dataset: str) -> bool:
        return self.dataset == ANY_DATASET or get_dataset(dataset).name == self.dataset

    @property
    def default_model(self) -> str:
        return self.models[0]

    def tuning(self) -> str:
        """How a tuned recipe was found, in one line (runs record it; the leaderboard shows it); "-" for a
        recipe made by hand."""
        t = self.tuned
        if not t:
            return "-"
        searched = ", ".join(str(s).split(" in ")[0] for s in t.get("searched", []))
        return (
            f"study {t.get('study')} ({t.get('engine')}, {t.get('sampler')} sampler, {t.get('pruner')} "
            f"pruning): {t.get('budget')}; searched {searched}; {t.get('date')}"
        )


def recipe_tuning(name: str | None) -> str:
    """:meth:`Recipe.tuning` of the recipe ``name``; "-" without one, or for a name no longer known."""
    if name is None:
        return "-"
    try:
        return get_recipe(name).tuning()
    except UnknownRecipeError:  # a run resolved where another recipes file was read
        return "-"


def _parse(name: str, table: Mapping[str, Any], origin: str) -> Recipe:
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "dataset", "recipe", "data_root"}
    fields = {k: v for k, v in table.items() if k not in _META}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(
            f"{origin}: recipe {name!r} has unknown field(s) {unknown} {close_names(unknown, known)}; recipe "
            f"fields are {', '.join(_META)} and the TrainConfig fields {', '.join(sorted(known))}"
        )
    missing = [k for k in ("description", "models", "dataset") if k not in table]
    if missing:
        raise ConfigError(f"{origin}: recipe {name!r} lacks {', '.join(missing)}")
    models = table["models"]
    if isinstance(models, str) or not models:
        raise ConfigError(f"{origin}: recipe {name!r}: models must be a non-empty list of registry patterns")
    tuned = table.get("tuned")
    if tuned is not None and not isinstance(tuned, Mapping):
        raise ConfigError(f"{origin}: recipe {name!r}: tuned must be a table (a study's provenance)")
    return Recipe(
        name,
        table["description"],
        tuple(models),
        table["dataset"],
        fields,
        table.get("reference", ""),
        tuned,
    )


def load_recipes(path: str | Path = RECIPES_FILE) -> dict[str, Recipe]:
    """Every recipe of a recipes file, by name; each checked against ``TrainConfig``'s fields."""
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: not a readable recipes file ({err})") from err
    recipes = {name: _parse(name, table, str(path)) for name, table in spec.items()}
    for recipe in recipes.values():  # the full check of values (choices, ranges) that TrainConfig does
        stand_in = {"dataset": list_datasets()[0]} if recipe.dataset == ANY_DATASET else {}
        resolve_recipe(recipe, stand_in)
    return recipes


_EXTRA_FILES: list[Path] = []


def use_recipe_files(*paths: str | Path) -> None:
    """The recipes files (a study's ``tuned-recipes.toml``, a ``--recipes`` file) every lookup reads from
    now on, after the built-in ones, replacing those given before: each command names its own. A tuned
    recipe in a later file replaces one of the same name (a study run again: logged); any other name
    defined twice is an error naming both files."""
    files: list[Path] = []
    for path in (Path(p).resolve() for p in paths):  # absolute: a later change of folder keeps them
        if path not in files:
            files.append(path)
    _EXTRA_FILES[:] = files
    _builtin.cache_clear()


def recipe_files() -> list[Path]:
    """The recipes files read beside the built-in ones (:func:`use_recipe_files`)."""
    return list(_EXTRA_FILES)


@cache
def _builtin() -> dict[str, Recipe]:
    recipes: dict[str, Recipe] = {}
    origin: dict[str, Path] = {}
    for path in (RECIPES_FILE, TUNED_FILE, *_EXTRA_FILES):
        if path == TUNED_FILE and not path.is_file():
            continue
        for name, recipe in load_recipes(path).items():
            if name in recipes and recipes[name].tuned and recipe.tuned:
                log.info("recipe %s: the one in %s replaces the one in %s", name, path, origin[name])
            elif name in recipes:
                raise ConfigError(
                    f"recipe {name!r} is defined in {origin[name]} and again in {path}; rename one"
                )
            recipes[name], origin[name] = recipe, path
    return recipes


def list_recipes(pattern: str = "*") -> list[Recipe]:
    """The built-in recipes whose names match the shell wildcard ``pattern``, sorted by name."""
    return [r for name, r in sorted(_builtin().items()) if fnmatch.fnmatchcase(name, pattern)]


def get_recipe(name: str) -> Recipe:
    """A built-in recipe by name; an unknown name fails with the closest names."""
    recipes = _builtin()
    if name not in recipes:
        close = difflib.get_close_matches(name, recipes, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownRecipeError(
            f"unknown recipe {name!r}.{hint} Known recipes: {', '.join(sorted(recipes))} (`unet-zoo recipes`)"
        )
    return recipes[name]


def resolve_recipe(recipe: str | Recipe, fields: Mapping[str, Any]) -> TrainConfig:
    """The config of a run that starts from ``recipe`` and sets ``fields`` on top (``overrides`` merged).

    ``model`` defaults to the recipe's first model, ``dataset`` to its dataset; a dataset other than the
    recipe's is refused (its crop, loss and budget were made for that data), unless the recipe is made
    for any dataset (``dataset = "*"``), which then needs one named.
    """
    r = get_recipe(recipe) if isinstance(recipe, str) else recipe
    dataset = fields.get("dataset") or r.dataset
    if dataset == ANY_DATASET:
        raise ConfigError(
            f"recipe {r.name!r} is made for any dataset: name one with --dataset (or a my.toml)"
        )
    if not r.fits(dataset):
        raise ConfigError(
            f"recipe {r.name!r} is made for dataset {r.dataset!r}, not {dataset!r}; pick a recipe for "
            f"{dataset!r} (`unet-zoo recipes`) or set the fields yourself with --set"
        )
    merged: dict[str, Any] = {**r.fields, **fields}
    merged["overrides"] = {**r.fields.get("overrides", {}), **(fields.get("overrides") or {})}
    merged.update(model=fields.get("model") or r.default_model, dataset=dataset, recipe=r.name)
    return TrainConfig.from_dict(merged)


def recipe_for(names: list[str], model: str, dataset: str) -> Recipe | None:
    """The first of the recipes ``names`` made for ``model`` on ``dataset`` (a suite's ``recipes`` list)."""
    for name in names:
        recipe = get_recipe(name)
        if recipe.applies_to(model, dataset):
            return recipe
    return None

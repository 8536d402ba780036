"""Search spaces: which training fields a study searches, over what ranges, kept as data.

The spaces live in ``zoo/harness/spaces.toml``, beside the recipes (the file's header gives the format).
A space names the models and datasets it is made for; :func:`space_for` gives the first made for a
(model, dataset). A searched field (:class:`Param`) is a :class:`~zoo.harness.config.TrainConfig` field
(``lr``), a key of the augmentation table (``augment.scale``) or a model override
(``overrides.dropout``), each a range or a list of choices. Sampling is Optuna's: :meth:`SearchSpace.sample`
asks an ``optuna.Trial`` for every field (define-by-run), which Ray Tune's ``OptunaSearch`` takes as it
is, so both engines search the same space with the same code.

A space is checked when it is read (:func:`load_spaces`): unknown keys with the closest names, ranges
that are empty or not positive under ``log``, values of the wrong type; and against a study's model and
recipe when the study is made (:meth:`SearchSpace.check`): each bound and choice must give a config the
harness accepts and a model the registry builds.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomllib

from zoo.data.augment import AugmentConfig
from zoo.data.registry import get_dataset
from zoo.errors import ConfigError, close_names
from zoo.harness.config import TrainConfig

if TYPE_CHECKING:
    import optuna

__all__ = ["SPACES_FILE", "Param", "SearchSpace", "list_spaces", "load_spaces", "space_for"]

SPACES_FILE = Path(__file__).with_name("spaces.toml")
ANY = "*"
_META = ("description", "models", "datasets", "params")
# fields a study fixes itself: what is trained, on what, from which recipe, with which seed and budget
_NOT_SEARCHED = {
    "model", "dataset", "recipe", "data_root", "seed", "split_seed", "budget_images", "budget_seconds",
    "device", "synthetic", "overrides", "augment", "folds", "fold", "val_fraction", "max_val_images",
    "max_cars", "keep_checkpoint", "weights_dtype", "cost_batch", "cost_size", "deterministic",
}  # fmt: skip
_TABLES = ("augment", "overrides")


@dataclass(frozen=True)
class Param:
    """One searched field: a range (``low``/``high``, ``log``, ``step``) or a list of ``choices``.

    Invariant: exactly one of the two forms; ``low < high``; ``low > 0`` under ``log``; a range of a
    whole-number field has whole-number bounds and is sampled as integers.
    """

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    integer: bool = False

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this field (Optuna's distributions: the sampler sees the space)."""
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.integer:
            step = int(self.step or 1)
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    @property
    def extremes(self) -> tuple[Any, ...]:
        """The values that bound the field: both ends of a range, every choice."""
        return self.choices or (self.low, self.high)

    def describe(self) -> str:
        if self.choices:
            return f"{self.key} in {list(self.choices)}"
        scale = ", log" if self.log else ""
        step = f", step {self.step:g}" if self.step else ""
        return f"{self.key} in [{self.low:g}, {self.high:g}{scale}{step}]"


@dataclass(frozen=True)
class SearchSpace:
    """A named set of searched fields and the models and datasets it is made for."""

    name: str
    description: str
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    params: tuple[Param, ...]

    def applies_to(self, model: str, dataset: str) -> bool:
        name = get_dataset(dataset).name
        return any(fnmatch.fnmatchcase(model, p) for p in self.models) and any(
            d in (ANY, name) for d in self.datasets
        )

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.params)

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """A value for every field, asked of ``trial`` (define-by-run; Ray's ``OptunaSearch`` takes it)."""
        return {p.key: p.suggest(trial) for p in self.params}

    def describe(self) -> str:
        return "; ".join(p.describe() for p in self.params)

    def check(self, base: TrainConfig) -> None:
        """Every bound and choice, set on ``base`` (the study's config), gives a config the harness
        accepts and a model the registry builds.

        Raises:
            ConfigError: naming the space, the field and the value.
        """
        import torch

        from zoo.factory import create_model  # building on the meta device allocates nothing

        entry = get_dataset(base.dataset)
        for param in self.params:
            for value in param.extremes:
                try:
                    cfg = apply(base, {param.key: value})
                    if param.key.startswith("overrides."):
                        with torch.device("meta"):
                            create_model(
                                cfg.model,
                                in_channels=entry.in_channels,
                                num_classes=len(entry.class_names),
                                **cfg.overrides,
                            )
                except (ConfigError, TypeError, ValueError) as err:
                    raise ConfigError(
                        f"search space {self.name!r}: {param.key}={value!r} is not a value {base.model} on "
                        f"{entry.name} can train with: {err}. Narrow the range in {SPACES_FILE.name}"
                    ) from err


def apply(base: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    """``base`` with the searched ``values`` set (``augment.X`` and ``overrides.X`` into their tables)."""
    fields = base.to_dict()
    for key, value in values.items():
        table, dot, name = key.partition(".")
        if dot:
            fields[table] = {**fields[table], name: value}
        else:
            fields[key] = value
    return TrainConfig.from_dict(fields)


def _searchable() -> dict[str, str]:
    """Searchable top-level fields and their declared kinds ("int", "float", "str", "bool")."""
    out = {}
    for f in dataclasses.fields(TrainConfig):
        kind = str(f.type).removesuffix(" | None")
        if f.name not in _NOT_SEARCHED and kind in ("int", "float", "str", "bool"):
            out[f.name] = kind
    return out


def _kind(key: str, origin: str) -> str:
    """The kind of a searched key; an unknown key fails with the closest names."""
    table, dot, name = key.partition(".")
    if dot and table == "overrides":
        return "any"  # checked against the model when a study is made
    if dot and table == "augment":
        kinds = {f.name: str(f.type) for f in dataclasses.fields(AugmentConfig)}
        if name in kinds:
            return kinds[name]
        raise ConfigError(
            f"{origin}: unknown augment key {name!r} {close_names([name], kinds)}; augment keys: "
            f"{', '.join(kinds)}"
        )
    searchable = _searchable()
    if not dot and key in searchable:
        return searchable[key]
    known = [*searchable, *(f"{t}.KEY" for t in _TABLES)]
    fixed = " (a study fixes it)" if key in _NOT_SEARCHED else ""
    raise ConfigError(
        f"{origin}: {key!r} cannot be searched{fixed} {close_names([key], searchable)}; searchable: "
        f"{', '.join(known)}"
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _param(key: str, spec: Any, origin: str) -> Param:
    where = f"{origin}: {key}"
    kind = _kind(key, origin)
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"{where} = {spec!r}: expected {{ low = ..., high = ... }} or {{ choices = [...] }}"
        )
    forms = ("low", "high", "log", "step", "choices")
    unknown = sorted(set(spec) - set(forms))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} {close_names(unknown, forms)}; a field is "
            "{ low, high [, log, step] } or { choices = [...] }"
        )
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            raise ConfigError(f"{where}: choices cannot be mixed with low/high/log/step; keep one form")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices = {choices!r} must be a non-empty list")
        if not all(isinstance(c, str | int | float | bool) for c in choices):
            raise ConfigError(f"{where}: choices = {choices!r} must be numbers, strings or booleans")
        return Param(key, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high (or give choices = [...])")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if kind in ("str", "bool"):
        raise ConfigError(f"{where}: a {kind} field takes choices = [...], not a range")
    if not (_number(low) and _number(high)) or not low < high:
        raise ConfigError(f"{where}: low = {low!r}, high = {high!r}: need two numbers with low < high")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log = {log!r} must be true or false")
    if log and low <= 0:
        raise ConfigError(f"{where}: log = true needs low > 0 (got {low!r}); raise low or drop log")
    if step is not None and (not _number(step) or step <= 0 or log):
        raise ConfigError(f"{where}: step = {step!r} must be a positive number, and not combined with log")
    integer = kind == "int"
    if integer and not all(isinstance(v, int) for v in (low, high, step or 1)):
        raise ConfigError(f"{where}: a whole-number field needs whole-number low, high and step")
    return Param(key, low=low, high=high, log=log, step=step, integer=integer)


def _space(name: str, table: Any, origin: str) -> SearchSpace:
    where = f"{origin}: space {name!r}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table with {', '.join(_META)}")
    unknown = sorted(set(table) - set(_META))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} {close_names(unknown, _META)}; a space has "
            f"{', '.join(_META)} (searched fields go under [{name}.params])"
        )
    missing = [k for k in _META if k not in table]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}")
    for key in ("models", "datasets"):
        value = table[key]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key} must be a non-empty list of names or patterns")
    params = table["params"]
    if not isinstance(params, Mapping) or not params:
        raise ConfigError(f"{where}: params must be a table of at least one searched field")
    return SearchSpace(
        name=name,
        description=str(table["description"]),
        models=tuple(table["models"]),
        datasets=tuple(table["datasets"]),
        params=tuple(_param(k, v, f"{where}") for k, v in params.items()),
    )


def load_spaces(path: str | Path = SPACES_FILE) -> dict[str, SearchSpace]:
    """Every space of a spaces file, in file order, each checked (module docstring).

    Raises:
        ConfigError: unreadable TOML or a bad space, naming the file, the space and the field.
    """
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: not a readable spaces file ({err})") from err
    return {name: _space(name, table, str(path)) for name, table in spec.items()}


@cache
def _builtin() -> dict[str, SearchSpace]:
    return load_spaces(SPACES_FILE)


def list_spaces() -> list[SearchSpace]:
    """The built-in spaces, in file order."""
    return list(_builtin().values())


def space_for(model: str, dataset: str, spaces: Mapping[str, SearchSpace] | None = None) -> SearchSpace:
    """The first space made for ``model`` on ``dataset`` (built-in spaces unless ``spaces`` is given).

    Raises:
        ConfigError: when none is, naming the spaces there are.
    """
    spaces = _builtin() if spaces is None else spaces
    for space in spaces.values():
        if space.applies_to(model, dataset):
            return space
    raise ConfigError(
        f"no search space is made for {model} on {get_dataset(dataset).name}; spaces: "
        f"{', '.join(f'{s.name} ({s.models} x {s.datasets})' for s in spaces.values()) or 'none'}. "
        f"Add one to {SPACES_FILE} or pass --space FILE"
    )

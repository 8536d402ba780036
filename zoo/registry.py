"""The model registry: one factory for every U-Net in the zoo.

Entry points are small functions decorated with :func:`register_model`; each states the arguments that
make its name what it is and hands them to :func:`build_model`, where all validation lives::

    @register_model(family="unet", paper=RONNEBERGER_2015)
    def unet(**kwargs: Any) -> UNet:
        return build_model(UNet, "unet", dict(padding="valid", norm=None), kwargs)

Width, depth, normalisation and the like are *overrides* of a name, never new names.

This module knows names and builders only: :func:`zoo.create_model` (in :mod:`zoo.factory`, above this
module and :mod:`zoo.weights`) builds a name and loads weights into it. The built-in families register
themselves when :mod:`zoo.models` is imported, which ``import zoo`` does; this module imports no model
file, so that the model files can import it.
"""

from __future__ import annotations

import collections.abc
import difflib
import fnmatch
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from torch import nn

from zoo.errors import ConfigError, ZooError, close_names

__all__ = [
    "ModelArgumentError",
    "ModelEntry",
    "UnknownModelError",
    "accepted_overrides",
    "build_model",
    "get_entry",
    "list_models",
    "register_model",
]

ModelFn = Callable[..., nn.Module]
M = TypeVar("M", bound=nn.Module)

# Arguments every model takes that are not overrides of its recipe.
_STRUCTURAL = ("in_channels", "num_classes")


class UnknownModelError(ZooError, KeyError):
    """Raised for a model name that is not registered. Subclasses KeyError (a failed lookup)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class ModelArgumentError(ZooError, TypeError):
    """A missing ``in_channels``/``num_classes``, an override the model does not take, or an argument of
    the wrong type (``attention="False"``). Subclasses TypeError, what Python raises for a bad keyword
    argument."""


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about a name without building the model."""

    name: str
    fn: ModelFn
    family: str
    paper: str
    summary: str
    reference_size: int
    """Input height and width at which the zoo states FLOPs (the paper's 572 tile for ``unet``)."""
    tiny: Mapping[str, Any] = field(default_factory=dict)
    """Overrides that make a fast, small instance of the same structure (smoke suite, tests)."""


_REGISTRY: dict[str, ModelEntry] = {}


@overload
def register_model(fn: ModelFn) -> ModelFn: ...


@overload
def register_model(
    fn: None = None,
    *,
    family: str = "custom",
    paper: str = "",
    reference_size: int = 512,
    tiny: Mapping[str, Any] | None = None,
) -> Callable[[ModelFn], ModelFn]: ...


def register_model(
    fn: ModelFn | None = None,
    *,
    family: str = "custom",
    paper: str = "",
    reference_size: int = 512,
    tiny: Mapping[str, Any] | None = None,
) -> ModelFn | Callable[[ModelFn], ModelFn]:
    """Register a model entry point under its function name.

    Usable bare (``@register_model``) or with metadata (``@register_model(family=..., paper=...)``).
    The entry point must accept ``in_channels`` and ``num_classes`` as keywords plus its overrides.

    Raises:
        ConfigError: if the name is already registered (a ValueError).
    """

    def decorate(entry_fn: ModelFn) -> ModelFn:
        name = entry_fn.__name__
        if name in _REGISTRY:
            previous = _REGISTRY[name].fn
            raise ConfigError(
                f"model name {name!r} is already registered "
                f"(by {previous.__module__}.{previous.__qualname__}); choose another name, "
                "or create the existing model with overrides instead"
            )
        doc = inspect.getdoc(entry_fn) or ""
        _REGISTRY[name] = ModelEntry(
            name=name,
            fn=entry_fn,
            family=family,
            paper=paper,
            summary=doc.splitlines()[0] if doc else "",
            reference_size=reference_size,
            tiny=dict(tiny or {}),
        )
        return entry_fn

    if fn is not None:
        return decorate(fn)
    return decorate


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell wildcard pattern (``"unet*"``), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``.

    Raises:
        UnknownModelError: naming the closest registered names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}; {hint}registered models: {', '.join(sorted(_REGISTRY))} "
            "(see `unet-zoo models`)"
        ) from None


def accepted_overrides(cls: type[nn.Module]) -> list[str]:
    """Keyword arguments of ``cls`` that a user may override (everything but the structural ones)."""
    params = inspect.signature(cls.__init__).parameters
    fixed = getattr(cls, "fixed_args", ())  # set by a registered name, not overridable
    return sorted(
        p.name
        for p in params.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.name not in ("self", *_STRUCTURAL, *fixed)
    )


def build_model(cls: type[M], name: str, recipe: Mapping[str, Any], kwargs: Mapping[str, Any]) -> M:
    """Build ``cls`` from a named recipe plus the caller's arguments; the one place arguments are checked.

    Args:
        cls: the model class; its keyword-only ``__init__`` parameters define the accepted overrides.
        name: the registered name (recorded on the model and used in messages).
        recipe: the arguments that define ``name`` (overridable).
        kwargs: ``in_channels``, ``num_classes`` and any overrides from the caller.

    Raises:
        ModelArgumentError: a missing ``in_channels``/``num_classes`` or an unknown override, listing what
            is accepted, or an argument whose type is not the one ``cls.__init__`` declares (a TypeError).
        ConfigError: a size argument outside ``cls.arg_ranges``, or sizes too large together (a
            ValueError); both are checked before anything is built or allocated.
    """
    accepted = accepted_overrides(cls)
    missing = [k for k in _STRUCTURAL if k not in kwargs]
    if missing:
        raise ModelArgumentError(
            f"{name}: missing required keyword argument(s) {missing}; e.g. "
            f"create_model({name!r}, in_channels=1, num_classes=2)"
        )
    unknown = sorted(k for k in kwargs if k not in accepted and k not in _STRUCTURAL)
    if unknown:
        raise ModelArgumentError(
            f"{name}: unknown override(s) {unknown}. {close_names(unknown, accepted)} "
            f"Accepted overrides: {', '.join(accepted)}"
        )
    args = {**recipe, **kwargs}
    _check_types(cls, name, args)
    _check_sizes(cls, name, args)
    model = cls(**args)
    # The fully resolved arguments (defaults included) travel with the model: checkpoints and run
    # records must rebuild it exactly even if a default changes later.
    bound = inspect.signature(cls).bind(**args)
    bound.apply_defaults()
    model.model_name = name  # type: ignore[assignment]
    model.model_args = {k: v for k, v in bound.arguments.items() if k not in _STRUCTURAL}  # type: ignore[assignment]
    return model


def _check_types(cls: type[nn.Module], name: str, args: Mapping[str, Any]) -> None:
    """Each argument has the type ``cls.__init__`` declares: ``attention="False"`` (a CLI string) would
    otherwise be truthy and build the gates, and ``base_channels=1e9`` would fail deep inside torch."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except NameError:  # an annotation its own module cannot resolve: such a class checks its arguments
        hints = {}
    for key, value in args.items():
        hint = hints.get(key)
        if hint is not None and not _has_type(value, hint):
            wanted = _describe(hint)
            fix = " (true or false on the command line)" if "a boolean" in wanted else ""
            raise ModelArgumentError(
                f"{name}: {key}={value!r} is {type(value).__name__}, expected {wanted}{fix}; "
                f"e.g. {key}={_example(cls, key)!r}"
            )


def _has_type(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # True is an int to Python, never a width or a count to a user
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin in (collections.abc.Sequence, list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return isinstance(value, list | tuple) and all(_has_type(v, item) for v in value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a hint this check does not model: the class checks it


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin in (collections.abc.Sequence, list, tuple):
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ')}s"
    names = {bool: "a boolean", int: "a whole number", float: "a number", str: "a string"}
    if hint is type(None):
        return "None"
    return names.get(hint, f"a {getattr(hint, '__name__', hint)}")


def _example(cls: type[nn.Module], key: str) -> Any:
    default = inspect.signature(cls).parameters[key].default
    if default is inspect.Parameter.empty:
        return 1
    return list(default) if isinstance(default, tuple) else default


def _check_sizes(cls: type[nn.Module], name: str, args: Mapping[str, Any]) -> None:
    """Widths, depths, channels and classes lie in ``cls.arg_ranges`` (each entry of a list of widths),
    and ``cls.size_problem`` finds nothing too large together: a hostile ``base_channels`` asks for tens
    of GB, which is refused here, before one parameter is allocated."""
    for key, (low, high) in getattr(cls, "arg_ranges", {}).items():
        value = args.get(key)
        values = value if isinstance(value, list | tuple) else [value]
        bad = [v for v in values if v is not None and not low <= v <= high]
        if bad:
            shown = f"{key}={value!r}"
            if isinstance(value, list | tuple):
                shown += f" (entry {bad[0]!r})"
            param = inspect.signature(cls).parameters.get(key)
            has_default = param is not None and param.default is not inspect.Parameter.empty
            hint = f" (default {_example(cls, key)!r})" if has_default else ""
            raise ConfigError(f"{name}: {shown} is out of range; use {low} to {high}{hint}")
    size_problem = getattr(cls, "size_problem", None)
    problem = size_problem(args) if size_problem is not None else None
    if problem:
        raise ConfigError(f"{name}: {problem}")

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

import difflib
import fnmatch
import inspect
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
    """A missing ``in_channels``/``num_classes`` or an override the model does not take. Subclasses
    TypeError, what Python raises for a bad keyword argument."""


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
            is accepted (a TypeError).
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
    model = cls(**args)
    # The fully resolved arguments (defaults included) travel with the model: checkpoints and run
    # records must rebuild it exactly even if a default changes later.
    bound = inspect.signature(cls).bind(**args)
    bound.apply_defaults()
    model.model_name = name  # type: ignore[assignment]
    model.model_args = {k: v for k, v in bound.arguments.items() if k not in _STRUCTURAL}  # type: ignore[assignment]
    return model

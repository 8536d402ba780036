"""The model registry: one factory for every U-Net in the zoo.

Entry points are small functions decorated with :func:`register_model`; each states the arguments that
make its name what it is and hands them to :func:`build_model`, where all validation lives::

    @register_model(family="unet", paper=RONNEBERGER_2015)
    def unet(**kwargs: Any) -> UNet:
        return build_model(UNet, "unet", dict(padding="valid", norm=None), kwargs)

Width, depth, normalisation and the like are *overrides* of a name, never new names.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

import torch
from torch import nn

__all__ = [
    "ModelEntry",
    "ModelInfo",
    "UnknownModelError",
    "accepted_overrides",
    "build_model",
    "create_model",
    "get_entry",
    "list_models",
    "model_info",
    "register_model",
]

ModelFn = Callable[..., nn.Module]
M = TypeVar("M", bound=nn.Module)

# Arguments every model takes that are not overrides of its recipe.
_STRUCTURAL = ("in_channels", "num_classes")


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered. Subclasses KeyError (a failed lookup)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


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
        ValueError: if the name is already registered.
    """

    def decorate(entry_fn: ModelFn) -> ModelFn:
        name = entry_fn.__name__
        if name in _REGISTRY:
            previous = _REGISTRY[name].fn
            raise ValueError(
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


def _ensure_builtin_models() -> None:
    # The built-in families register themselves on import; importing here (not at module top) keeps
    # zoo.registry importable from the model files without a cycle.
    import zoo.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell wildcard pattern (``"unet*"``), sorted."""
    _ensure_builtin_models()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``.

    Raises:
        UnknownModelError: naming the closest registered names.
    """
    _ensure_builtin_models()
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
        TypeError: a missing ``in_channels``/``num_classes`` or an unknown override, listing what is accepted.
    """
    accepted = accepted_overrides(cls)
    missing = [k for k in _STRUCTURAL if k not in kwargs]
    if missing:
        raise TypeError(
            f"{name}: missing required keyword argument(s) {missing}; e.g. "
            f"create_model({name!r}, in_channels=1, num_classes=2)"
        )
    unknown = sorted(k for k in kwargs if k not in accepted and k not in _STRUCTURAL)
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, accepted, n=1)
            if close:
                hints.append(f"{k!r} -> did you mean {close[0]!r}?")
        hint = (" " + "; ".join(hints)) if hints else ""
        raise TypeError(
            f"{name}: unknown override(s) {unknown}.{hint} Accepted overrides: {', '.join(accepted)}"
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


def create_model(
    name: str,
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    pretrained: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally with verified pretrained weights.

    Args:
        name: a name from :func:`list_models`.
        in_channels: channels of the input image (1 for ISBI EM slices, 3 for Carvana photos); required
            unless weights are loaded, which bring their own.
        num_classes: output channels; the model returns logits of shape ``(B, num_classes, H', W')``
            with ``(H', W') == model.output_size((H, W))``. Required unless weights are loaded.
        weights: a tag of ``name`` in the weights manifest (``unet-zoo weights list``) or a path to a
            unet-zoo ``.safetensors`` file; the file is verified (size, sha256) before it is loaded.
        pretrained: load the model's default weights (same as ``weights`` set to its default tag).
        **overrides: recipe changes such as ``base_channels=32`` or ``norm="group"``; with weights they
            must equal the weights' own arguments.

    Raises:
        UnknownModelError: unknown name (with the closest names).
        TypeError: unknown override (with the accepted ones).
        zoo.weights.WeightsMismatchError: weights that do not fit the name or arguments (with those that do).
    """
    if weights is not None or pretrained:
        from zoo.weights import create_pretrained  # imported here: zoo.weights imports this module

        return create_pretrained(name, weights, in_channels=in_channels, num_classes=num_classes, **overrides)
    entry = get_entry(name)
    structural = {
        k: v for k, v in (("in_channels", in_channels), ("num_classes", num_classes)) if v is not None
    }
    return entry.fn(**structural, **overrides)


@dataclass(frozen=True)
class ModelInfo:
    """A model's card, as ``unet-zoo info`` prints it."""

    name: str
    family: str
    paper: str
    summary: str
    in_channels: int
    num_classes: int
    params: int
    padding: str
    input_multiple: int
    min_input_size: int
    size_rule: str
    input_size: int
    output_size: int
    gflops: float
    arguments: dict[str, Any]
    overrides: list[str]


def model_info(
    name: str, *, in_channels: int = 1, num_classes: int = 2, input_size: int | None = None, **overrides: Any
) -> ModelInfo:
    """Describe a model without allocating its weights (it is built on the ``meta`` device).

    Parameters and FLOPs are stated for one ``in_channels x input_size x input_size`` image, with
    ``input_size`` defaulting to the entry's reference size (or the nearest size the model accepts).
    FLOPs count 2 per multiply-add of convolutions and matrix products.
    """
    # imported here: the model files import this module
    from zoo.cost import count_flops, count_parameters
    from zoo.models.base import SegmentationModel

    entry = get_entry(name)
    with torch.device("meta"):
        model = create_model(name, in_channels=in_channels, num_classes=num_classes, **overrides)
    model.to("meta")  # a few builders (smp's channel adaptation) create tensors on the CPU explicitly
    if not isinstance(model, SegmentationModel):
        raise TypeError(
            f"{name}: model_info needs a zoo.models.SegmentationModel, got {type(model).__name__}"
        )
    size = model.nearest_valid_input_size(input_size if input_size is not None else entry.reference_size)
    out = model.output_size(size)
    flops = count_flops(model, (1, in_channels, size, size))
    return ModelInfo(
        name=name,
        family=entry.family,
        paper=entry.paper,
        summary=entry.summary,
        in_channels=in_channels,
        num_classes=num_classes,
        params=count_parameters(model),
        padding=model.padding_mode,
        input_multiple=model.input_multiple,
        min_input_size=model.min_input_size,
        size_rule=model.size_rule(),
        input_size=size,
        output_size=out,
        gflops=flops / 1e9,
        arguments=dict(model.model_args),
        overrides=accepted_overrides(type(model)),
    )

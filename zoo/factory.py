"""The factory: ``zoo.create_model(name, weights=...)`` builds a registered model and loads verified weights.

It sits above the two modules it joins, which do not import each other, as timm's ``_factory`` sits
above ``_registry`` and ``_builder``:

* :mod:`zoo.registry`: names, their builders, and the one place arguments are checked;
* :mod:`zoo.weights`: the manifest, the download cache and safetensors files.

Everything that builds a model from weights lives here: by manifest tag or file path
(:func:`create_model`), from a manifest entry (:func:`load_entry`, :func:`build_model_with`), from
recorded arguments and tensors (:func:`model_from_state`); and :func:`model_info`, which builds a model
on the ``meta`` device to describe it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.cost import count_flops, count_parameters
from zoo.errors import ConfigError

# importing zoo.models registers the built-in families with zoo.registry
from zoo.models import SegmentationModel
from zoo.registry import ModelArgumentError, accepted_overrides, get_entry
from zoo.weights.errors import WeightsError, WeightsMismatchError
from zoo.weights.files import TrainingScale, read_weights
from zoo.weights.hub import fetch
from zoo.weights.manifest import WeightsEntry, find_weights, load_manifest

__all__ = ["ModelInfo", "build_model_with", "create_model", "load_entry", "model_from_state", "model_info"]


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
        name: a name from :func:`zoo.list_models`.
        in_channels: channels of the input image (1 for ISBI EM slices, 3 for Carvana photos); required
            unless weights are loaded, which bring their own.
        num_classes: output channels; the model returns logits of shape ``(B, num_classes, H', W')``
            with ``(H', W') == model.output_size((H, W))``. Required unless weights are loaded.
        weights: a tag of ``name`` in the weights manifest (``"isbi2012-w16-s0"`` or
            ``"unet_bn.isbi2012-w16-s0"``; see ``unet-zoo weights list``), or a path to a ``.safetensors``
            file written by unet-zoo; a manifest file is verified (size, sha256) before it is loaded.
            ``"hf-hub:ORG/REPO"`` or ``"hf-hub:ORG/REPO@REVISION"`` (a branch, tag or commit): a Hugging
            Face Hub repository published by unet-zoo (``unet-zoo weights publish RUN_ID --push-to-hub
            ORG/REPO``); its ``config.json`` and ``model.safetensors`` are fetched from one commit into
            huggingface_hub's cache (``HF_HOME``, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``HF_TOKEN``), and the
            weights are checked against the size and sha256 ``config.json`` records before they are loaded.
            ``"models:/NAME@ALIAS"`` or ``"models:/NAME/VERSION"``: a version of a model in MLflow's model
            registry (``unet-zoo register RUN_ID``), looked up in ``MLFLOW_TRACKING_URI``, else
            ``runs/mlflow.db`` of the current folder; only its weights file is downloaded, and verified
            against the size and sha256 the version records.
        pretrained: load the model's default weights (same as ``weights`` set to its default tag).
        **overrides: recipe changes such as ``base_channels=32`` or ``norm="group"``; with weights they
            must equal the weights' own arguments.

    Raises:
        UnknownModelError: unknown name (with the closest names).
        ModelArgumentError: unknown override (with the accepted ones); a TypeError.
        WeightsMismatchError: weights that do not fit the name or arguments (with those that do).
        WeightsError: a missing, corrupt or unverifiable weights file.
    """
    entry = get_entry(name)  # an unknown name fails here, with the closest names
    if weights is None and not pretrained:
        structural = {
            k: v for k, v in (("in_channels", in_channels), ("num_classes", num_classes)) if v is not None
        }
        return entry.fn(**structural, **overrides)
    if isinstance(weights, str) and weights.startswith(REMOTE_PREFIXES):
        path = fetch_remote(weights)  # downloaded and verified against its recorded size and sha256
        state, metadata = read_weights(path)
        checkpoint = _Checkpoint.from_file(path, metadata, name, in_channels, num_classes, label=weights)
    elif weights is not None and _looks_like_path(weights):
        path = Path(weights).expanduser()
        state, metadata = read_weights(path)
        checkpoint = _Checkpoint.from_file(path, metadata, name, in_channels, num_classes)
    else:
        found = find_weights(name, None if weights is None else str(weights))
        path = fetch(found)
        state, _ = read_weights(path)
        checkpoint = _Checkpoint.of(found)
    _check_fit(checkpoint, in_channels, num_classes, overrides)
    return _build(checkpoint, state, source=str(path))


def load_entry(entry: WeightsEntry, **fetch_options: Any) -> nn.Module:
    """The model of a manifest entry with its verified weights loaded (``fetch_options`` go to
    :func:`zoo.weights.fetch`): for entries of manifests other than the installed ones."""
    path = fetch(entry, **fetch_options)
    state, _ = read_weights(path)
    return build_model_with(entry, state, source=str(path))


def build_model_with(entry: WeightsEntry, state: Mapping[str, torch.Tensor], *, source: str) -> nn.Module:
    """Build ``entry.model`` with the entry's recorded arguments and load ``state`` strictly.

    Raises:
        WeightsMismatchError: arguments this version of the zoo cannot build, or tensors that do not fit.
    """
    return _build(_Checkpoint.of(entry), state, source=source)


def model_from_state(
    name: str,
    model_args: Mapping[str, Any],
    in_channels: int,
    num_classes: int,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
) -> nn.Module:
    """``name`` built with recorded (fully resolved) arguments and loaded strictly with ``state``.

    Recorded arguments are checked as a user's are (types, sizes), and the tensors' names, shapes and
    dtypes against a build on the ``meta`` device, before one parameter is allocated: a small file whose
    metadata claims ``base_channels=10**9`` is refused, not built.

    Raises:
        WeightsMismatchError: arguments this version of the zoo cannot build, or tensors that do not fit
            (missing, extra, of another shape, or of a dtype the model does not hold).
    """
    model_args = _recorded_arguments(model_args, source)
    try:
        with torch.device("meta"):
            # Pass only the arguments that the name lets a user change and that differ from its recipe.
            probe = create_model(name, in_channels=in_channels, num_classes=num_classes)
            accepted = set(accepted_overrides(type(probe)))
            recipe = _normalise(probe.model_args)
            stored = _normalise(dict(model_args))
            fixed_diff = sorted(k for k, v in stored.items() if k not in accepted and recipe.get(k, v) != v)
            if fixed_diff:
                raise WeightsMismatchError(
                    f"{source}: recorded arguments {fixed_diff} differ from what {name!r} fixes in this "
                    "version of unet-zoo; the weights belong to an incompatible model definition"
                )
            build = {k: model_args[k] for k in stored if k in accepted and recipe.get(k) != stored[k]}
            shaped = create_model(name, in_channels=in_channels, num_classes=num_classes, **build)
    except (ConfigError, ModelArgumentError) as err:
        raise WeightsMismatchError(
            f"{source}: the recorded model arguments cannot be built ({err}); the file's metadata is "
            "damaged or was not written by unet-zoo: export the weights again"
        ) from None
    shaped.to("meta")  # a few builders (smp's channel adaptation) create tensors on the CPU explicitly
    _check_tensors(shaped.state_dict(), state, name, model_args, source)
    model = create_model(name, in_channels=in_channels, num_classes=num_classes, **build)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as err:
        raise WeightsMismatchError(
            f"{source}: the tensors do not fit {_described(name, model_args)}: {err}"
        ) from None
    return model


STORED_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
"""Dtypes a floating-point tensor may be stored in (``save_weights(..., dtype=torch.float16)`` halves a
file): loading upcasts float16 and bfloat16 exactly. Others are refused rather than cast: float64 was not
written by unet-zoo, and an integer tensor in place of a float parameter is quantised or damaged."""


def _check_tensors(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    name: str,
    model_args: Mapping[str, Any],
    source: str,
) -> None:
    """``state`` has ``expected``'s names and shapes, and dtypes the model holds (or upcasts exactly)."""
    problems = []
    for label, keys in (
        ("missing", [k for k in expected if k not in state]),
        ("unexpected", [k for k in state if k not in expected]),
    ):
        if keys:
            problems.append(f"{len(keys)} {label} tensor(s) ({_first(keys)})")
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(t.shape)} in the model"
        for k, t in expected.items()
        if k in state and state[k].shape != t.shape
    ]
    if shapes:
        problems.append(f"{len(shapes)} of another shape ({_first(shapes)})")
    if problems:
        raise WeightsMismatchError(
            f"{source}: the tensors do not fit {_described(name, model_args)}: {'; '.join(problems)}"
        )
    for key, want in expected.items():
        got = state[key].dtype
        upcast = want.dtype.is_floating_point and got in STORED_FLOATS and got.itemsize <= want.dtype.itemsize
        if got != want.dtype and not upcast:
            kinds = ", ".join(
                str(d).removeprefix("torch.") for d in STORED_FLOATS if d.itemsize <= want.dtype.itemsize
            )
            allowed = kinds if want.dtype.is_floating_point else str(want.dtype).removeprefix("torch.")
            raise WeightsMismatchError(
                f"{source}: tensor {key!r} is stored as {str(got).removeprefix('torch.')}, but {name} holds "
                f"{str(want.dtype).removeprefix('torch.')} there (a file may store {allowed}); unet-zoo does "
                "not cast it. Save the weights again from the model (zoo.weights.save_weights, dtype=None "
                "or torch.float16)"
            )


def _first(items: list[str], n: int = 3) -> str:
    more = f", and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _described(name: str, model_args: Mapping[str, Any]) -> str:
    return f"{name} with " + ", ".join(f"{k}={v!r}" for k, v in sorted(model_args.items()))


def _recorded_arguments(model_args: object, source: str) -> dict[str, Any]:
    """Recorded model arguments as a dict, or the error that says they are not a table of them."""
    if not isinstance(model_args, Mapping) or not all(isinstance(k, str) for k in model_args):
        raise WeightsError(
            f"{source}: malformed metadata: model_args={model_args!r} is not a table of model arguments "
            '(e.g. {"base_channels": 16}); the file was not written by unet-zoo or is damaged: export it '
            "again"
        )
    return dict(model_args)


# -- weights into a model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Checkpoint:
    """What rebuilds a model from a weights file: from its manifest entry, or from the file's own
    metadata when the user points at a file (which has no manifest entry, and needs none)."""

    name: str
    """``MODEL.TAG``, recorded on the model as ``pretrained_weights``."""
    model: str
    model_args: Mapping[str, Any]
    in_channels: int
    num_classes: int
    training_scale: TrainingScale

    @classmethod
    def of(cls, entry: WeightsEntry) -> _Checkpoint:
        return cls(
            name=entry.name,
            model=entry.model,
            model_args=entry.model_args,
            in_channels=entry.in_channels,
            num_classes=entry.num_classes,
            training_scale=entry.training_scale,
        )

    @classmethod
    def from_file(
        cls,
        path: Path,
        metadata: Mapping[str, str],
        name: str,
        in_channels: int | None,
        num_classes: int | None,
        *,
        label: str | None = None,
    ) -> _Checkpoint:
        """A file's checkpoint, from the metadata :func:`zoo.weights.save_weights` wrote; channels and
        classes the file does not record come from the caller. ``label`` names it (``pretrained_weights``)
        where the file came from somewhere with a name of its own (``hf-hub:ORG/REPO``, ``models:/...``).

        Raises:
            WeightsMismatchError: the file holds another model's weights.
            WeightsError: not a unet-zoo file, malformed metadata, or channels/classes known to nobody.
        """
        stored = metadata.get("model_name")
        if not stored:
            raise WeightsError(
                f"{path}: no model_name in the file's metadata; it was not written by unet-zoo. Import it "
                "with `unet-zoo weights import` (milesial or smp checkpoints)"
            )
        if stored != name:
            raise WeightsMismatchError(
                f"{path} holds weights for model {stored!r}, not {name!r}; use create_model({stored!r}, ...)"
            )
        try:
            args = _recorded_arguments(json.loads(metadata.get("model_args", "{}")), str(path))
            recorded_in = int(metadata["in_channels"]) if "in_channels" in metadata else in_channels
            recorded_classes = int(metadata["num_classes"]) if "num_classes" in metadata else num_classes
        except ValueError as err:
            raise WeightsError(f"{path}: malformed metadata ({err})") from None
        if recorded_in is None or recorded_classes is None:
            raise WeightsError(
                f"{path}: the file does not record in_channels/num_classes; pass them to create_model"
            )
        return cls(
            name=label or f"{stored}.{path.stem}",
            model=stored,
            model_args=args,
            in_channels=recorded_in,
            num_classes=recorded_classes,
            training_scale=TrainingScale.from_record(metadata, origin=str(path)),
        )


def _build(checkpoint: _Checkpoint, state: Mapping[str, torch.Tensor], *, source: str) -> nn.Module:
    model = model_from_state(
        checkpoint.model,
        checkpoint.model_args,
        checkpoint.in_channels,
        checkpoint.num_classes,
        state,
        source=source,
    )
    model.pretrained_weights = checkpoint.name  # type: ignore[assignment]
    # beside the name, the scale predict brings inputs to (read as predict's scale="auto")
    model.training_scale = checkpoint.training_scale  # type: ignore[assignment]
    return model


REMOTE_PREFIXES = ("hf-hub:", "models:/")
"""Weights that name a place of their own rather than a manifest tag or a file: a Hugging Face Hub
repository (``hf-hub:ORG/REPO[@REVISION]``) or a version of a model in MLflow's model registry
(``models:/NAME@ALIAS``, ``models:/NAME/VERSION``)."""


def fetch_remote(spec: str) -> Path:
    """The local, verified ``model.safetensors`` of a :data:`REMOTE_PREFIXES` weights spec.

    Raises:
        WeightsError: unreachable, missing, or a file that fails its recorded size or sha256.
    """
    if spec.startswith("hf-hub:"):
        from zoo.weights.hf_hub import download

        return download(spec)
    # in zoo.weights, not the harness (which registers runs): importing zoo.harness imports this module
    from zoo.weights.mlflow_registry import download_registered

    return download_registered(spec)


def _looks_like_path(weights: str | Path) -> bool:
    text = str(weights)
    return isinstance(weights, Path) or text.endswith(".safetensors") or os.sep in text or "/" in text


def _normalise(value: Any) -> Any:
    # JSON round trip: tuples become lists, so recorded and requested arguments compare equal
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _check_fit(
    checkpoint: _Checkpoint, in_channels: int | None, num_classes: int | None, overrides: Mapping[str, Any]
) -> None:
    problems = []
    if in_channels is not None and in_channels != checkpoint.in_channels:
        problems.append(f"in_channels={in_channels} (weights: {checkpoint.in_channels})")
    if num_classes is not None and num_classes != checkpoint.num_classes:
        problems.append(f"num_classes={num_classes} (weights: {checkpoint.num_classes})")
    stored = _normalise(dict(checkpoint.model_args))
    for key, value in overrides.items():
        if key not in stored:
            problems.append(f"{key}={value!r} (not an argument of {checkpoint.model})")
        elif _normalise(value) != stored[key]:
            problems.append(f"{key}={value!r} (weights: {stored[key]!r})")
    if not problems:
        return
    try:
        fits = [e for e in load_manifest() if e.model == checkpoint.model]
    except WeightsError:
        fits = []
    choices = "; ".join(e.describe() for e in fits) or "none in the manifest"
    raise WeightsMismatchError(
        f"weights {checkpoint.name} do not fit the request: {', '.join(problems)}. Leave those arguments "
        f"out to get the weights' own, or pick a tag that fits. Tags for {checkpoint.model}: {choices}"
    )


# -- describing a model ---------------------------------------------------------------------------------


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

"""Import checkpoints written by other projects into zoo models.

Two formats are understood:

* **milesial/Pytorch-UNet** (:func:`import_milesial`): the ``.pth`` file its ``train.py`` writes, a
  ``torch.save`` of ``UNet(n_channels, n_classes, bilinear).state_dict()`` with one extra entry,
  ``"mask_values"``. Its network is the zoo's ``unet_bn`` (transposed-convolution up-sampling) or
  ``unet_bilinear`` at ``base_channels=64``, layer for layer, so the import renames keys and nothing else.
* **segmentation-models-pytorch** (:func:`import_smp`): a ``save_pretrained`` folder (``config.json``
  with ``_model_class`` and the constructor arguments, beside ``model.safetensors``), mapped onto the
  registered :class:`~zoo.models.SmpUNet` name with the same architecture and encoder.

:func:`import_checkpoint` picks between them from what is on disk. Every importer returns a zoo model
built by :func:`zoo.create_model` (so it carries ``model_name`` and ``model_args`` and can be saved like
any other zoo model), with the foreign weights loaded strictly, in eval mode.

Files are read without running code: ``torch.load(..., weights_only=True)`` and safetensors only.
"""

from __future__ import annotations

import inspect
import json
import logging
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from zoo.errors import ZooError
from zoo.factory import create_model
from zoo.models.base import SegmentationModel
from zoo.models.smp_unets import ARCHITECTURES, SmpUNet
from zoo.models.unet import UNet
from zoo.registry import accepted_overrides, get_entry, list_models

__all__ = [
    "MILESIAL_DEFAULT_MASK_VALUES",
    "CheckpointImportError",
    "CheckpointNotFoundError",
    "import_checkpoint",
    "import_milesial",
    "import_smp",
]

log = logging.getLogger(__name__)

SMP_CONFIG = "config.json"
SMP_WEIGHTS = "model.safetensors"
# milesial's predict.py falls back to this when a checkpoint has no "mask_values" (files written before
# train.py stored them, such as its released Carvana weights)
MILESIAL_DEFAULT_MASK_VALUES: list[Any] = [0, 1]

_FORMATS = (
    "a milesial/Pytorch-UNet train.py checkpoint (a .pth file: import_milesial), or a "
    "segmentation-models-pytorch save_pretrained folder (config.json + model.safetensors: import_smp)"
)


class CheckpointImportError(ZooError, ValueError):
    """A checkpoint that cannot be imported; the message names the file, says why and what to do."""


class CheckpointNotFoundError(ZooError, FileNotFoundError):
    """The checkpoint file or folder, or a file an smp folder needs, is not there. Subclasses
    FileNotFoundError (not CheckpointImportError: a class cannot be both a ValueError and an OSError)."""


# -- dispatch -----------------------------------------------------------------------------------------
def import_checkpoint(source: str | Path) -> SegmentationModel:
    """Import a foreign checkpoint, choosing the reader from what ``source`` is.

    A folder holding ``config.json`` is read as a segmentation-models-pytorch ``save_pretrained`` folder
    (:func:`import_smp`); a file as a milesial/Pytorch-UNet checkpoint (:func:`import_milesial`).

    Raises:
        CheckpointNotFoundError: ``source`` does not exist (a FileNotFoundError).
        CheckpointImportError: a folder without ``config.json``, a safetensors file, or anything the
            chosen reader rejects.
    """
    source = Path(source)
    if source.is_dir():
        if (source / SMP_CONFIG).is_file():
            return import_smp(source)
        raise CheckpointImportError(
            f"{source} is a folder without {SMP_CONFIG}, so it is no segmentation-models-pytorch "
            f"save_pretrained folder; importable are {_FORMATS}"
        )
    if not source.is_file():
        raise CheckpointNotFoundError(f"{source}: no such file or folder; importable are {_FORMATS}")
    if _is_safetensors(source):
        raise CheckpointImportError(
            f"{source} is a safetensors file, which holds tensors without the model that owns them. "
            "A zoo model file is read by zoo.weights (it records model_name and model_args); an smp "
            f"{SMP_WEIGHTS} needs the {SMP_CONFIG} beside it: pass the folder holding both instead"
        )
    return import_milesial(source)


def _is_safetensors(path: Path) -> bool:
    # 8-byte little-endian header length, then the JSON header; torch files start with "PK" or a pickle
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


# -- milesial/Pytorch-UNet ----------------------------------------------------------------------------
def import_milesial(path: str | Path) -> UNet:
    """Import a checkpoint written by milesial/Pytorch-UNet's ``train.py``.

    The architecture is read from the tensors: bilinear up-sampling when the decoder has no
    transposed-convolution weights (``up1.up.weight``), ``in_channels`` and the base width from the first
    convolution, ``num_classes`` from the 1x1 head, the depth from the ``down<k>`` blocks. The result is
    ``unet_bilinear`` or ``unet_bn`` with those arguments; it computes what milesial's
    ``UNet(n_channels, n_classes, bilinear)`` computes, ``(B, in_channels, H, W) -> (B, num_classes, H, W)``
    logits, odd sizes included.

    The returned model carries ``mask_values``, the list saved beside the weights:
    ``model.mask_values[i]`` is the value milesial's ``predict.py`` writes into the output mask image for
    class ``i`` (a grey level, or an ``[R, G, B]`` list for colour-coded masks); a one-class (sigmoid)
    model has ``[background, foreground]``. Files without the entry get
    :data:`MILESIAL_DEFAULT_MASK_VALUES` (``[0, 1]``), as ``predict.py`` assumes.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)``: plain tensors and
    Python containers only, never code. The model is returned in eval mode.

    Raises:
        CheckpointNotFoundError: ``path`` does not exist (a FileNotFoundError).
        CheckpointImportError: a truncated or corrupt file, a pickle that needs code to load, or a file
            that is not a milesial checkpoint (naming the missing and unexpected keys).
    """
    path = Path(path)
    state = _load_tensors_only(path)
    mask_values = state.pop("mask_values", None)
    if mask_values is None:
        log.info("%s has no mask_values; using milesial's default %s", path, MILESIAL_DEFAULT_MASK_VALUES)
        mask_values = list(MILESIAL_DEFAULT_MASK_VALUES)
    elif not isinstance(mask_values, list | tuple):
        raise CheckpointImportError(
            f"{path}: 'mask_values' is a {type(mask_values).__name__}, but milesial's train.py saves a list "
            "(one mask value per class, e.g. [0, 1] or [[0, 0, 0], [255, 0, 255]]); fix or remove that entry"
        )
    arch = _milesial_architecture(path, state)
    model = create_model(
        "unet_bilinear" if arch["bilinear"] else "unet_bn",
        in_channels=arch["in_channels"],
        num_classes=arch["num_classes"],
        base_channels=arch["base_channels"],
        depth=arch["depth"],
    )
    assert isinstance(model, UNet)
    ours = model.state_dict()
    zoo_key = {_milesial_key(k): k for k in ours}
    expected = {m: ours[k] for m, k in zoo_key.items()}
    what = f"milesial/Pytorch-UNet's UNet ({_describe_milesial(arch)})"
    _check_state(path, expected, state, what, _milesial_fix(state))
    model.load_state_dict({zoo_key[m]: t for m, t in state.items()}, strict=True)
    if len(mask_values) != max(2, arch["num_classes"]):
        log.warning(
            "%s: %d mask_values for %d class(es); milesial's predict.py expects %d",
            path,
            len(mask_values),
            arch["num_classes"],
            max(2, arch["num_classes"]),
        )
    model.mask_values = list(mask_values)  # type: ignore[assignment]
    log.info("imported %s as %s (%s)", path, model.model_name, _describe_milesial(arch))
    return model.eval()


def _load_tensors_only(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise CheckpointImportError(
            f"{path} is a folder; a milesial checkpoint is one .pth file (for a segmentation-models-pytorch "
            "save_pretrained folder use import_smp or import_checkpoint)"
        )
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err):
            needs = re.search(r"GLOBAL (\S+)", str(err))
            what = f" (it refers to {needs.group(1)})" if needs else ""
            raise CheckpointImportError(
                f"{path} is a pickle that needs Python code to be run to rebuild it{what}, so torch.load"
                "(weights_only=True) refused it: unet-zoo never unpickles code from a checkpoint. "
                "milesial's train.py writes only tensors and the 'mask_values' list. If you trust the file, "
                "load it yourself with weights_only=False and torch.save a plain dict of its tensors (plus "
                "'mask_values' as a list of ints or of [R, G, B] lists) to a new file, then import that"
            ) from err
        # torch reports damage as RuntimeError, EOFError, UnpicklingError or even KeyError, by where the
        # bytes go wrong
        raise CheckpointImportError(
            f"{path} ({path.stat().st_size} bytes) is not a readable PyTorch checkpoint: it is truncated, "
            f"corrupt or in another format ({type(err).__name__}: {_first_line(err)}). Copy or download it "
            f"again; importable are {_FORMATS}"
        ) from err
    if not isinstance(obj, Mapping):
        raise CheckpointImportError(
            f"{path} holds a {type(obj).__name__}, not a state dict; milesial's train.py saves a dict of "
            "tensors plus 'mask_values'"
        )
    return dict(obj)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no detail"


def _milesial_architecture(path: Path, state: Mapping[str, Any]) -> dict[str, Any]:
    first, head = state.get("inc.double_conv.0.weight"), state.get("outc.conv.weight")
    if not (isinstance(first, Tensor) and first.dim() == 4 and isinstance(head, Tensor) and head.dim() == 4):
        absent = [
            k for k, t in (("inc.double_conv.0.weight", first), ("outc.conv.weight", head)) if t is None
        ]
        problem = (
            f"it has no {' or '.join(absent)}" if absent else "its first or last convolution is no 4-D tensor"
        )
        raise CheckpointImportError(
            f"{path} is not a milesial/Pytorch-UNet checkpoint: {problem} (it holds {_some(state)}). "
            f"{_milesial_fix(state)}"
        )
    depth = 0
    while f"down{depth + 1}.maxpool_conv.1.double_conv.0.weight" in state:
        depth += 1
    return {
        "in_channels": int(first.shape[1]),
        "base_channels": int(first.shape[0]),
        "num_classes": int(head.shape[0]),
        # bilinear up-sampling has no weights; the transposed convolution does
        "bilinear": "up1.up.weight" not in state,
        "depth": depth or 4,  # none found: build milesial's 4 so the key check lists what is missing
    }


def _describe_milesial(arch: Mapping[str, Any]) -> str:
    up = "bilinear" if arch["bilinear"] else "transposed-conv"
    return (
        f"n_channels={arch['in_channels']}, n_classes={arch['num_classes']}, {up} up-sampling, "
        f"width {arch['base_channels']}, depth {arch['depth']}"
    )


def _milesial_fix(state: Mapping[str, Any]) -> str:
    # a training checkpoint that nests the state dict (with the optimiser beside it) is a common near miss
    for key, value in state.items():
        if isinstance(value, Mapping) and "inc.double_conv.0.weight" in value:
            return (
                f"The state dict seems to sit under the key {key!r}: torch.save that dict alone "
                "(with 'mask_values') and import the new file"
            )
    return f"Pass a file written by milesial's train.py; importable are {_FORMATS}"


def _milesial_key(zoo_key: str) -> str:
    """The milesial/Pytorch-UNet state-dict key holding the tensor of a zoo ``UNet`` key."""
    module, _, rest = zoo_key.partition(".")
    if module == "head":
        return f"outc.conv.{rest}"
    index, _, rest = rest.partition(".")
    if module == "encoder":
        level = int(index)
        return f"inc.double_conv.{rest}" if level == 0 else f"down{level}.maxpool_conv.1.double_conv.{rest}"
    if module == "decoder":
        block, _, rest = rest.partition(".")  # "up" (transposed conv) or "conv" (the double conv)
        inner = "conv.double_conv" if block == "conv" else block
        return f"up{int(index) + 1}.{inner}.{rest}"
    # unet_bn and unet_bilinear have no other parameters; a new one needs a mapping here
    raise AssertionError(f"zoo UNet key {zoo_key!r} has no milesial counterpart")


# -- segmentation-models-pytorch ----------------------------------------------------------------------
def import_smp(folder: str | Path) -> SmpUNet:
    """Import a segmentation-models-pytorch ``save_pretrained`` folder.

    ``config.json`` names the smp class (``_model_class``) and its constructor arguments; the zoo model is
    the registered name (family "smp") with that architecture and encoder, built with the folder's
    ``in_channels``, ``classes`` (as ``num_classes``) and the arguments :class:`SmpUNet` accepts as
    overrides (``encoder_depth``, ``decoder_channels``, ``decoder_attention_type``). Arguments it cannot
    represent are accepted only at smp's default value. The encoder is built with
    ``encoder_weights=None`` whatever the folder says (nothing is downloaded); ``model.safetensors``
    replaces every weight, loaded strictly into ``model.net``. For a timm encoder (``tu-``) a pretrained
    tag (``tu-efficientnet_b0.ra_in1k``) does not change the network, so it matches the untagged name.

    Returns the model in eval mode: ``(B, in_channels, H, W) -> (B, classes, H, W)`` logits.

    Raises:
        CheckpointNotFoundError: the folder, its ``config.json`` or its ``model.safetensors`` is missing
            (a FileNotFoundError).
        CheckpointImportError: an unreadable file, an smp class or encoder no zoo name covers (listing
            those that are), an argument the zoo's wrapper cannot represent, or weights that do not fit.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointNotFoundError(
            f"{folder}: no such folder; model.save_pretrained(folder) in segmentation-models-pytorch "
            f"writes {SMP_CONFIG} and {SMP_WEIGHTS} into one"
        )
    config_path, weights_path = folder / SMP_CONFIG, folder / SMP_WEIGHTS
    for needed in (config_path, weights_path):
        if not needed.is_file():
            found = sorted(p.name for p in folder.iterdir())
            fix = (
                "Save the model again with model.save_pretrained(folder), or copy the missing file beside it"
            )
            if needed == weights_path and "pytorch_model.bin" in found:
                # huggingface_hub before 0.21 saved a pickle; the zoo reads tensors from safetensors only
                fix = (
                    "This folder has the older pickled pytorch_model.bin: re-save it with a current smp, "
                    "smp.from_pretrained(folder).save_pretrained(new_folder), and import the new folder"
                )
            raise CheckpointNotFoundError(
                f"{folder} has no {needed.name}; an smp save_pretrained folder holds {SMP_CONFIG} and "
                f"{SMP_WEIGHTS} (found: {_some(found)}). {fix}"
            )
    config = _read_smp_config(config_path)

    model_class = config.pop("_model_class", None)
    architectures = {cls.__name__: arch for arch, cls in ARCHITECTURES.items()}
    if model_class is None:
        raise CheckpointImportError(
            f'{config_path} has no "_model_class", which smp\'s save_pretrained writes; add the smp class '
            f"it was saved from ({', '.join(sorted(architectures))})"
        )
    if model_class not in architectures:
        raise CheckpointImportError(
            f"{config_path}: _model_class={model_class!r} is not an smp class the zoo wraps; supported: "
            f"{', '.join(sorted(architectures))}"
        )
    architecture = architectures[model_class]
    smp_args = _with_smp_defaults(config, ARCHITECTURES[architecture])
    encoder = str(smp_args["encoder_name"])
    name = _registered_smp_name(config_path, model_class, architecture, encoder)
    overrides = _smp_overrides(config_path, model_class, smp_args, ARCHITECTURES[architecture])

    # read before building: a damaged file fails at once, not after the encoder is constructed
    try:
        tensors = load_file(weights_path, device="cpu")
    except SafetensorError as err:
        raise CheckpointImportError(
            f"{weights_path} is not a readable safetensors file ({err}); it is truncated or corrupt: "
            "save the model again with save_pretrained"
        ) from err
    model = create_model(
        name,
        in_channels=int(smp_args["in_channels"]),
        num_classes=int(smp_args["classes"]),
        encoder_weights=None,
        **overrides,
    )
    assert isinstance(model, SmpUNet)
    what = f"smp {model_class} with encoder {encoder!r} as {config_path} describes it"
    _check_state(
        weights_path, model.net.state_dict(), tensors, what, f"Check that {SMP_CONFIG} belongs to it"
    )
    model.net.load_state_dict(tensors, strict=True)
    log.info("imported %s as %s (%s)", folder, name, ", ".join(f"{k}={v!r}" for k, v in overrides.items()))
    return model.eval()


def _read_smp_config(config_path: Path) -> dict[str, Any]:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointImportError(
            f"{config_path} is not valid JSON ({err}); save the model again with save_pretrained"
        ) from err
    if not isinstance(config, dict):
        raise CheckpointImportError(
            f"{config_path} holds a JSON {type(config).__name__}, not the object of constructor arguments "
            "that save_pretrained writes"
        )
    return config


def _smp_defaults(smp_class: type) -> dict[str, Any]:
    params = inspect.signature(smp_class).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _with_smp_defaults(config: Mapping[str, Any], smp_class: type) -> dict[str, Any]:
    """The constructor arguments the folder's model was built with, smp's defaults filling the gaps."""
    args = {**_smp_defaults(smp_class), **config}
    legacy = args.pop("decoder_use_batchnorm", None)  # the spelling smp deprecated for decoder_use_norm
    if legacy is not None:
        args["decoder_use_norm"] = legacy
    # smp reads True as "batchnorm" and False as "identity"
    norm = args.get("decoder_use_norm")
    if norm is True or norm is False:
        args["decoder_use_norm"] = "batchnorm" if norm else "identity"
    return args


def _registered_smp_name(config_path: Path, model_class: str, architecture: str, encoder: str) -> str:
    # timm resolves "name.tag" to the network "name" with the tag's weights; the weights are replaced here
    wanted = (architecture, _untagged(encoder))
    table = _smp_names()
    if wanted in table:
        return table[wanted]
    supported = "; ".join(
        f"{name} ({ARCHITECTURES[arch].__name__}, encoder {enc!r})"
        for (arch, enc), name in sorted(table.items())
    )
    raise CheckpointImportError(
        f"{config_path}: no zoo model is registered for smp {model_class} with encoder {encoder!r}. "
        f"Registered smp models: {supported}. To import this one, register a name for it, e.g. "
        f"@register_model(family='smp') def my_unet(**kw): return build_model(SmpUNet, 'my_unet', "
        f"dict(architecture={architecture!r}, encoder_name={_untagged(encoder)!r}), kw)"
    )


def _untagged(encoder: str) -> str:
    return encoder.split(".", 1)[0] if encoder.startswith("tu-") else encoder


def _smp_names() -> dict[tuple[str, str], str]:
    """(architecture, encoder) -> registered name, for every name registered with family "smp"."""
    table: dict[tuple[str, str], str] = {}
    for name in list_models():
        if get_entry(name).family != "smp":
            continue
        # built on the meta device: only the recorded arguments are wanted, no weights are allocated
        with torch.device("meta"):
            model = create_model(name, in_channels=3, num_classes=1)
        if not isinstance(model, SmpUNet):
            continue  # family "smp" without the zoo's wrapper: nothing to map onto
        key = (str(model.model_args["architecture"]), _untagged(str(model.model_args["encoder_name"])))
        table.setdefault(key, name)
    return table


def _smp_overrides(
    config_path: Path, model_class: str, args: Mapping[str, Any], smp_class: type
) -> dict[str, Any]:
    """The folder's arguments as SmpUNet overrides; refuses those it cannot represent."""
    # structural, fixed by the registered name, or replaced by the saved weights
    handled = {"in_channels", "classes", "encoder_name", "encoder_weights"}
    defaults = _with_smp_defaults({}, smp_class)
    passable = (set(accepted_overrides(SmpUNet)) & set(defaults)) - handled
    overrides: dict[str, Any] = {}
    unsupported: list[str] = []
    for key, value in args.items():
        if key in handled or key.startswith("_"):  # smp's constructor drops "_" keys too
            continue
        if key in passable:
            overrides[key] = tuple(value) if isinstance(value, list) else value
        elif key not in defaults or not _json_equal(value, defaults[key]):
            unsupported.append(f"{key}={value!r}")
    if unsupported:
        hint = ""
        if any(u.startswith("activation=") for u in unsupported):
            hint = (
                ' Zoo models return logits: set "activation": null in the config (the weights do not '
                "change) and apply the activation to the model's output yourself."
            )
        representable = ", ".join(sorted(passable))
        raise CheckpointImportError(
            f"{config_path}: the smp {model_class} was built with {', '.join(unsupported)}, which the zoo's "
            f"SmpUNet cannot represent (it takes {representable}, and smp's defaults for everything "
            f"else).{hint}"
        )
    return overrides


def _json_equal(value: Any, default: Any) -> bool:
    def plain(x: Any) -> Any:
        return list(x) if isinstance(x, tuple) else x

    return bool(plain(value) == plain(default))


# -- shared -------------------------------------------------------------------------------------------
def _check_state(
    source: Path, expected: Mapping[str, Tensor], found: Mapping[str, Any], what: str, fix: str
) -> None:
    """Refuse, naming keys and shapes, a state dict that would not load strictly into ``expected``."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [
        f"{k} {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__} (expected "
        f"{tuple(expected[k].shape)})"
        for k, v in found.items()
        if k in expected and not (isinstance(v, Tensor) and v.shape == expected[k].shape)
    ]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        problems.append(f"missing keys: {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_some(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_some(wrong)}")
    raise CheckpointImportError(f"{source} does not match {what}; {'; '.join(problems)}. {fix}")


def _some(items: Iterable[str], limit: int = 6) -> str:
    items = list(items)
    if not items:
        return "nothing"
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more ({len(items)} in all)" if len(items) > limit else shown

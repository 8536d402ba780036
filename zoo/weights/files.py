"""Weights files: safetensors read and write, the metadata beside the tensors, the file's sha256.

A file written by :func:`save_weights` carries what rebuilds its model (``model_name``, ``model_args``,
``in_channels``, ``num_classes``) and whatever the caller adds (dataset, metrics, the training scale) as
safetensors metadata: strings, non-strings stored as JSON. Reading never executes code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from zoo.weights.errors import WeightsError

__all__ = ["CHUNK", "TrainingScale", "file_sha256", "read_metadata", "read_weights", "save_weights"]

CHUNK = 1 << 20
"""Bytes per read when hashing or downloading a file."""


def _size_pair(value: Any, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name}={value!r} is not null or [H, W] (two positive ints)")


@dataclass(frozen=True)
class TrainingScale:
    """The pixel scale weights were trained at: what ``unet-zoo predict`` brings its inputs to.

    The rule, defined here once: a run that resized its images (the training config's ``resize``,
    ``(H, W)``, aspect ratio not kept) made a model that expects every input resized to ``resize``;
    a run without one saw its images at their stored pixel scale, and its model expects inputs at that
    scale, whatever their size. ``image_size`` is the training images' ``(H, W)`` as the model saw them
    (``resize`` when there is one): nothing is resampled by it, it only lets predict warn about inputs
    far from the training images' size. Either may be None when it was not recorded.

    Recorded in a manifest entry's ``evaluation`` and in the metadata of the files the harness writes,
    both as :meth:`as_record` gives it; read back by :meth:`from_record`.
    """

    resize: tuple[int, int] | None = None
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        resize, image_size = _size_pair(self.resize, "resize"), _size_pair(self.image_size, "image_size")
        object.__setattr__(self, "resize", resize)
        object.__setattr__(self, "image_size", image_size or resize)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, origin: str = "weights") -> TrainingScale:
        """Read ``resize`` and ``image_size`` from a manifest entry's ``evaluation`` (lists) or a file's
        metadata (JSON text); absent keys are None.

        Raises:
            WeightsError: a value that is not null or ``[H, W]``, naming ``origin``.
        """
        values = {}
        try:
            for key in ("resize", "image_size"):
                value = record.get(key)
                if isinstance(value, str):
                    try:
                        value = json.loads(value)
                    except ValueError:
                        raise ValueError(f"{key}={value!r} is not JSON null or [H, W]") from None
                values[key] = value
            return cls(**values)
        except ValueError as err:
            raise WeightsError(f"{origin}: {err}; fix the manifest entry or re-publish the weights") from None

    def as_record(self) -> dict[str, list[int] | None]:
        """``{"resize": [H, W] | None, "image_size": [H, W] | None}``, as manifests and files store it."""
        return {
            "resize": list(self.resize) if self.resize else None,
            "image_size": list(self.image_size) if self.image_size else None,
        }


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def save_weights(
    model: nn.Module,
    path: str | Path,
    metadata: Mapping[str, Any] | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``model``'s state as safetensors with its name, arguments, channels and classes as metadata
    (plus ``metadata``; non-strings as JSON). Written to a temporary file and renamed: never half a file.
    ``dtype``: store the floating-point tensors in it (e.g. float16: half the size); loading casts them
    back to the model's dtype."""
    path = Path(path)
    meta = {
        "format": "unet-zoo",
        "model_name": str(getattr(model, "model_name", "")),
        "model_args": json.dumps(getattr(model, "model_args", {}), sort_keys=True),
    }
    for key in ("in_channels", "num_classes"):
        if hasattr(model, key):
            meta[key] = str(getattr(model, key))
    meta.update(
        {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in (metadata or {}).items()}
    )
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(state, str(tmp), metadata=meta)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file (never executes code).

    Raises:
        WeightsError: a missing, truncated or non-safetensors file, naming it.
    """
    return _read(Path(path), tensors=True)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file (model name and arguments, training scale ...), from its
    header alone.

    Raises:
        WeightsError: a missing or non-safetensors file, naming it.
    """
    return _read(Path(path), tensors=False)[1]


def _read(path: Path, *, tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return (load_file(str(path)) if tensors else {}), metadata
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({err}); it may be truncated — download it again "
            "(`unet-zoo weights download NAME.TAG`) or re-export it"
        ) from None

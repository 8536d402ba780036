"""Export a zoo model to ONNX or a ``torch.export`` program (``.pt2``), checked against PyTorch.

The size contract (:mod:`zoo.models.base`) decides the shapes an exported graph takes:

* a fixed size ``(H, W)`` (batch 1) must be one the model accepts; any other is refused with the nearest
  that works (:class:`zoo.models.InputSizeError`), before anything is traced;
* ``dynamic=True`` exports one graph for the batch and for every side ``H, W = offset + step * q``
  with ``q >= q_min`` (:class:`ExportShape`): ``step`` is the least common multiple of the contract's
  period (``input_multiple``) and the model's ``total_stride``, so every pooling divides exactly and the
  graph takes no size-dependent branch. ``q_min >= 2`` because ``torch.export`` gives the sizes 0 and 1
  of a dynamic dimension graphs of their own. The paper's ``unet``: ``188 + 16k`` (all of its sizes);
  padded U-Nets: multiples of 16 from 32; the smp models: multiples of 32 from 64.

The graph is traced once with :func:`torch.export.export`; a ``.pt2`` file is that program
(:func:`torch.export.save`), an ONNX file its translation by ``torch.onnx.export`` (the dynamo exporter,
weights inside the file). Before a file is moved into place it is loaded back and run (the loaded
``ExportedProgram``, or onnxruntime for ONNX) on seeded random inputs next to the PyTorch model; the
largest absolute difference of the logits must be within ``tolerance`` times the largest absolute logit
(at least 1): float32 rounding grows with the size of the values summed, and trained weights give
logits in the tens. A file that fails the check is
deleted, never left at the target path. Files are written to a temporary name beside the target and
renamed; an existing file is replaced only with ``force=True``.

ONNX needs the optional extra ``unet-zoo[export]`` (onnx, onnxscript, onnxruntime); they are imported only
when an ONNX file is asked for.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zoo.errors import ConfigError, ZooError
from zoo.models.base import SegmentationModel
from zoo.registry import get_entry

__all__ = [
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "ExportCheckError",
    "ExportError",
    "ExportReport",
    "ExportShape",
    "default_size",
    "export_model",
    "export_shape",
    "trace",
    "write_checked",
]

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")
"""``onnx``: an ONNX model (opset of the installed exporter), weights inside; ``pt2``: a
:func:`torch.export.save` archive, loaded with :func:`torch.export.load`."""

DEFAULT_TOLERANCE = 1e-3
"""Largest accepted absolute difference of the logits between the exported graph and PyTorch (float32).
Reordered float32 sums differ by about 1e-5 on these models; a wrong graph (a lost padding, a norm in
training mode) differs by far more than 1e-3."""

_SEED = 0  # the check's inputs are reproducible: the same file gives the same printed difference
_EXTRA = "pip install 'unet-zoo[export]'"


class ExportError(ZooError, RuntimeError):
    """An export that cannot start or finish: a missing optional package, a target file that exists."""


class ExportCheckError(ExportError):
    """The exported graph's outputs differ from PyTorch's by more than the tolerance (nothing written)."""

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ExportShape:
    """The input shapes an exported graph takes, ``(B, in_channels, H, W)``.

    Fixed: batch 1 at ``height x width`` only. Dynamic: any batch >= 1 and sides
    ``offset + step * q`` for ``q >= q_min`` (``height x width`` is then the size traced, with batch 2).
    """

    in_channels: int
    height: int
    width: int
    dynamic: bool = False
    step: int = 1
    offset: int = 0
    q_min: int = 0

    @property
    def min_side(self) -> int:
        """The smallest side a dynamic graph takes (a fixed graph: the smaller of its two)."""
        return self.offset + self.step * self.q_min if self.dynamic else min(self.height, self.width)

    def rule(self) -> str:
        """The accepted shapes in words, e.g. ``"(B, 1, H, W), B >= 1, H and W = 188 + 16k (k >= 0)"``."""
        if not self.dynamic:
            return f"(1, {self.in_channels}, {self.height}, {self.width})"
        return f"(B, {self.in_channels}, H, W), B >= 1, H and W = {self.min_side} + {self.step}k (k >= 0)"

    def example(self) -> tuple[int, int, int, int]:
        """The shape traced: the fixed shape, or batch 2 at ``height x width``."""
        return (2 if self.dynamic else 1, self.in_channels, self.height, self.width)

    def check_shapes(self) -> list[tuple[int, int, int, int]]:
        """The shapes the exported graph is checked at: the fixed one; or, dynamic, batch 1 at the smallest
        size and the traced shape (another batch, a non-square size)."""
        if not self.dynamic:
            return [self.example()]
        return [(1, self.in_channels, self.min_side, self.min_side), self.example()]


@dataclass(frozen=True)
class ExportReport:
    """What :func:`write_checked` did: the file, its format and shapes, the largest absolute difference
    of the logits against PyTorch over ``checked`` (input shapes), and the tolerance it was held to:
    ``tolerance`` of ``scale``, PyTorch's largest absolute logit (at least 1)."""

    path: Path
    format: str
    shape: ExportShape
    max_abs_diff: float
    tolerance: float
    checked: list[tuple[int, int, int, int]] = field(default_factory=list)
    size_bytes: int = 0
    seconds: float = 0.0
    detail: str = ""
    scale: float = 1.0

    @property
    def allowed(self) -> float:
        """The largest difference accepted: ``tolerance`` relative to the logits' scale."""
        return self.tolerance * self.scale

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.allowed

    def describe_tolerance(self) -> str:
        if self.scale == 1.0:
            return f"tolerance {self.tolerance:g}"
        return f"tolerance {self.tolerance:g} of the largest logit {self.scale:.3g}: {self.allowed:.3g}"


def export_shape(
    model: SegmentationModel, *, size: tuple[int, int] | None = None, dynamic: bool = False
) -> ExportShape:
    """The shapes to export ``model`` at: ``size`` ``(H, W)`` fixed, or dynamic (see the module doc).

    Raises:
        InputSizeError: ``size`` is not one the model takes (the message names the nearest valid size).
        ConfigError: both ``size`` and ``dynamic``, or a model that does not state its ``total_stride``.
    """
    if dynamic and size is not None:
        raise ConfigError("give either a fixed size or dynamic shapes, not both")
    if not dynamic:
        if size is None:
            raise ConfigError("give a size (H, W) to export at, or dynamic=True")
        h, w = (int(n) for n in size)
        model.output_size((h, w))  # the size contract's own check and message
        return ExportShape(model.in_channels, h, w)
    try:
        stride = model.total_stride
    except NotImplementedError:
        name = model.model_name or type(model).__name__
        raise ConfigError(
            f"{name} does not state its total_stride, which a dynamic-shape export needs; export it at "
            "a fixed size instead"
        ) from None
    step = math.lcm(model.input_multiple, stride)
    offset = model.min_input_size % step
    q_min = max(2, model.min_input_size // step)  # q >= 2: torch.export specialises the sizes 0 and 1
    h = offset + step * q_min
    return ExportShape(model.in_channels, h + step, h + 2 * step, True, step, offset, q_min)


def default_size(model: SegmentationModel) -> tuple[tuple[int, int], str]:
    """The fixed size to export ``model`` at when none is given, and where it comes from: the size of
    the images its weights were trained on (``model.training_scale``, set when weights are loaded), else
    its registry entry's reference size (572 for ``unet``, else 512); the nearest size the model takes."""
    scale = getattr(model, "training_scale", None)
    wanted = getattr(scale, "image_size", None)
    origin = "the weights' training images"
    if wanted is None:
        if not model.model_name:
            raise ConfigError(f"{type(model).__name__} is not a registered model: give the size to export at")
        reference = get_entry(model.model_name).reference_size
        wanted, origin = (reference, reference), "the model's reference size"
    h, w = (model.nearest_valid_input_size(int(n)) for n in wanted)
    return (h, w), origin


def trace(model: SegmentationModel, shape: ExportShape) -> torch.export.ExportedProgram:
    """``model`` (in eval mode, on the CPU in float32) traced by :func:`torch.export.export` at
    ``shape``: fixed, or with a dynamic batch and sides on ``shape``'s grid. The model is left as it was."""
    from torch.export import Dim

    example = torch.zeros(shape.example())
    dynamic_shapes = None
    if shape.dynamic:
        # sides as offset + step * q: the tracer then knows every pooling divides exactly
        height = shape.offset + shape.step * Dim("h", min=shape.q_min)
        width = shape.offset + shape.step * Dim("w", min=shape.q_min)
        dynamic_shapes = ({0: Dim("batch", min=1), 2: height, 3: width},)
    with _eval_on_cpu(model) as ready:
        return torch.export.export(ready, (example,), dynamic_shapes=dynamic_shapes)


def write_checked(
    program: torch.export.ExportedProgram,
    model: SegmentationModel,
    shape: ExportShape,
    path: str | Path,
    *,
    format: str,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
) -> ExportReport:
    """Write ``program`` (traced from ``model`` at ``shape`` by :func:`trace`) to ``path`` as ``format``,
    after checking the written file against ``model`` on seeded random inputs of every
    :meth:`ExportShape.check_shapes` shape.

    Raises:
        ExportCheckError: the largest difference is above ``tolerance`` (the file is deleted; the
            exception's ``report`` has the figures).
        ExportError: ``path`` exists and ``force`` is not set; ONNX without its packages.
        ConfigError: an unknown format.
    """
    fmt = _checked_format(format)
    path = Path(path)
    _refuse_existing(path, force)
    if fmt == "onnx":
        _import_onnx()
    path.parent.mkdir(parents=True, exist_ok=True)
    # ends in the format's suffix: torch.export.load warns about any other
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp.{fmt}"
    start = time.perf_counter()
    try:
        detail = _write(program, tmp, fmt, shape)
        inputs = _check_inputs(shape)
        with _eval_on_cpu(model) as ready, torch.no_grad():
            expected = [ready(x).numpy() for x in inputs]
        got = _run_file(tmp, fmt, inputs)
        diff = max(_max_abs_diff(g, e) for g, e in zip(got, expected, strict=True))
        report = ExportReport(
            path=path,
            format=fmt,
            shape=shape,
            max_abs_diff=diff,
            tolerance=tolerance,
            checked=[tuple(x.shape) for x in inputs],  # type: ignore[misc]
            size_bytes=tmp.stat().st_size,
            seconds=time.perf_counter() - start,
            detail=detail,
            scale=max(1.0, *(float(np.max(np.abs(e), initial=0.0)) for e in expected)),
        )
        if not report.ok:
            shapes = ", ".join(_shape_text(s) for s in report.checked)
            raise ExportCheckError(
                f"{path}: the exported {fmt} graph differs from PyTorch by up to {diff:.3g} "
                f"({report.describe_tolerance()}) on inputs {shapes}; nothing was written. Raise the "
                "tolerance if that difference is acceptable",
                report,
            )
        _move_into_place(tmp, path, force)
        log.debug("%s: %s, largest difference %.3g", path, shape.rule(), diff)
        return report
    finally:
        tmp.unlink(missing_ok=True)


def export_model(
    model: SegmentationModel,
    path: str | Path,
    *,
    format: str,
    size: tuple[int, int] | None = None,
    dynamic: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
) -> ExportReport:
    """Export ``model`` to ``path`` as ``format`` (``"onnx"`` or ``"pt2"``) at a fixed ``size`` ``(H, W)``
    (batch 1) or with ``dynamic`` batch and sides, check the file against PyTorch and move it into place.

    Everything that can be refused is refused before the model is traced: the format, a size the model
    cannot take, an existing file without ``force``, ONNX without its packages.

    Raises:
        InputSizeError: ``size`` is not accepted; the message names the nearest valid size.
        ExportCheckError: the exported graph's outputs differ from PyTorch's by more than ``tolerance``.
        ExportError: ``path`` exists and ``force`` is not set; ONNX without ``unet-zoo[export]``.
        ConfigError: an unknown format; both or neither of ``size`` and ``dynamic``.
    """
    fmt = _checked_format(format)
    shape = export_shape(model, size=size, dynamic=dynamic)
    _refuse_existing(Path(path), force)
    if fmt == "onnx":
        _import_onnx()
    program = trace(model, shape)
    return write_checked(program, model, shape, path, format=fmt, tolerance=tolerance, force=force)


# -- writing and reading back ---------------------------------------------------------------------------


def _write(program: torch.export.ExportedProgram, tmp: Path, fmt: str, shape: ExportShape) -> str:
    if fmt == "pt2":
        torch.export.save(program, tmp)
        return f"torch {torch.__version__.split('+')[0]}"
    example = torch.zeros(shape.example())
    onnx_program = torch.onnx.export(
        program,
        (example,),
        dynamo=True,
        input_names=["image"],
        output_names=["logits"],
        verbose=False,
    )
    if onnx_program is None:  # only the old TorchScript exporter returns nothing
        raise RuntimeError("torch.onnx.export returned no program")
    # one self-contained file: external data would be named after the temporary file
    onnx_program.save(tmp, external_data=False)
    opset = next((o.version for o in onnx_program.model_proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return f"opset {opset}"


def _run_file(path: Path, fmt: str, inputs: Sequence[Tensor]) -> list[np.ndarray]:
    if fmt == "pt2":
        module = torch.export.load(path).module()
        with torch.no_grad():
            return [module(x).numpy() for x in inputs]
    _, ort = _import_onnx()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x.numpy()})[0] for x in inputs]


def _check_inputs(shape: ExportShape) -> list[Tensor]:
    generator = torch.Generator().manual_seed(_SEED)
    return [torch.randn(s, generator=generator) for s in shape.check_shapes()]


def _max_abs_diff(got: np.ndarray, expected: np.ndarray) -> float:
    if got.shape != expected.shape:
        return math.inf  # a graph that returns another shape is as wrong as one can be
    return float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)), initial=0.0))


def _refuse_existing(path: Path, force: bool) -> None:
    if not force and path.exists():
        raise ExportError(f"{path} exists; choose another output file or replace it with force (--force)")


def _move_into_place(tmp: Path, path: Path, force: bool) -> None:
    tmp.chmod(0o644)
    if force:
        os.replace(tmp, path)
        return
    try:
        # a hard link fails if the target exists: a file that appeared during the export is kept
        os.link(tmp, path)
    except FileExistsError:
        raise ExportError(
            f"{path} appeared while exporting; choose another output file or replace it with --force"
        ) from None
    except OSError:  # a filesystem without hard links
        _refuse_existing(path, force)
        os.replace(tmp, path)


# -- helpers ---------------------------------------------------------------------------------------------


def _checked_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    return fmt


def _import_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``; onnxscript too, which ``torch.onnx.export`` needs."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(f"ONNX export needs onnx, onnxscript and onnxruntime ({err}): {_EXTRA}") from None
    return onnx, onnxruntime


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(n) for n in shape)


@contextlib.contextmanager
def _eval_on_cpu(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode on the CPU in float32 (a copy when it is elsewhere); its mode is restored."""
    params = list(model.parameters())
    ready = model
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
        ready = copy.deepcopy(model).to("cpu", torch.float32)
    was_training = model.training
    ready.eval()
    try:
        yield ready
    finally:
        model.train(was_training)

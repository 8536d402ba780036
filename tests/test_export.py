"""Export (zoo.export, `unet-zoo export`): every registered model to ONNX and torch.export at its smallest
sizes, the size contract deciding the shapes, dynamic shapes, the check against PyTorch, and the files.

Each exported file is also run here, outside the code under test (onnxruntime, torch.export.load), on an
input of its own and compared with the eager model."""

from __future__ import annotations

import copy
import functools
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.cli import main
from zoo.export import (
    DEFAULT_TOLERANCE,
    ExportCheckError,
    ExportError,
    export_model,
    export_shape,
    trace,
    write_checked,
)
from zoo.models import InputSizeError, SegmentationModel
from zoo.registry import get_entry, list_models

from .helpers import module_level_imports, tiny_model

ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")
_SHALLOW_SMP = {"encoder_depth": 3, "decoder_channels": (16, 8, 8)}


@pytest.fixture(scope="module", autouse=True)
def _onnx_tables_built_once() -> Iterator[None]:
    """torch.onnx.export builds its table of ATen-to-ONNX translations anew for every export (1.5 to 2 s
    here, a quarter of a small model's export); this module's exports share one. They register no custom
    translations, so the table is never changed. Where torch keeps it elsewhere, nothing is shared."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        yield
        return
    build = getattr(_registration.ONNXRegistry, "from_torchlib", None)
    if build is None:
        yield
        return
    patch = pytest.MonkeyPatch()
    patch.setattr(_registration.ONNXRegistry, "from_torchlib", staticmethod(functools.cache(build)))
    yield
    patch.undo()


def _onnx_outputs(path: Path, x: torch.Tensor) -> tuple[list[object], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    return list(inp.shape), session.run(None, {inp.name: x.numpy()})[0]


def _eager(model: SegmentationModel, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


def _no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", list_models())
def test_every_model_exports_to_onnx_and_pt2_matching_pytorch(name: str, tmp_path: Path) -> None:
    """One trace at the model's smallest size by a non-square one (a side off the pooling grid where the
    model allows it): the program (what a .pt2 file holds) run in memory, and its ONNX translation
    written, checked and run here. The ONNX translation is the main cost; writing and loading .pt2
    files is tested on unet_bn below (for the smp models it is 87 MB each way). The smp models export
    three of their encoder's five stages: the same kinds of layers, a tenth of the graph to translate."""
    model = tiny_model(name, **(_SHALLOW_SMP if get_entry(name).family == "smp" else {}))
    h = model.min_input_size
    size = (h, model.next_valid_input_size(h + 1))
    shape = export_shape(model, size=size)
    program = trace(model, shape)
    x = torch.randn(1, 1, *size)
    expected = _eager(model, x)
    assert expected.shape == (1, 2, *model.output_size(size))
    with torch.no_grad():
        np.testing.assert_allclose(program.module()(x).numpy(), expected, rtol=0, atol=DEFAULT_TOLERANCE)
    path = tmp_path / f"{name}.onnx"
    report = write_checked(program, model, shape, path, format="onnx")
    assert report.ok and report.max_abs_diff <= DEFAULT_TOLERANCE, report
    assert report.checked == [(1, 1, *size)] and report.size_bytes == path.stat().st_size
    dims, got = _onnx_outputs(path, x)
    assert dims == [1, 1, *size]  # a fixed graph: every dimension static
    np.testing.assert_allclose(got, expected, rtol=0, atol=DEFAULT_TOLERANCE)
    _no_temporaries(tmp_path)


def test_a_size_the_model_cannot_take_is_refused_with_the_nearest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The paper's unet takes 188 + 16k per side; anything else is refused before tracing, naming the
    nearest size that works, in the library and as one line from the command."""
    model = tiny_model("unet")
    assert export_shape(model, size=(188, 204)).rule() == "(1, 1, 188, 204)"
    with pytest.raises(InputSizeError, match=r"Nearest valid input: 188x332 \(output 4x148\)"):
        export_model(model, tmp_path / "unet.onnx", format="onnx", size=(190, 333))
    with pytest.raises(InputSizeError, match=r"takes sizes 188 \+ 16k .* Nearest valid input: 188x188"):
        export_shape(model, size=(100, 188))
    code = main(["export", "unet", "--weights", "none", "--format", "pt2", "--size", "572", "570"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert "input size 572x570 is not accepted" in err and "Nearest valid input: 572x572" in err
    assert list(tmp_path.iterdir()) == []


def test_dynamic_export_takes_any_batch_and_two_valid_sizes(tmp_path: Path) -> None:
    """A padded U-Net's dynamic graph: sides 32 + 16k, any batch; checked at two shapes by the export,
    run here at two more; a size off the grid is refused by the program's own guards. (ONNX's dynamic
    graphs, of every model: the slow test below.)"""
    model = tiny_model("unet_bn")
    shape = export_shape(model, dynamic=True)
    assert shape.rule() == "(B, 1, H, W), B >= 1, H and W = 32 + 16k (k >= 0)"
    assert shape.check_shapes() == [(1, 1, 32, 32), (2, 1, 48, 64)]
    path = tmp_path / "dynamic.pt2"
    report = export_model(model, path, format="pt2", dynamic=True)
    assert report.ok and report.checked == shape.check_shapes(), report
    loaded = torch.export.load(path).module()
    for x in (torch.randn(3, 1, 80, 32), torch.randn(1, 1, 64, 112)):
        with torch.no_grad():
            got = loaded(x).numpy()
        np.testing.assert_allclose(got, _eager(model, x), rtol=0, atol=DEFAULT_TOLERANCE)
    with pytest.raises(Exception, match="Guard failed"):
        loaded(torch.randn(1, 1, 40, 32))


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_model_exports_with_dynamic_shapes(name: str, tmp_path: Path) -> None:
    """Every model's dynamic graph in both formats (the paper's unet: 188 + 16k, all of its sizes); the
    ONNX graph's batch and sides are symbolic, and it runs at a third shape."""
    model = tiny_model(name)
    shape = export_shape(model, dynamic=True)
    if name == "unet":
        assert shape.rule() == "(B, 1, H, W), B >= 1, H and W = 188 + 16k (k >= 0)"
    program = trace(model, shape)
    for fmt in ("pt2", "onnx"):
        report = write_checked(program, model, shape, tmp_path / f"{name}.{fmt}", format=fmt)
        assert report.ok and len(report.checked) == 2, report
    x = torch.randn(3, 1, shape.min_side + 3 * shape.step, shape.min_side)
    dims, got = _onnx_outputs(tmp_path / f"{name}.onnx", x)
    assert all(isinstance(d, str) for d in (dims[0], dims[2], dims[3])) and dims[1] == 1, dims
    np.testing.assert_allclose(got, _eager(model, x), rtol=0, atol=DEFAULT_TOLERANCE)


def test_a_graph_that_differs_from_pytorch_is_not_written(tmp_path: Path) -> None:
    model = tiny_model("unet_bn")
    shape = export_shape(model, size=(16, 24))
    program = trace(model, shape)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.bias.add_(0.5)  # type: ignore[operator]
    path = tmp_path / "unet_bn.pt2"
    with pytest.raises(ExportCheckError, match=r"differs from PyTorch by up to 0\.5 .* nothing was written"):
        write_checked(program, other, shape, path, format="pt2")
    assert list(tmp_path.iterdir()) == []
    # the same program against its own model: written; again only with force
    write_checked(program, model, shape, path, format="pt2")
    first = path.read_bytes()
    with pytest.raises(ExportError, match="exists; choose another output file or replace it with force"):
        write_checked(program, model, shape, path, format="pt2")
    assert path.read_bytes() == first
    assert write_checked(program, model, shape, path, format="pt2", force=True).ok
    _no_temporaries(tmp_path)


def test_cli_exports_shipped_weights_and_keeps_an_existing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end: a shipped file by its manifest name, to ONNX; the command's three lines; a second
    run does not overwrite the file."""
    out = tmp_path / "isbi.onnx"
    argv = ["export", "unet_bn", "--weights", "unet_bn.isbi2012-w16-s0", "--format", "onnx"]
    argv += ["--size", "64", "48", "--out", str(out)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"unet_bn.isbi2012-w16-s0 -> {out} (onnx, opset ")
    assert lines[1] == "input: (1, 1, 64, 48); the size rule of unet_bn: any size >= 16 per side"
    assert lines[2].startswith("check: onnxruntime vs PyTorch on seeded random input(s) 1x1x64x48: ")
    found = re.search(r"largest absolute difference (\S+) \(tolerance ([^)]+)\)$", lines[2])
    assert found, lines[2]
    allowed = found[2].split(": ")[-1]  # "0.001", or "0.001 of the largest logit 12.3: 0.0123"
    assert float(found[1]) <= float(allowed) and found[2].startswith(f"{DEFAULT_TOLERANCE:g}")
    from zoo.factory import create_model

    x = torch.randn(1, 1, 64, 48)
    model = create_model("unet_bn", weights="isbi2012-w16-s0")
    assert isinstance(model, SegmentationModel)
    dims, got = _onnx_outputs(out, x)
    assert dims == [1, 1, 64, 48]
    np.testing.assert_allclose(got, _eager(model, x), rtol=0, atol=DEFAULT_TOLERANCE)
    written = out.read_bytes()
    assert main(argv) == 2
    assert f"{out} exists" in capsys.readouterr().err
    assert out.read_bytes() == written


def test_the_tolerance_is_relative_to_the_logits_scale_above_one(tmp_path: Path) -> None:
    """Trained weights give logits in the tens, and float32 rounding grows with them: an smp model's
    ONNX graph differed by 0.003 at logits near 30 (a relative 1e-4) and was refused."""
    from zoo.export import ExportReport, ExportShape

    shape = ExportShape(in_channels=3, height=64, width=64)
    small = ExportReport(tmp_path, "onnx", shape, max_abs_diff=0.003, tolerance=1e-3, scale=1.0)
    large = ExportReport(tmp_path, "onnx", shape, max_abs_diff=0.003, tolerance=1e-3, scale=30.0)
    assert not small.ok and small.describe_tolerance() == "tolerance 0.001"
    assert large.ok and large.describe_tolerance() == "tolerance 0.001 of the largest logit 30: 0.03"


def test_cli_check_failure_exits_1_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The random model by --weights none; a graph whose outputs are off (as if the exporter erred)."""
    import zoo.export

    real = zoo.export._run_file
    monkeypatch.setattr(zoo.export, "_run_file", lambda *a: [y + 0.01 for y in real(*a)])
    out = tmp_path / "random.pt2"
    argv = ["export", "unet_bn", "--weights", "none", "--format", "pt2", "--size", "16", "16"]
    assert main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "largest absolute difference 0.01 (tolerance 0.001)" in err
    assert "differs from PyTorch by up to 0.01 (tolerance 0.001)" in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []


def test_onnx_packages_stay_an_optional_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No module of the zoo imports them at import time; ONNX without them says how to install them,
    before anything is traced."""
    for path, names in module_level_imports():
        assert not any(n.split(".")[0] in ONNX_MODULES for n in names), f"{path}: {names}"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ExportError, match=r"ONNX export needs .*: pip install 'unet-zoo\[export\]'"):
        export_model(tiny_model("unet_bn"), tmp_path / "m.onnx", format="onnx", size=(16, 16))
    assert list(tmp_path.iterdir()) == []

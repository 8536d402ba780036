"""Hostile model arguments and weights files (issue 26, round two): each is refused with one line that
names the value and the fix, before anything of the claimed size is built.

* overrides of the wrong type (``attention="False"`` from a command line) and the CLI's booleans;
* sizes out of range (``base_channels=10**9``), with the range in the message;
* weights stored in a dtype the model does not hold (int8, float64), while float16/bfloat16 files load;
* files whose metadata claims arguments that are malformed, out of range or unlike their tensors.

Models whose arguments are refused are requested on the ``meta`` device where the test is of the check
itself: should the check ever be lost, the test fails instead of allocating tens of GB.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

from zoo.cli import _key_values, main
from zoo.errors import ConfigError, ZooError
from zoo.factory import create_model
from zoo.models import AttentionGate, SegmentationModel
from zoo.registry import ModelArgumentError, get_entry, list_models
from zoo.weights.errors import WeightsError, WeightsMismatchError
from zoo.weights.files import save_weights

# -- case 1: types, and the CLI's booleans ----------------------------------------------------------


def test_cli_reads_python_booleans_and_none_as_json_does() -> None:
    parsed = _key_values(
        ["attention=False", "grad_checkpointing=True", "encoder_weights=None", "a=false", "n=16", "w=no"],
        "--override",
    )
    assert parsed == {
        "attention": False,
        "grad_checkpointing": True,
        "encoder_weights": None,
        "a": False,
        "n": 16,
        "w": "no",
    }


@pytest.mark.parametrize(("text", "gates"), [("False", 0), ("false", 0), ("True", 4), ("true", 4)])
def test_attention_override_from_the_command_line_means_the_boolean(text: str, gates: int) -> None:
    overrides: dict[str, Any] = _key_values([f"attention={text}", "base_channels=4"], "--override")
    with torch.device("meta"):
        model = create_model("unet_bn", in_channels=1, num_classes=2, **overrides)
    assert isinstance(model, SegmentationModel)
    assert sum(isinstance(m, AttentionGate) for m in model.modules()) == gates
    assert model.model_args["attention"] is bool(gates)


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("unet_bn", {"attention": "False"}, "attention='False' is str, expected a boolean"),
        ("unet_bn", {"attention": "<img src=x onerror=alert(1)>"}, "attention='<img src=x"),
        ("unet_bn", {"grad_checkpointing": "no"}, "grad_checkpointing='no' is str, expected a boolean"),
        ("unet_bn", {"attention": 1}, "attention=1 is int, expected a boolean"),
        ("unet_bn", {"base_channels": 1e9}, r"base_channels=1000000000.0 is float, expected a whole number"),
        ("unet_bn", {"base_channels": True}, "base_channels=True is bool, expected a whole number"),
        ("unet_bn", {"depth": "4"}, r"depth='4' is str, expected a whole number; e.g. depth=4"),
        ("unet_bn", {"dropout": "0.1"}, r"dropout='0.1' is str, expected a number; e.g. dropout=0.0"),
        ("unet_bn", {"norm": 3}, "norm=3 is int, expected a string or None"),
        ("unet_bn", {"num_classes": 2.0}, "num_classes=2.0 is float, expected a whole number"),
        ("unet_resnet34", {"encoder_depth": "5"}, "encoder_depth='5' is str, expected a whole number"),
        ("unet_resnet34", {"decoder_channels": "abcde"}, "decoder_channels='abcde' is str, expected a list"),
        (
            "unet_resnet34",
            {"decoder_channels": [1e9] * 5},
            r"decoder_channels=\[1000000000.0, .*\] is list, expected a list of whole numbers; "
            r"e\.g\. decoder_channels=\[256, 128, 64, 32, 16\]",
        ),
        ("unet_resnet34", {"encoder_weights": 3}, "encoder_weights=3 is int, expected a string or None"),
        ("unet_resnet34", {"grad_checkpointing": "yes"}, "grad_checkpointing='yes' is str, expected a"),
    ],
)
def test_overrides_of_the_wrong_type_are_refused_by_name(
    name: str, overrides: dict[str, Any], message: str
) -> None:
    args = {"in_channels": 1, "num_classes": 2, **overrides}
    with torch.device("meta"), pytest.raises(ModelArgumentError, match=f"^{name}: {message}") as err:
        create_model(name, **args)
    assert isinstance(err.value, ZooError) and "\n" not in str(err.value)


def test_a_bad_override_fails_the_train_command_in_one_line_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "work"
    for override, message in [
        ("attention=nope", "unet_bn: attention='nope' is str, expected a boolean (true or false"),
        ("base_channels=1e9", "unet_bn: base_channels=1000000000.0 is float, expected a whole number"),
        ("base_channels=100000", "unet_bn: base_channels=100000 is out of range; use 2 to 256 (default 64)"),
    ]:
        argv = ["train", "--model", "unet_bn", "--dataset", "isbi2012", "--workdir", str(workdir)]
        assert main([*argv, "--override", override]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"unet-zoo: error: {message}")
        assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not workdir.exists()


# -- case 2: sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("unet_bn", {"base_channels": 10**9}, r"base_channels=1000000000 is out of range; use 2 to 256 \("),
        ("unet_bn", {"base_channels": 1}, r"base_channels=1 is out of range; use 2 to 256 \(default 64\)"),
        ("unet", {"depth": 7}, r"depth=7 is out of range; use 1 to 6 \(default 4\)"),
        ("unet_bn", {"num_classes": 10**9}, "num_classes=1000000000 is out of range; use 1 to 1024"),
        ("unet_bn", {"in_channels": 0}, "in_channels=0 is out of range; use 1 to 1024"),
        (
            "attention_unet",
            {"base_channels": 256, "depth": 6},
            r"base_channels=256 with depth=6 makes a widest level of 16384 channels; keep "
            r"base_channels \* 2\*\*depth at most 4096 \(base_channels <= 64 at depth 6\)",
        ),
        ("unet_resnet34", {"encoder_depth": 9}, r"encoder_depth=9 is out of range; use 3 to 5 \(default 5\)"),
        (
            "unetpp_resnet34",
            {"decoder_channels": [256, 128, 10**9, 32, 16]},
            r"decoder_channels=\[256, 128, 1000000000, 32, 16\] \(entry 1000000000\) is out of range; "
            r"use 1 to 1024",
        ),
    ],
)
def test_sizes_out_of_range_are_refused_with_the_range(
    name: str, overrides: dict[str, Any], message: str
) -> None:
    args = {"in_channels": 1, "num_classes": 2, **overrides}
    with torch.device("meta"), pytest.raises(ConfigError, match=f"^{name}: {message}"):
        create_model(name, **args)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_passes_the_checks_at_its_defaults_and_smoke_size(name: str) -> None:
    with torch.device("meta"):
        create_model(name, in_channels=3, num_classes=2)
        model = create_model(name, in_channels=1, num_classes=5, **get_entry(name).tiny)
    assert model.model_args  # resolved arguments still recorded


def test_the_largest_sizes_in_range_still_build() -> None:
    with torch.device("meta"):
        wide = create_model("unet_bn", in_channels=1024, num_classes=1024, base_channels=256, depth=4)
        deep = create_model("unet", in_channels=1, num_classes=2, base_channels=64, depth=6)
    assert isinstance(wide, SegmentationModel) and isinstance(deep, SegmentationModel)
    assert wide.model_args["base_channels"] == 256 and deep.model_args["depth"] == 6


# -- case 3: dtypes of stored tensors -----------------------------------------------------------------


@pytest.fixture
def small() -> nn.Module:
    torch.manual_seed(0)
    return create_model("unet_bn", in_channels=1, num_classes=2, base_channels=4, depth=1)


def _metadata(model: nn.Module, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "reference.safetensors"
    save_weights(model, path)
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_float32_and_half_precision_files_load_upcast(
    small: nn.Module, tmp_path: Path, dtype: torch.dtype
) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(small, path, dtype=None if dtype == torch.float32 else dtype)
    loaded = create_model("unet_bn", weights=path)
    for key, tensor in loaded.state_dict().items():
        original = small.state_dict()[key]
        assert tensor.dtype == original.dtype, key
        expected = original.to(dtype).to(original.dtype) if original.is_floating_point() else original
        assert torch.equal(tensor, expected), key


@pytest.mark.parametrize(
    ("dtype", "key", "message"),
    [
        (torch.int8, "encoder.0.0.weight", "is stored as int8, but unet_bn holds float32 there"),
        (torch.int32, "encoder.0.0.weight", "is stored as int32, but unet_bn holds float32 there"),
        (torch.float64, "encoder.0.0.weight", "is stored as float64, but unet_bn holds float32 there"),
        (torch.float32, "encoder.0.1.num_batches_tracked", "is stored as float32, but unet_bn holds int64"),
        (
            torch.int8,
            "encoder.0.1.num_batches_tracked",
            r"is stored as int8, but unet_bn holds int64 there \(",
        ),
    ],
)
def test_tensors_of_a_dtype_the_model_does_not_hold_are_refused(
    small: nn.Module, tmp_path: Path, dtype: torch.dtype, key: str, message: str
) -> None:
    state = {k: v.detach().clone() for k, v in small.state_dict().items()}
    state[key] = state[key].to(dtype)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path), metadata=_metadata(small, tmp_path))
    with pytest.raises(WeightsMismatchError, match=f"{path}: tensor '{key}' {message}") as err:
        create_model("unet_bn", weights=path)
    assert "does not cast it" in str(err.value) and "\n" not in str(err.value)


# -- case 4: metadata that claims another model ---------------------------------------------------------


@pytest.fixture
def parameters_off_meta() -> Iterator[list[tuple[str, int]]]:
    """Each parameter registered off the ``meta`` device while the fixture is active (name, size)."""
    created: list[tuple[str, int]] = []

    def record(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            created.append((name, param.numel()))

    handle = register_module_parameter_registration_hook(record)
    try:
        yield created
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (
            {"model_args": {"base_channels": 10**9, "depth": 1}},
            WeightsMismatchError,
            r"cannot be built \(unet_bn: base_channels=1000000000 is out of range; use 2 to 256",
        ),
        (
            {"num_classes": "1000000000"},
            WeightsMismatchError,
            "num_classes=1000000000 is out of range; use 1 to",
        ),
        ({"in_channels": "1e9"}, WeightsError, "malformed metadata"),
        (
            {"model_args": {"base_channels": 1e9, "depth": 1}},
            WeightsMismatchError,
            "base_channels=1000000000.0 is float, expected a whole number",
        ),
        (
            {"model_args": {"base_channels": 4, "depth": 1, "attention": "False"}},
            WeightsMismatchError,
            "attention='False' is str, expected a boolean",
        ),
        ({"model_args": [1, 2]}, WeightsError, r"malformed metadata: model_args=\[1, 2\] is not a table"),
        ({"model_args": "abc"}, WeightsError, "malformed metadata: model_args='abc' is not a table"),
        # in range, and 500M parameters (2 GB) if built: refused on the meta build's shapes
        (
            {"model_args": {"base_channels": 256, "depth": 4}},
            WeightsMismatchError,
            r"the tensors do not fit unet_bn with base_channels=256, depth=4: \d+ missing tensor\(s\) "
            r"\(.*\); \d+ of another shape \(encoder.0.0.weight: \(4, 1, 3, 3\) in the file, "
            r"\(256, 1, 3, 3\) in the model",
        ),
        (
            {"num_classes": "1000"},
            WeightsMismatchError,
            r"2 of another shape \(head.weight: \(2, 4, 1, 1\) in the file, \(1000, 4, 1, 1\) in the model, "
            r"head.bias: \(2,\) in the file, \(1000,\) in the model\)",
        ),
    ],
)
def test_hostile_metadata_is_refused_before_anything_of_its_size_is_built(
    small: nn.Module,
    tmp_path: Path,
    parameters_off_meta: list[tuple[str, int]],
    changes: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    metadata = _metadata(small, tmp_path)
    metadata.update(
        {k: v if isinstance(v, str) and k != "model_args" else json.dumps(v) for k, v in changes.items()}
    )
    path = tmp_path / "hostile.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(path), metadata=metadata)
    parameters_off_meta.clear()
    with pytest.raises(error, match=message) as err:
        create_model("unet_bn", weights=path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    assert parameters_off_meta == []  # the error came before the real build


def test_a_faithful_file_builds_once_off_meta(
    small: nn.Module, tmp_path: Path, parameters_off_meta: list[tuple[str, int]]
) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(small, path)
    parameters_off_meta.clear()
    model = create_model("unet_bn", weights=path)
    assert sorted(parameters_off_meta) == sorted(
        (n.rsplit(".", 1)[1], p.numel()) for n, p in model.named_parameters()
    )

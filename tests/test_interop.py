"""Importing other projects' checkpoints, checked against independent builds of those projects' models."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, TypeVar

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from zoo import create_model
from zoo.errors import ZooError
from zoo.interop import (
    MILESIAL_DEFAULT_MASK_VALUES,
    CheckpointImportError,
    CheckpointNotFoundError,
    import_checkpoint,
    import_milesial,
    import_smp,
)
from zoo.models import SmpUNet, UNet

SmpModel = TypeVar("SmpModel", bound=smp.base.SegmentationModel)


# -- milesial/Pytorch-UNet, restated for the test -----------------------------------------------------
# Attribute names follow the original so that state_dict() keys are milesial's own; the width is a
# parameter only so that the error tests can stay small (milesial fixes it at 64).
class DoubleConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, c_mid: int | None = None) -> None:
        super().__init__()
        c_mid = c_mid or c_out
        layers: list[nn.Module] = []
        for a, b in ((c_in, c_mid), (c_mid, c_out)):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.double_conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(c_in, c_out))

    def forward(self, x: Tensor) -> Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, c_in: int, c_out: int, bilinear: bool) -> None:
        super().__init__()
        self.up: nn.Module
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(c_in, c_out, c_in // 2)
        else:
            self.up = nn.ConvTranspose2d(c_in, c_in // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(c_in, c_out)

    def forward(self, low: Tensor, skip: Tensor) -> Tensor:
        low = self.up(low)
        dy, dx = skip.shape[2] - low.shape[2], skip.shape[3] - low.shape[3]
        low = F.pad(low, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, low], dim=1))


class OutConv(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class MilesialUNet(nn.Module):
    def __init__(self, n_channels: int, n_classes: int, bilinear: bool, width: int = 64) -> None:
        super().__init__()
        w = width
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(n_channels, w)
        self.down1, self.down2, self.down3 = Down(w, 2 * w), Down(2 * w, 4 * w), Down(4 * w, 8 * w)
        self.down4 = Down(8 * w, 16 * w // factor)
        self.up1 = Up(16 * w, 8 * w // factor, bilinear)
        self.up2 = Up(8 * w, 4 * w // factor, bilinear)
        self.up3 = Up(4 * w, 2 * w // factor, bilinear)
        self.up4 = Up(2 * w, w, bilinear)
        self.outc = OutConv(w, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        skips = [self.inc(x)]
        for down in (self.down1, self.down2, self.down3, self.down4):
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in (self.up1, self.up2, self.up3, self.up4):
            x = up(x, skips.pop())
        return self.outc(x)


def _randomise_norms(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine terms, so that eval-mode outputs test them too."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            mean, var, count = m.running_mean, m.running_var, m.num_batches_tracked
            assert mean is not None and var is not None and count is not None
            mean.copy_(torch.randn(n, generator=g) * 0.2)
            var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
            count.fill_(17)


def _save_milesial(path: Path, model: nn.Module, **extra: Any) -> Path:
    torch.save({**model.state_dict(), **extra}, path)
    return path


def _assert_same_outputs(ours: nn.Module, reference: nn.Module, *shapes: tuple[int, ...]) -> None:
    assert not ours.training
    reference.eval()
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(shape)
            torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("bilinear", [True, False], ids=["bilinear", "transposed"])
@pytest.mark.parametrize(("in_channels", "num_classes"), [(3, 2), (1, 1)])
def test_milesial_checkpoint_computes_what_milesial_computes(
    tmp_path: Path, bilinear: bool, in_channels: int, num_classes: int
) -> None:
    reference = MilesialUNet(in_channels, num_classes, bilinear)
    _randomise_norms(reference)
    mask_values = [0, 255] if num_classes == 1 else [[0, 0, 0], [255, 0, 255]]
    path = _save_milesial(tmp_path / "checkpoint_epoch5.pth", reference, mask_values=mask_values)

    model = import_milesial(path)

    assert isinstance(model, UNet)
    assert model.model_name == ("unet_bilinear" if bilinear else "unet_bn")
    assert (model.in_channels, model.num_classes, model.model_args["base_channels"]) == (
        in_channels,
        num_classes,
        64,
    )
    assert model.mask_values == mask_values
    # 75x97 halves to odd sizes at every level: the up-sampled maps are padded, as milesial pads them
    _assert_same_outputs(model, reference, (1, in_channels, 75, 97), (1, in_channels, 64, 48))


def test_milesial_width_is_read_from_the_file_and_the_model_can_be_rebuilt(tmp_path: Path) -> None:
    reference = MilesialUNet(2, 3, bilinear=True, width=8)
    _randomise_norms(reference)
    path = _save_milesial(tmp_path / "narrow.pth", reference)  # no mask_values: older train.py files

    model = import_checkpoint(path)

    assert isinstance(model, UNet)
    assert model.model_args["base_channels"] == 8
    assert model.mask_values == MILESIAL_DEFAULT_MASK_VALUES == [0, 1]
    _assert_same_outputs(model, reference, (2, 2, 33, 40))
    # what a zoo model file records is enough to rebuild it
    rebuilt = create_model(
        model.model_name, in_channels=model.in_channels, num_classes=model.num_classes, **model.model_args
    )
    rebuilt.load_state_dict(model.state_dict(), strict=True)


@pytest.fixture
def narrow_milesial() -> MilesialUNet:
    return MilesialUNet(3, 2, bilinear=False, width=4)


def test_truncated_milesial_file_is_named_as_corrupt(tmp_path: Path, narrow_milesial: MilesialUNet) -> None:
    path = _save_milesial(tmp_path / "model.pth", narrow_milesial, mask_values=[0, 1])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointImportError, match="truncated, corrupt or in another format") as info:
        import_milesial(path)
    assert str(path) in str(info.value)


def test_empty_file_is_named_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointImportError, match="truncated, corrupt or in another format") as info:
        import_checkpoint(path)
    assert f"{path} (0 bytes)" in str(info.value)


class Payload:
    """Stands for an arbitrary object pickled into a checkpoint: rebuilding it runs code (os.mkdir)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_pickled_code_is_refused_and_never_run(tmp_path: Path, narrow_milesial: MilesialUNet) -> None:
    marker = tmp_path / "code_was_run"
    path = _save_milesial(tmp_path / "model.pth", narrow_milesial, mask_values=[0, 1], extra=Payload(marker))
    with pytest.raises(CheckpointImportError) as info:
        import_milesial(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "never unpickles code" in msg and "posix.mkdir" in msg
    assert not marker.exists()


def test_custom_class_instance_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save({"inc.double_conv.0.weight": torch.zeros(1), "config": _Config()}, path)
    with pytest.raises(CheckpointImportError, match="never unpickles code") as info:
        import_milesial(path)
    assert str(path) in str(info.value) and "_Config" in str(info.value)


class _Config:
    depth = 4


def test_a_zoo_state_dict_is_not_a_milesial_checkpoint(tmp_path: Path) -> None:
    zoo_model = create_model("unet_bn", in_channels=1, num_classes=2, base_channels=4)
    path = tmp_path / "zoo.pth"
    torch.save(zoo_model.state_dict(), path)
    with pytest.raises(CheckpointImportError) as info:
        import_milesial(path)
    msg = str(info.value)
    assert f"{path} is not a milesial/Pytorch-UNet checkpoint" in msg
    assert "it has no inc.double_conv.0.weight or outc.conv.weight" in msg
    assert "encoder.0.0.weight" in msg  # says what the file holds instead


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path, narrow_milesial: MilesialUNet) -> None:
    state = narrow_milesial.state_dict()
    del state["down2.maxpool_conv.1.double_conv.3.weight"]
    state["up1.attention.weight"] = torch.zeros(3)
    state["up4.conv.double_conv.0.weight"] = torch.zeros(4, 5, 3, 3)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointImportError) as info:
        import_milesial(path)
    msg = str(info.value)
    assert str(path) in msg and "milesial/Pytorch-UNet's UNet (n_channels=3, n_classes=2" in msg
    assert "missing keys: down2.maxpool_conv.1.double_conv.3.weight;" in msg
    assert "unexpected keys: up1.attention.weight;" in msg
    assert "wrong shapes: up4.conv.double_conv.0.weight (4, 5, 3, 3) (expected (4, 8, 3, 3))" in msg


def test_a_nested_training_checkpoint_gets_a_hint(tmp_path: Path, narrow_milesial: MilesialUNet) -> None:
    path = tmp_path / "train_state.pth"
    torch.save({"model": narrow_milesial.state_dict(), "epoch": 3}, path)
    with pytest.raises(CheckpointImportError, match="seems to sit under the key 'model'") as info:
        import_milesial(path)
    assert str(path) in str(info.value)


# -- segmentation-models-pytorch ----------------------------------------------------------------------
def _randomised(model: SmpModel) -> SmpModel:
    _randomise_norms(model)
    return model.eval()


@pytest.mark.parametrize(
    ("smp_class", "kwargs", "name"),
    [
        (smp.Unet, dict(in_channels=1, classes=2, decoder_attention_type="scse"), "unet_resnet34"),
        (
            smp.UnetPlusPlus,
            dict(in_channels=3, classes=1, encoder_depth=4, decoder_channels=(32, 16, 16, 8)),
            "unetpp_resnet34",
        ),
    ],
    ids=["unet", "unetplusplus"],
)
def test_smp_folder_computes_what_smp_computes(
    tmp_path: Path, smp_class: type[smp.Unet] | type[smp.UnetPlusPlus], kwargs: dict[str, Any], name: str
) -> None:
    reference = _randomised(smp_class(encoder_name="resnet34", encoder_weights=None, **kwargs))
    reference.save_pretrained(tmp_path / "m")

    model = import_checkpoint(tmp_path / "m")

    assert isinstance(model, SmpUNet)
    assert model.model_name == name
    assert model.model_args["encoder_weights"] is None  # rebuilding it never downloads
    for key in ("encoder_depth", "decoder_channels", "decoder_attention_type"):
        if key in kwargs:
            assert model.model_args[key] == kwargs[key]
    _assert_same_outputs(model, reference, (1, kwargs["in_channels"], 64, 96))


def test_timm_pretrained_tag_maps_to_the_untagged_name(tmp_path: Path) -> None:
    reference = _randomised(
        smp.Unet("tu-efficientnet_b0.ra_in1k", encoder_weights=None, classes=1, decoder_channels=(16,) * 5)
    )
    reference.save_pretrained(tmp_path / "m")
    model = import_smp(tmp_path / "m")
    assert model.model_name == "unet_tu_efficientnet_b0"
    _assert_same_outputs(model, reference, (1, 3, 64, 64))


def _write_config(folder: Path, weights: bool = True, **config: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = {"_model_class": "Unet", "encoder_name": "resnet34", "in_channels": 3, "classes": 1}
    # None drops an entry
    (folder / "config.json").write_text(
        json.dumps({k: v for k, v in {**base, **config}.items() if v is not None})
    )
    if weights:
        save_file({"x": torch.zeros(1)}, folder / "model.safetensors")
    return folder


def test_smp_folder_without_config_or_weights(tmp_path: Path) -> None:
    no_weights = _write_config(tmp_path / "a", weights=False)
    with pytest.raises(FileNotFoundError, match=re.escape("has no model.safetensors")) as info:
        import_smp(no_weights)
    assert str(no_weights) in str(info.value) and "found: config.json" in str(info.value)

    no_config = tmp_path / "b"
    no_config.mkdir()
    save_file({"x": torch.zeros(1)}, no_config / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{no_config} has no config.json")):
        import_smp(no_config)
    with pytest.raises(
        CheckpointImportError, match=re.escape(f"{no_config} is a folder without config.json")
    ):
        import_checkpoint(no_config)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        import_smp(tmp_path / "absent")

    legacy = _write_config(tmp_path / "c", weights=False)
    torch.save({"x": torch.zeros(1)}, legacy / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=re.escape("older pickled pytorch_model.bin: re-save it")):
        import_smp(legacy)


def test_smp_class_or_encoder_without_a_zoo_name(tmp_path: Path) -> None:
    with pytest.raises(CheckpointImportError, match=r"_model_class='FPN' .* supported: Unet, UnetPlusPlus"):
        import_smp(_write_config(tmp_path / "fpn", _model_class="FPN"))
    with pytest.raises(CheckpointImportError, match=r'has no "_model_class".*\(Unet, UnetPlusPlus\)'):
        import_smp(_write_config(tmp_path / "anonymous", _model_class=None))
    with pytest.raises(CheckpointImportError) as info:
        import_smp(_write_config(tmp_path / "r18", encoder_name="resnet18"))
    msg = str(info.value)
    assert "no zoo model is registered for smp Unet with encoder 'resnet18'" in msg
    assert "unet_resnet34 (Unet, encoder 'resnet34')" in msg and "register_model" in msg


def test_smp_arguments_the_wrapper_cannot_represent(tmp_path: Path) -> None:
    folder = _write_config(tmp_path / "m", activation="sigmoid", decoder_interpolation="bilinear")
    with pytest.raises(CheckpointImportError) as info:
        import_smp(folder)
    msg = str(info.value)
    assert "activation='sigmoid'" in msg and "decoder_interpolation='bilinear'" in msg
    assert '"activation": null' in msg and "decoder_channels" in msg


def test_smp_weights_that_do_not_fit_the_config(tmp_path: Path) -> None:
    reference = smp.Unet("resnet34", encoder_weights=None, classes=2, decoder_channels=(16,) * 5)
    reference.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "classes": 3}))
    with pytest.raises(CheckpointImportError) as info:
        import_smp(tmp_path / "m")
    msg = str(info.value)
    assert str(tmp_path / "m" / "model.safetensors") in msg
    assert "wrong shapes: segmentation_head.0." in msg
    assert "segmentation_head.0.weight (2, 16, 3, 3) (expected (3, 16, 3, 3))" in msg


def test_corrupt_smp_weights(tmp_path: Path) -> None:
    folder = _write_config(tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(CheckpointImportError, match="not a readable safetensors file") as info:
        import_smp(folder)
    assert str(weights) in str(info.value)


def test_dispatch_refuses_a_bare_safetensors_file_and_a_missing_path(tmp_path: Path) -> None:
    folder = _write_config(tmp_path / "m")
    shutil.copy(folder / "model.safetensors", tmp_path / "weights.safetensors")
    with pytest.raises(CheckpointImportError, match="pass the folder holding both"):
        import_checkpoint(tmp_path / "weights.safetensors")
    with pytest.raises(FileNotFoundError, match="no such file or folder") as missing:
        import_checkpoint(tmp_path / "absent.pth")
    # the CLI reports ZooErrors in one line; callers catching the built-in types keep working
    assert isinstance(missing.value, CheckpointNotFoundError) and isinstance(missing.value, ZooError)
    with pytest.raises(CheckpointImportError) as bad:
        import_checkpoint(tmp_path / "weights.safetensors")
    assert isinstance(bad.value, ValueError) and isinstance(bad.value, ZooError)


def test_cli_import_writes_a_zoo_file_that_loads_by_path(
    tmp_path: Path, narrow_milesial: MilesialUNet, capsys: pytest.CaptureFixture[str]
) -> None:
    from zoo.cli import main

    _randomise_norms(narrow_milesial)
    source = _save_milesial(tmp_path / "checkpoint.pth", narrow_milesial, mask_values=[0, 255])
    out = tmp_path / "imported.safetensors"
    assert main(["weights", "import", str(source), str(out)]) == 0
    assert "--model unet_bn" in capsys.readouterr().out
    model = create_model("unet_bn", weights=out)
    _assert_same_outputs(model.eval(), narrow_milesial, (1, 3, 41, 37))
    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()["mask_values"]) == [0, 255]

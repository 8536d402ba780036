"""hubconf.py: torch.hub.load on a local checkout builds the zoo's models, with verified weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from zoo import create_model, list_models

REPO = str(Path(__file__).resolve().parents[1])


def test_hubconf_has_an_entry_point_per_registered_model() -> None:
    # torch.hub.list/help only read GitHub repositories; this is the same module torch.hub.load imports
    spec = importlib.util.spec_from_file_location("hubconf_under_test", Path(REPO) / "hubconf.py")
    assert spec is not None and spec.loader is not None
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    entries = sorted(n for n in dir(hub) if callable(getattr(hub, n)) and not n.startswith("_"))
    assert entries == list_models()
    assert "default weights" in (hub.unet_bn.__doc__ or "")


def test_hub_load_gives_the_same_weights_as_create_model() -> None:
    via_hub = torch.hub.load(REPO, "unet_bn", source="local", weights="isbi2012-w16-s0")
    direct = create_model("unet_bn", weights="isbi2012-w16-s0")
    for key, value in direct.state_dict().items():
        assert torch.equal(via_hub.state_dict()[key], value), key
    default = torch.hub.load(REPO, "unet_bn", source="local", pretrained=True)
    assert default.pretrained_weights == "unet_bn.isbi2012-w16-s0"


def test_hub_load_without_weights_takes_the_usual_arguments() -> None:
    model = torch.hub.load(REPO, "unet", source="local", in_channels=1, num_classes=2, base_channels=4)
    assert model.model_name == "unet" and model.model_args["base_channels"] == 4
    assert model(torch.randn(1, 1, 188, 188)).shape == (1, 2, 4, 4)

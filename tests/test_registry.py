from __future__ import annotations

from collections.abc import Iterator

import pytest
from torch import nn

import zoo
from zoo import registry
from zoo.factory import create_model, model_info
from zoo.models import UNet
from zoo.registry import build_model, list_models, register_model

EXPECTED = {
    "unet",
    "unet_bn",
    "unet_bilinear",
    "attention_unet",
    "unet_resnet34",
    "unetpp_resnet34",
    "unet_tu_efficientnet_b0",
}


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    """Let a test register names without leaking them into the parametrised model tests."""
    list_models()  # make sure the built-ins are in before the snapshot
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def test_every_curated_model_is_registered() -> None:
    assert set(list_models()) >= EXPECTED


def test_list_models_filters_with_shell_wildcards() -> None:
    assert list_models("unet_b*") == ["unet_bilinear", "unet_bn"]
    assert list_models("*resnet34") == ["unet_resnet34", "unetpp_resnet34"]
    assert list_models("nothing*") == []
    assert list_models() == sorted(list_models())


def test_registering_a_name_twice_raises(scratch_registry: None) -> None:
    with pytest.raises(
        ValueError, match=r"model name 'unet' is already registered \(by zoo\.models\.unet\.unet\)"
    ):

        @register_model
        def unet(**kwargs: object) -> nn.Module:
            return nn.Identity()


def test_a_registered_custom_model_is_listed_and_built(scratch_registry: None) -> None:
    @register_model(family="custom", paper="none")
    def my_unet(**kwargs: object) -> UNet:
        """A user's recipe."""
        return build_model(UNet, "my_unet", dict(base_channels=4, depth=2), kwargs)

    assert "my_unet" in list_models()
    model = create_model("my_unet", in_channels=3, num_classes=5, norm="group")
    assert isinstance(model, UNet) and model.depth == 2
    assert model.model_name == "my_unet"
    assert model.model_args["norm"] == "group" and model.model_args["base_channels"] == 4
    assert registry.get_entry("my_unet").summary == "A user's recipe."


def test_unknown_name_suggests_the_closest_names() -> None:
    with pytest.raises(
        zoo.UnknownModelError, match=r"unknown model 'unet_bm'; did you mean 'unet_bn'"
    ) as info:
        create_model("unet_bm", in_channels=1, num_classes=2)
    assert isinstance(info.value, KeyError)
    assert "registered models: attention_unet, unet," in str(info.value)


def test_unknown_override_is_a_type_error_listing_the_accepted_ones() -> None:
    with pytest.raises(TypeError) as info:
        create_model("unet", in_channels=1, num_classes=2, base_channel=8)
    msg = str(info.value)
    assert "unet: unknown override(s) ['base_channel']" in msg
    assert "did you mean 'base_channels'?" in msg
    assert (
        "Accepted overrides: attention, base_channels, depth, dropout, grad_checkpointing, init, norm, "
        in msg
    )


def test_smp_names_fix_their_encoder() -> None:
    with pytest.raises(
        TypeError, match=r"unknown override\(s\) \['encoder_name'\].*Accepted overrides: decoder_"
    ):
        create_model("unet_resnet34", in_channels=3, num_classes=1, encoder_name="resnet50")


def test_in_channels_and_num_classes_are_required() -> None:
    with pytest.raises(TypeError, match="num_classes"):
        create_model("unet_bn", in_channels=1)  # type: ignore[call-arg]


def test_bad_option_values_list_the_choices() -> None:
    with pytest.raises(
        ValueError,
        match=r"norm='batchnorm' is not one of 'batch', 'instance', 'group', 'none'\. "
        r"Did you mean 'batch'\?",
    ):
        create_model("unet_bn", in_channels=1, num_classes=2, norm="batchnorm")
    with pytest.raises(ValueError, match=r"up_mode='bilinar'.*Did you mean 'bilinear'"):
        create_model("unet", in_channels=1, num_classes=2, up_mode="bilinar")
    with pytest.raises(ValueError, match="depth=9 is out of range"):
        create_model("unet", in_channels=1, num_classes=2, depth=9)


def test_model_info_describes_without_building_weights() -> None:
    info = model_info("unet")
    assert (info.family, info.padding, info.params) == ("unet", "valid", 31_030_658)
    assert (info.input_size, info.output_size, info.input_multiple, info.min_input_size) == (
        572,
        388,
        16,
        188,
    )
    assert "arXiv:1505.04597" in info.paper
    paper_recipe = {
        "padding": "valid",
        "norm": "none",
        "up_mode": "transpose",
        "dropout": 0.5,
        "init": "paper",
    }
    assert paper_recipe.items() <= info.arguments.items()
    assert info.arguments["base_channels"] == 64 and info.arguments["depth"] == 4  # defaults resolved too
    bn = model_info("unet_bn", input_size=333)
    assert (bn.padding, bn.input_size, bn.output_size, bn.input_multiple) == ("same", 333, 333, 1)
    pp = model_info("unetpp_resnet34", input_size=333)
    assert (pp.input_size, pp.input_multiple) == (320, 32)  # replaced by the nearest accepted size

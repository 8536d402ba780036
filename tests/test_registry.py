from __future__ import annotations

from collections.abc import Iterator

import pytest
from torch import nn

import zoo
from zoo import registry
from zoo.errors import ConfigError, ZooError
from zoo.factory import create_model, model_info
from zoo.harness.publish import DataUnavailableError, PublishError
from zoo.interop import CheckpointImportError, CheckpointNotFoundError
from zoo.models import EncoderWeightsUnavailableError, UNet
from zoo.registry import ModelArgumentError, UnknownModelError, build_model, list_models, register_model
from zoo.weights import ChecksumError, DownloadError, OfflineError, WeightsError, WeightsMismatchError

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
        ConfigError, match=r"model name 'unet' is already registered \(by zoo\.models\.unet\.unet\)"
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
    assert isinstance(info.value, KeyError) and isinstance(info.value, ZooError)
    assert str(info.value).startswith("unknown model 'unet_bm'")  # not quoted, as KeyError would
    assert "registered models: attention_unet, unet," in str(info.value)


def test_unknown_override_is_a_type_error_listing_the_accepted_ones() -> None:
    with pytest.raises(TypeError) as info:
        create_model("unet", in_channels=1, num_classes=2, base_channel=8)
    assert isinstance(info.value, ModelArgumentError) and isinstance(info.value, ZooError)
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


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (UnknownModelError, KeyError),
        (ModelArgumentError, TypeError),
        (WeightsError, RuntimeError),
        (ChecksumError, RuntimeError),
        (DownloadError, RuntimeError),
        (OfflineError, RuntimeError),
        (WeightsMismatchError, ValueError),
        (CheckpointImportError, ValueError),
        (CheckpointNotFoundError, FileNotFoundError),
        (PublishError, ValueError),
        (DataUnavailableError, ValueError),
        (EncoderWeightsUnavailableError, RuntimeError),
    ],
    ids=lambda c: c.__name__,
)
def test_errors_a_user_can_fix_are_zoo_errors_keeping_their_builtin_base(
    error: type[Exception], builtin: type[Exception]
) -> None:
    # the CLI prints a ZooError in one line; library callers may still catch the built-in type
    assert issubclass(error, ZooError) and issubclass(error, builtin)


def test_weights_that_do_not_fit_are_a_zoo_error_from_create_model() -> None:
    with pytest.raises(WeightsMismatchError, match="no weights with tag 'nope' for model 'unet_bn'") as info:
        create_model("unet_bn", weights="nope")
    assert isinstance(info.value, ZooError) and isinstance(info.value, ValueError)


def test_zoo_still_exports_the_factory_and_the_registry() -> None:
    assert zoo.create_model is create_model and zoo.model_info is model_info
    assert zoo.list_models is list_models and zoo.UnknownModelError is UnknownModelError

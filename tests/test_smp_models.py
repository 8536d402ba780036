"""The smp-based names against models built directly with segmentation-models-pytorch."""

from __future__ import annotations

from typing import Any

import pytest
import segmentation_models_pytorch as smp
import torch

from zoo import EncoderWeightsUnavailableError, create_model, list_models
from zoo.cost import count_parameters
from zoo.models import SmpUNet

# independent statement of what each name is; a new smp-family name must be added here
DIRECT = {
    "unet_resnet34": (smp.Unet, "resnet34"),
    "unetpp_resnet34": (smp.UnetPlusPlus, "resnet34"),
    "unet_tu_efficientnet_b0": (smp.Unet, "tu-efficientnet_b0"),
}


def test_every_smp_name_has_a_direct_reference() -> None:
    smp_names = {
        n for n in list_models() if isinstance(create_model(n, in_channels=3, num_classes=1), SmpUNet)
    }
    assert smp_names == set(DIRECT)


@pytest.mark.parametrize("name", sorted(DIRECT))
@pytest.mark.parametrize(("in_channels", "num_classes"), [(3, 1), (1, 2)])
def test_parameters_and_outputs_equal_the_direct_smp_model(
    name: str, in_channels: int, num_classes: int
) -> None:
    arch, encoder = DIRECT[name]
    direct = arch(
        encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes
    ).eval()
    ours = create_model(name, in_channels=in_channels, num_classes=num_classes).eval()
    assert isinstance(ours, SmpUNet)
    assert count_parameters(ours) == count_parameters(direct)
    ours.net.load_state_dict(direct.state_dict())  # same structure, key for key
    x = torch.randn(1, in_channels, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), direct(x), rtol=0, atol=0)


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """An empty hub cache and offline mode: what a machine without internet sees, without the retries."""
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))


@pytest.mark.parametrize("name", sorted(DIRECT))
def test_unreachable_imagenet_weights_fail_with_what_to_do(name: str, offline_hub: None) -> None:
    with pytest.raises(EncoderWeightsUnavailableError) as info:
        create_model(name, in_channels=3, num_classes=1, encoder_weights="imagenet")
    msg = str(info.value)
    assert f"could not obtain encoder_weights='imagenet' for encoder {DIRECT[name][1]!r}" in msg
    assert "pass encoder_weights=None" in msg and "HF_HOME" in msg
    assert isinstance(info.value.__cause__, OSError)


def test_unreachable_weights_fail_even_when_the_hub_is_online(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    # not offline mode: the hub client tries the (blocked) network, retries, and must still end in our error
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr("time.sleep", lambda s: None)  # skip the client's back-off between retries
    with pytest.raises(EncoderWeightsUnavailableError, match="cannot reach the Hugging Face Hub"):
        create_model("unet_resnet34", in_channels=3, num_classes=1, encoder_weights="imagenet")


def test_unknown_weights_name_is_not_disguised_as_a_network_error() -> None:
    with pytest.raises(KeyError, match="Wrong pretrained weights `instagram-nope`"):
        create_model("unet_resnet34", in_channels=3, num_classes=1, encoder_weights="instagram-nope")
    with pytest.raises(ValueError, match="use 'imagenet' or None"):
        create_model("unet_tu_efficientnet_b0", in_channels=3, num_classes=1, encoder_weights="ssl")


def test_default_is_random_init_and_recorded() -> None:
    """Without ``encoder_weights`` the encoder is freshly initialised (no ImageNet weights are loaded):
    its weights follow the seed, and they are the initialiser's, not a trained network's."""

    def encoder(seed: int) -> Any:  # smp's ResNetEncoder, a torchvision ResNet
        torch.manual_seed(seed)
        model = create_model("unet_resnet34", in_channels=3, num_classes=1)
        assert isinstance(model, SmpUNet) and model.model_args["encoder_weights"] is None
        return model.net.encoder

    first, again, other = encoder(0), encoder(0), encoder(1)
    convs = [name for name, w in first.state_dict().items() if w.dim() == 4]
    assert len(convs) > 30  # every convolution of the ResNet-34, not a few
    for name in convs:  # the seed decides every convolution: loaded weights would be the same each time
        assert torch.equal(first.state_dict()[name], again.state_dict()[name]), name
        assert not torch.equal(first.state_dict()[name], other.state_dict()[name]), name
    # torchvision's ResNet initialiser: He normal over fan-out for the stem, 64 x 7 x 7 (ImageNet-trained
    # stems are several times wider), and every BatchNorm at its reset state (a checkpoint carries
    # learnt statistics and affine weights)
    assert first.conv1.weight.std().item() == pytest.approx((2 / (64 * 7 * 7)) ** 0.5, rel=0.05)
    norms = [m for m in first.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    for bn in norms:
        assert bn.running_mean is not None and bn.running_var is not None
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()


def test_decoder_overrides_pass_through() -> None:
    model = create_model(
        "unet_resnet34", in_channels=3, num_classes=1, encoder_depth=4, decoder_channels=(64, 32, 16, 8)
    )
    assert model.input_multiple == 1 and model.min_input_size == 16
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 48, 80)).shape == (1, 1, 48, 80)
    with pytest.raises(ValueError, match="needs one entry per encoder stage"):
        create_model("unet_resnet34", in_channels=3, num_classes=1, encoder_depth=4)

"""U-Nets with pretrained-capable encoders, built by segmentation-models-pytorch (smp).

Any smp encoder, and any timm encoder through smp's ``tu-`` prefix, can back a registered name; the
names here fix the architecture and encoder, and the decoder's width and depth stay overrides.

Encoder weights are never fetched silently and never replaced by random ones silently: the default is
``encoder_weights=None`` (random initialisation, as timm's ``pretrained=False``); asking for
``"imagenet"`` downloads through the Hugging Face Hub, and where that fails the error says why and what
to do instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import segmentation_models_pytorch as smp
from torch import Tensor, nn

from zoo.errors import ConfigError, ZooError
from zoo.models.base import SegmentationModel
from zoo.registry import build_model, register_model

__all__ = [
    "EncoderWeightsUnavailableError",
    "SmpUNet",
    "unet_resnet34",
    "unet_tu_efficientnet_b0",
    "unetpp_resnet34",
]

log = logging.getLogger(__name__)

ARCHITECTURES: dict[str, type[nn.Module]] = {"unet": smp.Unet, "unetplusplus": smp.UnetPlusPlus}


class EncoderWeightsUnavailableError(ZooError, RuntimeError):
    """Pretrained encoder weights were asked for and could not be obtained."""


class SmpUNet(SegmentationModel):
    """A segmentation-models-pytorch U-Net family model behind the zoo's size contract.

    ``(B, in_channels, H, W) -> (B, num_classes, H, W)``. The smp model is ``self.net``; its state dict is
    the smp one under the prefix ``net.``.

    Args:
        in_channels: input channels (with pretrained weights, smp adapts the first convolution).
        num_classes: output channels (logits).
        architecture: "unet" or "unetplusplus" (fixed by the registered name).
        encoder_name: an smp encoder name, or ``tu-<timm name>`` (fixed by the registered name).
        encoder_weights: None (random) or "imagenet".
        encoder_depth: number of encoder stages, 3 to 5; the input multiple is ``2**encoder_depth`` where
            the architecture needs one.
        decoder_channels: channels of each decoder stage, one per encoder stage.
        decoder_attention_type: None or "scse" (smp's squeeze-and-excitation decoder attention).
        grad_checkpointing: recompute the encoder and the decoder in the backward pass.
    """

    # Parameters a registered name fixes; they are not user overrides of that name.
    fixed_args: ClassVar[tuple[str, ...]] = ("architecture", "encoder_name")
    # checked by zoo.registry.build_model, before smp builds anything
    arg_ranges: ClassVar[Mapping[str, tuple[int, int]]] = {
        **SegmentationModel.arg_ranges,
        "encoder_depth": (3, 5),
        "decoder_channels": (1, 1024),
    }

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        architecture: str = "unet",
        encoder_name: str = "resnet34",
        encoder_weights: str | None = None,
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        decoder_attention_type: str | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture={architecture!r} is not one of {sorted(ARCHITECTURES)}")
        if len(decoder_channels) != encoder_depth:
            raise ConfigError(
                f"decoder_channels={tuple(decoder_channels)} needs one entry per encoder stage "
                f"(encoder_depth={encoder_depth}), e.g. {(256, 128, 64, 32, 16)[:encoder_depth]}"
            )
        self.in_channels, self.num_classes = in_channels, num_classes
        self.padding_mode = "same"
        self.grad_checkpointing = grad_checkpointing
        self.encoder_depth = encoder_depth
        weights = _smp_weights_arg(encoder_name, encoder_weights)
        try:
            self.net = ARCHITECTURES[architecture](
                encoder_name=encoder_name,
                encoder_weights=weights,
                encoder_depth=encoder_depth,
                decoder_channels=tuple(decoder_channels),
                decoder_attention_type=decoder_attention_type,
                in_channels=in_channels,
                classes=num_classes,
            )
        except OSError as err:  # network, DNS, hub cache misses all surface as OSError subclasses
            if weights is None:
                raise
            raise EncoderWeightsUnavailableError(
                f"could not obtain encoder_weights={encoder_weights!r} for encoder {encoder_name!r}: {err}\n"
                "This machine cannot reach the Hugging Face Hub, and the weights are not in its cache. "
                "To proceed: (1) pass encoder_weights=None to train from random initialisation; or "
                "(2) on a machine with internet, build the model once with "
                f"encoder_weights={encoder_weights!r} and copy its Hugging Face cache "
                "(HF_HOME, default ~/.cache/huggingface) to this machine. "
                "Set HF_HUB_OFFLINE=1 to make this check fail at once instead of retrying."
            ) from err
        if weights is None:
            log.debug("%s with encoder %s starts from random weights", architecture, encoder_name)

    # -- size contract -----------------------------------------------------------------------------
    @property
    def _needs_multiple(self) -> bool:
        return bool(getattr(self.net, "requires_divisible_input_shape", True))

    @property
    def input_multiple(self) -> int:
        return 2**self.encoder_depth if self._needs_multiple else 1

    @property
    def min_input_size(self) -> int:
        return 2**self.encoder_depth

    @property
    def total_stride(self) -> int:
        return 2**self.encoder_depth

    def _output_length(self, n: int) -> int | None:
        if n < self.min_input_size or n % self.input_multiple:
            return None
        return n

    def _size_reason(self) -> str:
        if self._needs_multiple:
            return f"its decoder joins {self.encoder_depth} stride-2 stages exactly"
        return (
            f"the encoder's {self.encoder_depth} stride-2 stages need at least {self.min_input_size} pixels"
        )

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        net: Any = self.net
        features = self._maybe_checkpoint(net.encoder, net.encoder, x)
        return self._maybe_checkpoint(net, self._decode, features)

    def _decode(self, features: list[Tensor]) -> Tensor:
        net: Any = self.net
        return net.segmentation_head(net.decoder(features))


def _smp_weights_arg(encoder_name: str, encoder_weights: str | None) -> Any:
    if encoder_weights is None:
        return None
    if encoder_name.startswith("tu-"):
        # smp takes True for timm encoders; the timm name carries the pretrained tag
        if encoder_weights != "imagenet":
            raise ConfigError(
                f"encoder_weights={encoder_weights!r} is not available for timm encoder {encoder_name!r}; "
                "use 'imagenet' or None (pick another pretrained tag through the timm name, e.g. "
                "'tu-efficientnet_b0.ra_in1k')"
            )
        return True
    return encoder_weights


RESNET = "U-Net decoder; He et al. 2016 ResNet encoder (arXiv:1512.03385); via smp"
ZHOU_2018 = "Zhou et al. 2018, UNet++ (arXiv:1807.10165); ResNet encoder; via smp"
TAN_2019 = "U-Net decoder; Tan & Le 2019 EfficientNet encoder (arXiv:1905.11946); via smp + timm"
# smaller decoders keep the smoke suite fast; the encoders themselves cannot shrink
_TINY_SMP = {"decoder_channels": (32, 16, 16, 8, 8)}


@register_model(family="smp", paper=RESNET, tiny=_TINY_SMP)
def unet_resnet34(**kwargs: object) -> SmpUNet:
    """smp U-Net with a ResNet-34 encoder (ImageNet weights with encoder_weights="imagenet")."""
    return build_model(SmpUNet, "unet_resnet34", dict(architecture="unet", encoder_name="resnet34"), kwargs)


@register_model(family="smp", paper=ZHOU_2018, tiny=_TINY_SMP)
def unetpp_resnet34(**kwargs: object) -> SmpUNet:
    """smp UNet++ (nested, densely connected skips) with a ResNet-34 encoder."""
    recipe = dict(architecture="unetplusplus", encoder_name="resnet34")
    return build_model(SmpUNet, "unetpp_resnet34", recipe, kwargs)


@register_model(family="smp", paper=TAN_2019, tiny=_TINY_SMP)
def unet_tu_efficientnet_b0(**kwargs: object) -> SmpUNet:
    """smp U-Net with timm's EfficientNet-B0 encoder through smp's ``tu-`` bridge."""
    recipe = dict(architecture="unet", encoder_name="tu-efficientnet_b0")
    return build_model(SmpUNet, "unet_tu_efficientnet_b0", recipe, kwargs)

"""Model families. Importing this package registers every built-in model."""

from zoo.models import smp_unets, unet
from zoo.models.base import InputSizeError, SegmentationModel, checkpoint_segment
from zoo.models.smp_unets import EncoderWeightsUnavailableError, SmpUNet
from zoo.models.unet import AttentionGate, UNet

__all__ = [
    "AttentionGate",
    "EncoderWeightsUnavailableError",
    "InputSizeError",
    "SegmentationModel",
    "SmpUNet",
    "UNet",
    "checkpoint_segment",
    "smp_unets",
    "unet",
]

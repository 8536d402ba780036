"""unet-zoo: the 2015 U-Net and its variants behind one factory, with a harness to compare them fairly."""

from zoo.factory import ModelInfo, create_model, model_info
from zoo.models import EncoderWeightsUnavailableError, InputSizeError, SegmentationModel
from zoo.registry import UnknownModelError, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "EncoderWeightsUnavailableError",
    "InputSizeError",
    "ModelInfo",
    "SegmentationModel",
    "UnknownModelError",
    "__version__",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]

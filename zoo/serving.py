"""A registered zoo model as an MLflow pyfunc: what ``mlflow models serve -m models:/NAME@ALIAS`` runs.

``unet-zoo register`` stores each version as a models-from-code pyfunc: MLflow copies the code file
:data:`CODE_FILE` (``zoo/serving_entry.py``, two lines that hand MLflow a :class:`SegmentationPyfunc`)
into the model instead of pickling an object, and the run's ``best.safetensors`` as the artifact
:data:`WEIGHTS_ARTIFACT`. Loading the model (``mlflow.pyfunc.load_model``, the scoring server) imports
that file and reads the safetensors: nothing is unpickled. The environment that loads it must have
unet-zoo installed (``mlflow models serve --env-manager local`` from the zoo's environment).

The contract (the version's signature states it; :func:`signature` builds it):

- input: the images, uint8 ``(B, C, H, W)``: ``C`` the model's input channels (1: gray, 3: RGB), values
  the 8-bit pixels as an image file decodes (what ``unet-zoo predict`` reads); all ``B`` of one size. In a
  request to the scoring server: ``POST /invocations`` with ``{"inputs": [[[[0, 12, ...], ...]]]}``.
- params (optional, ``{"inputs": ..., "params": {"output": "probabilities"}}``): ``output`` "mask"
  (default) or "probabilities"; ``scale`` as ``unet-zoo predict --scale``: "auto" (default: the
  weights' training scale), "none", a factor ("0.5") or "HxW".
- output: ``mask``: the class of each pixel, uint8 ``(B, H, W)``; ``probabilities``: float32
  ``(B, K, H, W)``. The server answers ``{"predictions": [...]}``.

Each image goes through :func:`zoo.predict.predict_image`, the path of ``unet-zoo predict``: the
weights' training scale, overlap-tile inference and predict's default precision on the device, so the
served answer equals ``predict_image`` on the same model and image.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow.pyfunc import PythonModel

from zoo.errors import ConfigError
from zoo.factory import create_model
from zoo.models import SegmentationModel
from zoo.predict import parse_scale, predict_image
from zoo.runtime import Precision, resolve_device
from zoo.tiling import TiledInferer
from zoo.weights import ChecksumError, file_sha256, read_metadata

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

__all__ = ["CODE_FILE", "OUTPUTS", "WEIGHTS_ARTIFACT", "SegmentationPyfunc", "signature"]

log = logging.getLogger(__name__)

CODE_FILE = Path(__file__).with_name("serving_entry.py")
"""The models-from-code file registered versions carry (``python_model=`` of ``save_model``)."""
WEIGHTS_ARTIFACT = "weights"
"""The name of the weights file among the pyfunc's artifacts."""
OUTPUTS = ("mask", "probabilities")


def signature(in_channels: int) -> ModelSignature:
    """The pyfunc's signature for a model of ``in_channels``: uint8 ``(B, C, H, W)`` in, the ``output``
    and ``scale`` params; the output's shape depends on ``output``, so the signature leaves it open."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, in_channels, -1, -1))]),
        params=ParamSchema(
            [ParamSpec("output", DataType.string, "mask"), ParamSpec("scale", DataType.string, "auto")]
        ),
    )


class SegmentationPyfunc(PythonModel):
    """The pyfunc of a registered version (module docstring: the contract). ``model_config`` may hold
    ``weights_sha256`` (checked before the file is read) and ``device`` (default "auto": CUDA when there
    is one)."""

    def load_context(self, context: Any) -> None:
        path = Path(context.artifacts[WEIGHTS_ARTIFACT])
        config = dict(context.model_config or {})
        expected = config.get("weights_sha256")
        if expected and file_sha256(path) != expected:
            raise ChecksumError(
                f"{path}: the model's weights do not match the sha256 recorded at registration ({expected}); "
                "the model's artifacts were changed: register the run again"
            )
        name = read_metadata(path).get("model_name", "")
        model = create_model(name, weights=path)
        if not isinstance(model, SegmentationModel):
            raise ConfigError(f"{name}: serving needs a zoo SegmentationModel, got {type(model).__name__}")
        device = resolve_device(str(config.get("device", "auto")))
        self.inferer = TiledInferer(precision=Precision.resolve("auto", device))
        self.model = model
        self.inferer.precision.model(model.to(device))
        log.info("serving %s from %s on %s", name, path, device)

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """Masks uint8 ``(B, H, W)`` or probabilities float32 ``(B, K, H, W)`` of ``(B, C, H, W)`` images."""
        options = {"output": "mask", "scale": "auto", **(params or {})}
        output = str(options["output"])
        if output not in OUTPUTS:
            raise ConfigError(f"params output={output!r}: use one of {', '.join(OUTPUTS)}")
        scale = parse_scale(str(options["scale"]))
        images = np.asarray(model_input)
        if images.ndim != 4:
            raise ConfigError(f"inputs of shape {images.shape}: send images as uint8 (B, C, H, W)")
        results: list[np.ndarray] = []
        for image in images:
            labels, probabilities = predict_image(
                self.model,
                np.ascontiguousarray(image.transpose(1, 2, 0)),
                scale=scale,
                inferer=self.inferer,
                probabilities=output == "probabilities",
            )
            results.append(labels if probabilities is None else probabilities)
        return np.stack(results)

"""The models-from-code file of a registered unet-zoo version (:mod:`zoo.serving` says what it serves).

MLflow copies this file into each registered model and runs it to load the model, instead of unpickling
an object: it hands MLflow the pyfunc, which reads the version's safetensors weights.
"""

from mlflow.models import set_model

from zoo.serving import SegmentationPyfunc

set_model(SegmentationPyfunc())

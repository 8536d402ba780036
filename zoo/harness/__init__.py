"""The benchmark harness: train, evaluate and measure any registered model on any dataset, in MLflow."""

from zoo.harness.config import TrainConfig
from zoo.harness.suites import Suite, load_suite, run_suite
from zoo.harness.tracking import Tracker
from zoo.harness.training import NonFiniteLossError, RunResult, train

__all__ = [
    "NonFiniteLossError",
    "RunResult",
    "Suite",
    "Tracker",
    "TrainConfig",
    "load_suite",
    "run_suite",
    "train",
]

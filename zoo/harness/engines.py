"""Where a suite's runs and a study's trials train: this machine, or Ray (one object holds the choice)."""

from __future__ import annotations

from dataclasses import dataclass

from zoo.errors import ConfigError

__all__ = ["ENGINES", "Engine"]

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Engine:
    """The engine and its options, as ``--backend``, ``--address``, ``--cpus-per-trial`` and
    ``--gpus-per-trial`` give them.

    Attributes:
        name: "local" (this process, or ``bench --jobs`` worker processes) or "ray" (Ray Tune trials:
            :mod:`zoo.harness.ray_engine`).
        address: the Ray cluster to join (None: ``RAY_ADDRESS``, else a local Ray started on demand).
        cpus_per_trial, gpus_per_trial: what a Ray trial asks for (None: the engine's rule, a GPU on GPU
            nodes and one CPU otherwise: :func:`zoo.harness.ray_engine.trial_resources`).
    """

    name: str = "local"
    address: str | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ConfigError(f"backend {self.name!r} is not one of {', '.join(map(repr, ENGINES))}")
        if self.name == "local" and (self.address or self.cpus_per_trial or self.gpus_per_trial):
            raise ConfigError("--address, --cpus-per-trial and --gpus-per-trial are Ray's: add --backend ray")

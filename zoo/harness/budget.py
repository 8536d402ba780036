"""How long a run trains: the epochs its learning-rate schedule spans and the epoch it stops after.

A run's budget is epochs (``TrainConfig.epochs``, always the maximum), or also training images
(``budget_images``) or seconds (``budget_seconds``), so that a suite fits a fixed slot on any device.
:class:`Plan` holds the decision; the training loop asks it for the epoch's length and, after each epoch,
for the next plan, and stores it in the checkpoint, so a resumed run ends where an uninterrupted one would.

The rules:

- ``budget_images``: the global batches' crops summed over the epochs (an epoch is ``steps_per_epoch x
  accumulate x batch_size`` crops, or one pass over the training crops). The budget buys whole epochs
  while they fit, then the whole optimiser steps of one more epoch that fit, which ends early: a run
  never trains on more images than its budget. The schedule is planned for those epochs (the cut
  epoch counted), at most ``epochs``.
- ``budget_seconds``: the run's clock is the sum of its epochs' ``epoch_seconds`` (training and
  validation; setup, checkpoint writes and the final figures are outside it). The first epoch always
  runs; after it, the schedule is planned once for ``min(epochs, max(1, floor(budget_seconds /
  first_epoch_seconds)))`` epochs (the first epoch is often the slowest: compilation, caches, so the
  plan errs on the short side). After each epoch the run stops if another one, estimated as the mean of
  the finished epochs, would not fit.
- A run stops once its planned epochs are done: the schedule has ended (cosine is at zero).
- Warm-up epochs are not shortened by a plan; a plan of fewer epochs than the warm-up ends in warm-up.
- ``patience`` (early stopping) works with either budget.

The reason a run stopped is one of :data:`STOP_REASONS`, the first that applies after its last epoch:
it reached ``epochs`` ("epochs"), its budget ("budget_images", "budget_seconds"), or ``patience`` epochs
without a better validation Dice ("patience").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from zoo.harness.config import TrainConfig

__all__ = ["STOP_REASONS", "Plan"]

STOP_REASONS = ("epochs", "patience", "budget_seconds", "budget_images")


@dataclass(frozen=True)
class Plan:
    """The epochs a run's schedule spans and, once decided, why it stopped.

    Invariant: ``1 <= epochs <= cfg.epochs``; ``cut`` (the micro-batches of the last planned epoch when a
    budget of images ends it early) is None or less than an epoch's micro-batches; ``seconds`` holds one
    ``epoch_seconds`` per finished epoch; ``stop_reason`` is None until the run's last epoch has finished.
    """

    epochs: int
    cut: int | None = None
    seconds: tuple[float, ...] = ()
    stop_reason: str | None = None

    @classmethod
    def start(cls, cfg: TrainConfig, *, crops: int) -> Plan:
        """The plan before the first epoch; ``crops``: the training crops of one pass (the epoch's length
        when ``steps_per_epoch`` is None)."""
        if cfg.budget_images is None:
            return cls(epochs=cfg.epochs)
        step_images = cfg.batch_size * cfg.accumulate
        epoch_images = cfg.steps_per_epoch * step_images if cfg.steps_per_epoch else crops
        full, rest = divmod(cfg.budget_images, epoch_images)
        cut_steps = rest // step_images
        epochs = full + (1 if cut_steps else 0)
        if epochs >= cfg.epochs:  # the budget outlasts the maximum: epochs decides
            return cls(epochs=cfg.epochs)
        # TrainConfig checks that the budget holds one optimiser step: epochs >= 1 here
        return cls(epochs=epochs, cut=cut_steps * cfg.accumulate if cut_steps else None)

    def micro_batches(self, epoch: int, full: int) -> int:
        """The micro-batches epoch ``epoch`` trains on, ``full`` those of a whole epoch (0: one pass)."""
        return self.cut if self.cut is not None and epoch == self.epochs - 1 else full

    def after_epoch(self, cfg: TrainConfig, *, epoch: int, seconds: float, patience_spent: bool) -> Plan:
        """The plan once epoch ``epoch`` has finished in ``seconds`` (its ``epoch_seconds``);
        ``patience_spent``: ``cfg.patience`` epochs have passed without a better validation Dice."""
        finished = (*self.seconds, seconds)
        epochs = self.epochs
        if cfg.budget_seconds is not None and epoch == 0:
            epochs = min(cfg.epochs, max(1, math.floor(cfg.budget_seconds / seconds)))
        budget = "budget_seconds" if cfg.budget_seconds is not None else "budget_images"
        out_of_time = cfg.budget_seconds is not None and (
            sum(finished) + sum(finished) / len(finished) > cfg.budget_seconds
        )
        reason: str | None = None
        if epoch + 1 >= cfg.epochs:
            reason = "epochs"
        elif epoch + 1 >= epochs or out_of_time:  # planned epochs < cfg.epochs only under a budget
            reason = budget
        elif patience_spent:
            reason = "patience"
        return replace(self, epochs=epochs, seconds=finished, stop_reason=reason)

    def state_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint (``torch.load(weights_only=True)`` reads it back)."""
        return {
            "epochs": self.epochs,
            "cut": self.cut,
            "seconds": list(self.seconds),
            "stop_reason": self.stop_reason,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Plan:
        return cls(
            epochs=state["epochs"],
            cut=state["cut"],
            seconds=tuple(state["seconds"]),
            stop_reason=state["stop_reason"],
        )

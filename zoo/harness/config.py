"""The typed configuration of one training run; what a suite expands to and what a run records."""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from zoo.data.augment import AugmentConfig
from zoo.data.registry import get_dataset
from zoo.errors import ConfigError, close_names

__all__ = ["TrainConfig", "UnknownConfigKeyError"]


class UnknownConfigKeyError(ConfigError, TypeError):
    """A config key that is no :class:`TrainConfig` field (a TypeError too, as an unknown keyword is)."""


@dataclass
class TrainConfig:
    """Everything that defines a run. Field names are also the keys of suite files and CLI flags.

    Attributes:
        model: registered model name; ``overrides`` are passed to ``create_model``.
        recipe: the recipe (``zoo.harness.recipes``) the other fields were resolved from, if any; recorded
            with the run and its weights. Only a name: the fields themselves are the resolved values.
        dataset: a registered dataset (``unet-zoo data list``: "isbi2012", "carvana", "carvana512") or the
            path of a dataset file (``my.toml``, :mod:`zoo.data.folder`).
        data_root: folder holding the registered datasets' folders (e.g. ``../shared/data``); None: a
            synthetic twin. A dataset file names its own folders.
        seed: drives initialisation, crops, augmentation and dropout (splits use ``split_seed``).
        epochs: maximum epochs; ``steps_per_epoch`` optimiser steps each (None: one pass over the crops).
        budget_images, budget_seconds: a budget instead of epochs (at most one of them; ``epochs`` stays the
            maximum), so that a suite fits a fixed slot on any device: train on at most this many training
            crops (global batches, summed over micro-batches), or stop once another epoch would not fit in
            this many seconds; the schedule is planned for the epochs the budget allows. The rules are
            :mod:`zoo.harness.budget`'s. From the command line: ``unet-zoo train --set budget_seconds=120``.
        batch_size: the global batch: under ``torchrun`` each of the N processes trains on
            ``batch_size // N`` of its samples (it must divide evenly), so a run draws the same samples
            and takes the same steps whatever N is.
        crop: training crop side; for valid-convolution models the nearest accepted input size is used and
            the loss is taken on the output window.
        resize: decode size ``[H, W]`` (None keeps the stored size).
        max_cars: use only this many groups (cars on Carvana), chosen by ``split_seed``; None: all.
        folds, fold: the validation block of datasets split in blocks (ISBI); val_fraction: the share of
            groups held out of datasets split by groups (Carvana's cars), chosen by ``split_seed``.
        max_val_images: score at most this many validation images (None: all).
        optimizer: "adamw", "adam" or "sgd" (momentum 0.99, as the paper).
        schedule: "cosine", "constant" or "step" (x0.1 at 2/3 of the epochs); warmup_epochs linear warm-up.
        loss: "ce", "dice" or "ce+dice"; dice_weight: the Dice term's weight beside cross-entropy in
            "ce+dice" (the loss mix a study searches; 1: their plain sum); weight_map: the paper's border
            weights on the CE term (datasets whose entry names the class of touching objects: ISBI's cells).
        amp: "auto" (bf16 where supported), "bf16", "fp16" (CUDA, with a grad scaler) or "none".
        channels_last: None = with amp on; compile: ``torch.compile`` the model.
        accumulate: gradient accumulation steps; deterministic: deterministic kernels (slower).
        clip_grad_norm: rescale each step's gradient to at most this global L2 norm (None: never); the
            norm before clipping is logged per epoch (``grad_norm``) either way.
        sync_bn: under ``torchrun``, BatchNorm statistics over the global batch instead of over each
            process's slice (``zoo.harness.distributed.CrossRankBatchNorm``: Gloo/CPU and NCCL/GPU);
            no effect in a single process.
        patience: early stopping after this many epochs without a better validation Dice (None: off).
        augment: AugmentConfig fields; device: "auto", "cpu", "cuda" or "cuda:N".
        synthetic: twin generation (count, size) when data_root is None.
        cost_batch: batch for the inference throughput figure; cost_size: image side for cost figures
            (None: the training crop).
        keep_checkpoint: keep ``checkpoint.pt`` (weights, optimiser state, best weights: several times
            the weights' size) in the run folder once the run has finished. Off: nothing resumes a
            finished run, so only a killed or failed run keeps it, for ``unet-zoo train --resume``.
        weights_dtype: the dtype of the floating-point tensors in the run's ``best.safetensors``:
            "float32", or "float16" (half the disk; the run's final figures are then measured with the
            weights rounded to it, so they are the stored file's figures).
    """

    model: str
    dataset: str
    recipe: str | None = None
    data_root: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    split_seed: int = 0
    epochs: int = 10
    steps_per_epoch: int | None = None
    budget_images: int | None = None
    budget_seconds: float | None = None
    batch_size: int = 4
    crop: int = 256
    resize: list[int] | None = None
    max_cars: int | None = None
    folds: int = 4
    fold: int = 3
    val_fraction: float = 0.2
    max_val_images: int | None = None
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.99
    schedule: str = "cosine"
    warmup_epochs: int = 0
    loss: str = "ce+dice"
    dice_weight: float = 1.0
    weight_map: bool = False
    amp: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    accumulate: int = 1
    clip_grad_norm: float | None = None
    deterministic: bool = False
    sync_bn: bool = False
    patience: int | None = None
    augment: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    synthetic: dict[str, int] = field(default_factory=dict)
    cost_batch: int = 4
    cost_size: int | None = None
    keep_checkpoint: bool = False
    weights_dtype: str = "float32"

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "optimizer": ("adamw", "adam", "sgd"),
        "schedule": ("cosine", "constant", "step"),
        "loss": ("ce", "dice", "ce+dice"),
        "amp": ("auto", "bf16", "fp16", "none"),
        "weights_dtype": ("float32", "float16"),
    }

    # inclusive lower bound and exclusive upper bound (None: none) of the numeric fields
    RANGES: ClassVar[dict[str, tuple[float, float | None]]] = {
        "seed": (0, None),
        "split_seed": (0, None),
        "epochs": (1, None),
        "steps_per_epoch": (1, None),
        "batch_size": (1, None),
        "crop": (1, None),
        "max_cars": (1, None),
        "folds": (2, None),
        "fold": (0, None),
        "max_val_images": (1, None),
        "lr": (0, None),  # 0 is allowed: a run that must not improve (tests of early stopping)
        "weight_decay": (0, None),
        "dice_weight": (0, None),
        "momentum": (0, 1),
        "warmup_epochs": (0, None),
        "accumulate": (1, None),
        "patience": (1, None),
        "cost_batch": (1, None),
        "cost_size": (1, None),
    }

    def __post_init__(self) -> None:
        for name, choices in self.CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                close = difflib.get_close_matches(str(value), choices, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}.{hint}")
        self._check_numbers()
        self._check_budget()
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ConfigError(f"clip_grad_norm={self.clip_grad_norm!r} must be > 0 (or None: no clipping)")
        self._check_tables()
        AugmentConfig.from_dict(self.augment)  # its keys and values, before any run starts
        unknown = (
            sorted(set(self.synthetic) - {"count", "size", "seed"})
            if isinstance(self.synthetic, dict)
            else None
        )
        if unknown is None or unknown:
            raise ConfigError(
                f"synthetic={self.synthetic!r}: the twin's settings are count, size and seed, e.g. "
                '--set \'synthetic={"count": 8, "size": 128}\''
            )
        entry = get_dataset(self.dataset)  # an unknown name fails here, with the close ones
        if self.weight_map and entry.weight_map_class is None:
            raise ConfigError(
                f"weight_map=True is the paper's border weight between touching objects; dataset "
                f"{entry.name!r} names no object class for it (ISBI does; a dataset file can, with "
                "weight_map_class)"
            )

    def _check_numbers(self) -> None:
        """Each scalar field has its declared type (``--set lr=abc`` or ``epochs=1.5`` fail here, naming
        the field) and lies in its range (``steps_per_epoch=-1`` would train nothing and finish)."""
        kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
        for f in dataclasses.fields(self):
            declared = str(f.type)
            kind = declared.removesuffix(" | None")
            if kind not in kinds:
                continue  # dicts and lists: checked where they are read
            value = getattr(self, f.name)
            if value is None and declared.endswith(" | None"):
                continue
            if not isinstance(value, kinds[kind]) or (kind != "bool" and isinstance(value, bool)):
                none = " or null" if declared.endswith(" | None") else ""
                wanted = "a whole number" if kind == "int" else f"a {kind}"
                raise ConfigError(f"{f.name}={value!r}: expected {wanted}{none} (--set {f.name}=VALUE)")
        for name, (low, high) in self.RANGES.items():
            value = getattr(self, name)
            if value is not None and not (low <= value and (high is None or value < high)):
                upper = f" and below {high}" if high is not None else ""
                raise ConfigError(f"{name}={value!r} must be at least {low}{upper}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction={self.val_fraction!r} must be between 0 and 1 (exclusive)")
        if self.fold >= self.folds:
            raise ConfigError(f"fold={self.fold!r} must be below folds={self.folds!r} (folds count from 0)")

    def _check_tables(self) -> None:
        """The list and table fields have their shape (``--set resize=[1]`` or ``overrides=3`` fail here,
        naming the field, not deep inside a run)."""
        r = self.resize
        if r is not None and not (
            isinstance(r, list)
            and len(r) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in r)
        ):
            raise ConfigError(
                f"resize={r!r}: expected [H, W], two whole numbers >= 1, or null (--set resize=[256,256])"
            )
        if not isinstance(self.overrides, dict) or not all(isinstance(k, str) for k in self.overrides):
            raise ConfigError(
                f"overrides={self.overrides!r}: expected a table of model arguments, e.g. "
                "--override base_channels=16 (or --set 'overrides={\"base_channels\": 16}')"
            )

    def _check_budget(self) -> None:
        images, seconds = self.budget_images, self.budget_seconds
        if images is not None and seconds is not None:
            raise ConfigError(
                f"budget_images={images!r} and budget_seconds={seconds!r} are both set; a run has one "
                "budget: keep one of them (epochs stays the maximum either way)"
            )
        if images is not None:
            step_images = self.batch_size * self.accumulate
            if isinstance(images, bool) or not isinstance(images, int) or images < step_images:
                raise ConfigError(
                    f"budget_images={images!r} must be a whole number of training crops, at least one "
                    f"optimiser step's {step_images} (batch_size={self.batch_size} x "
                    f"accumulate={self.accumulate}); raise it, or use None for no budget"
                )
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0
        ):
            raise ConfigError(f"budget_seconds={seconds!r} must be > 0 (or None: no time budget)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from plain data (a suite entry, a saved config), rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UnknownConfigKeyError(
                f"unknown config key(s) {unknown}. {close_names(unknown, known)} "
                f"Known keys: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @property
    def run_name(self) -> str:
        return f"{self.model}-{get_dataset(self.dataset).name}-s{self.seed}"

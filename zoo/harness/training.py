"""The training loop: one readable function from config to a finished, recorded run.

Per epoch: random crops -> batched augmentation on the device -> forward/backward (autocast,
channels-last) -> optimiser step; then whole-image validation, MLflow metrics, the best weights
(safetensors) and a checkpoint (atomic write). A killed run resumes from its last checkpoint into the
same MLflow run and loses only the unfinished epoch: crops, augmentation and dropout are seeded per
epoch, so a resumed run continues exactly as an uninterrupted one would. A finished run has nothing to
resume: it deletes its checkpoint (unless ``keep_checkpoint``) and keeps ``best.safetensors``,
``config.json``, ``run.json`` and its overlays.

Under ``torchrun`` the same function trains data-parallel (see :mod:`zoo.harness.distributed`): each
process loads and augments its part of every global batch (``zoo.data.loader.ShardedBatchSampler``),
the loss is that of the whole global batch, and rank 0 alone validates, records to MLflow and writes
checkpoints and weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from zoo import create_model
from zoo.data.augment import AugmentConfig, augment_batch
from zoo.data.loader import RandomCrops, ShardedBatchSampler, make_loader, unit_float
from zoo.errors import ConfigError, ZooError
from zoo.harness import distributed
from zoo.harness.budget import Plan
from zoo.harness.config import TrainConfig
from zoo.harness.data import RunData, build_data
from zoo.harness.distributed import Distributed, all_reduce_sum
from zoo.harness.evaluate import evaluate, save_overlay
from zoo.harness.recipes import recipe_tuning
from zoo.harness.throughput import measure_cost
from zoo.harness.tracking import Tracker, class_names_param, git_state
from zoo.machine import describe_machine
from zoo.models.base import SegmentationModel
from zoo.runtime import Precision, resolve_device
from zoo.tiling import TiledInferer
from zoo.weights import TrainingScale, save_weights

__all__ = [
    "EpochCallback",
    "NonFiniteLossError",
    "RunResult",
    "RunStopped",
    "prepare_model",
    "run_inferer",
    "train",
]

log = logging.getLogger(__name__)


class NonFiniteLossError(ZooError, FloatingPointError):
    """The loss became NaN or infinite; the run is marked failed and its last checkpoint kept."""


class RunStopped(Exception):
    """Raised by an epoch callback to end the run after that epoch: a study pruning a trial.

    The run is recorded as stopped (MLflow status KILLED, tag ``zoo.stopped`` = ``reason``) with its
    per-epoch curve and no final figures; its checkpoint is dropped (nothing resumes a stopped trial)."""

    def __init__(self, reason: str = "pruned") -> None:
        super().__init__(reason)
        self.reason = reason
        self.run_id = ""  # set by the loop: the stopped run's MLflow id


EpochCallback = Callable[[int, Mapping[str, float]], None]
"""Called after each epoch is validated, checkpointed and recorded, with the epoch and its metrics
(``val_dice`` ...): a study reports the curve to its pruner, and raises :class:`RunStopped` to prune.
Single-process runs only (under torchrun the other ranks would not learn of the stop)."""


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    metrics: dict[str, float]


def prepare_model(
    cfg: TrainConfig, in_channels: int, num_classes: int, device: torch.device
) -> tuple[SegmentationModel, Precision]:
    """The run's model on its device, in the precision it trains and is evaluated in (channels-last
    wherever autocast is on, unless the config says otherwise)."""
    precision = Precision.resolve(cfg.amp, device, cfg.channels_last)
    model = create_model(cfg.model, in_channels=in_channels, num_classes=num_classes, **cfg.overrides)
    if not isinstance(model, SegmentationModel):
        raise ConfigError(
            f"{cfg.model}: the harness needs a zoo SegmentationModel, got {type(model).__name__}"
        )
    precision.model(model.to(device))
    return model, precision


def run_inferer(cfg: TrainConfig, precision: Precision) -> TiledInferer:
    """How a run predicts its validation images (during training, for its final figures and when it is
    rescored): whole images, ``batch_size`` at a time, in the run's precision."""
    return TiledInferer(batch_size=cfg.batch_size, precision=precision)


# -- the pieces of a step ----------------------------------------------------------------------------------
_SINGLE = Distributed()  # one process: no collectives


def _seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def _loss(
    cfg: TrainConfig, logits: Tensor, target: Tensor, weight: Tensor | None, ctx: Distributed = _SINGLE
) -> Tensor:
    """The batch's loss. Data-parallel, its sums are all-reduced first: each rank gets the loss of the
    global batch (Dice does not split into per-sample terms), and its gradient, with respect to the
    rank's own samples, stays exact."""
    logits = logits.float()
    total = logits.new_zeros(())
    if "ce" in cfg.loss.split("+"):
        ce = F.cross_entropy(logits, target.clamp(min=0), reduction="none")
        valid = (target >= 0).float()
        if weight is not None:
            ce = ce * weight
        ce_sum, count = all_reduce_sum((ce * valid).sum(), ctx), all_reduce_sum(valid.sum(), ctx)
        total = total + ce_sum / count.clamp(min=1)
    if "dice" in cfg.loss.split("+"):
        probs = logits.softmax(1)[:, 1:]
        onehot = F.one_hot(target.clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
        valid = (target >= 0).unsqueeze(1).float()
        inter = all_reduce_sum((probs * onehot * valid).sum((0, 2, 3)), ctx)
        denom = all_reduce_sum(((probs + onehot) * valid).sum((0, 2, 3)), ctx)
        total = total + cfg.dice_weight * (1 - (2 * inter + 1) / (denom + 1)).mean()
    return total


def _center(t: Tensor, size: int) -> Tensor:
    top = (t.shape[-2] - size) // 2
    left = (t.shape[-1] - size) // 2
    return t[..., top : top + size, left : left + size]


def _optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # on CUDA, one fused kernel updates every parameter instead of a few kernels per tensor
    fused = True if next(model.parameters()).is_cuda else None
    params, lr, decay = model.parameters(), cfg.lr, cfg.weight_decay
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=decay, fused=fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay, fused=fused)
    return torch.optim.AdamW(params, lr=lr, weight_decay=decay, fused=fused)


def _lr(cfg: TrainConfig, epoch: int, planned_epochs: int) -> float:
    """The learning rate of epoch ``epoch`` for a schedule planned over ``planned_epochs`` epochs.

    A function of the epoch and the plan alone, set at the start of each epoch: a resumed run needs no
    scheduler state, and a plan changed by a time budget (``zoo.harness.budget``) applies from the next
    epoch on."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * ((epoch + 1) / (cfg.warmup_epochs + 1))
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * (0.1 if epoch >= math.ceil(planned_epochs * 2 / 3) else 1.0)
    span = max(planned_epochs - cfg.warmup_epochs, 1)
    return cfg.lr * (0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span)))


def _unscale_and_clip(
    cfg: TrainConfig, model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> Tensor:
    """The gradient's global L2 norm before the step (logged per epoch: the size of what SGD is asked to
    follow), clipped to ``cfg.clip_grad_norm`` when set. Gradients are unscaled first (fp16's scaler)."""
    scaler.unscale_(opt)
    limit = cfg.clip_grad_norm if cfg.clip_grad_norm is not None else math.inf
    return torch.nn.utils.clip_grad_norm_(model.parameters(), limit).detach()


def _atomic_save(obj: Any, path: Path) -> None:
    # write then rename: a process killed mid-write leaves the previous checkpoint intact
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# -- the entry point ---------------------------------------------------------------------------------------
def train(
    cfg: TrainConfig | None,
    *,
    tracker: Tracker | None,
    workdir: str | Path = "runs",
    parent_run_id: str | None = None,
    resume: str | Path | None = None,
    tags: Mapping[str, str] | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> RunResult:
    """Train and evaluate one (model, dataset, seed) run, recorded in MLflow.

    Under ``torchrun`` every process calls this with the same arguments and gets the same result; the
    process group is started here (Gloo on CPU, NCCL on ``cuda:LOCAL_RANK``) unless already running.

    Args:
        cfg: the run's configuration; None when resuming (the run's saved config is used).
        tracker: where the run is recorded; may be None on torchrun ranks other than 0, which never
            record (rank 0 sends them the run id and folder).
        workdir: holds run folders (checkpoints, best weights) and synthetic twins.
        parent_run_id: the suite's parent run.
        resume: a run folder of a run that was killed or failed; training continues from its last
            checkpoint. A finished run is refused: it has dropped its checkpoint (``keep_checkpoint``).
        on_epoch: called on the recording process after each epoch's validation (:data:`EpochCallback`);
            raising :class:`RunStopped` there ends the run as stopped.

    Raises:
        RunStopped: ``on_epoch`` stopped the run (it is recorded as stopped).
    """
    workdir = Path(workdir)
    if resume is None and cfg is None:
        raise ValueError("train() needs a config, or resume=RUN_DIR")
    if resume is not None:
        cfg = _resumable_config(Path(resume), tracker)
    assert cfg is not None
    with distributed.session(resolve_device(cfg.device)) as (ctx, device):
        if ctx.is_main and tracker is None:
            raise ValueError("train() needs a tracker (only torchrun ranks other than 0 may pass None)")
        if cfg.batch_size % ctx.world_size:
            raise ConfigError(
                f"batch_size={cfg.batch_size} is the global batch and must split evenly among the "
                f"{ctx.world_size} processes; use a multiple of {ctx.world_size}"
            )
        run = _Run.build(cfg, ctx, device, tracker if ctx.is_main else None, workdir=workdir)
        if resume is None:
            run.start(workdir, parent_run_id=parent_run_id, tags=tags)
            state = _Progress()
        else:
            state = run.resume(Path(resume))
        return _train(run, state, progress=progress and ctx.is_main, on_epoch=on_epoch)


def _resumable_config(run_dir: Path, tracker: Tracker | None) -> TrainConfig:
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise ConfigError(f"{meta_path}: not a run folder (no run.json); pass the folder a run created")
    run_id = json.loads(meta_path.read_text(encoding="utf-8"))["run_id"]
    # Checked on the recording process only; under torchrun its error ends the other ranks too.
    if tracker is not None and tracker.run_status(run_id) == "FINISHED":
        raise ConfigError(
            f"{run_dir}: run {run_id} has FINISHED; there is nothing to resume (a finished run keeps "
            "best.safetensors and drops its checkpoint unless keep_checkpoint=true). Start a new run "
            "with `unet-zoo train`, or score this one with `unet-zoo evaluate`."
        )
    return TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text(encoding="utf-8")))


# -- the loop ----------------------------------------------------------------------------------------------
def _train(run: _Run, state: _Progress, *, progress: bool, on_epoch: EpochCallback | None) -> RunResult:
    """Epochs until the plan stops, then the final figures. Rank 0 validates, records and checkpoints;
    every rank trains."""
    cfg, ctx, rec = run.cfg, run.ctx, run.rec
    try:
        plan = state.plan or Plan.start(cfg, crops=len(run.crops))
        # a run killed after its last epoch's checkpoint has nothing left to train
        epochs = range(state.next_epoch, cfg.epochs) if plan.stop_reason is None else range(0)
        bar = tqdm(epochs, desc=cfg.run_name, disable=not progress or None, leave=False)
        for epoch in bar:
            t0 = time.perf_counter()
            lr = _lr(cfg, epoch, plan.epochs)
            stats = run.train_epoch(epoch, lr, plan.micro_batches(epoch, run.micro_batches), progress)
            if rec is not None:
                metrics = {**stats, "lr": lr, "train_seconds": time.perf_counter() - t0}
                val = run.validate()
                metrics.update({f"val_{k}": v for k, v in val.items()})
                metrics["epoch_seconds"] = time.perf_counter() - t0
                state.after_epoch(epoch, val, run.model)
                plan = plan.after_epoch(
                    cfg,
                    epoch=epoch,
                    seconds=metrics["epoch_seconds"],
                    patience_spent=cfg.patience is not None and state.bad_epochs >= cfg.patience,
                )
                run.save_checkpoint(state, plan, metrics)
                rec.log_metrics(run.run_id, metrics, step=epoch)
                log.info(
                    "%s: epoch %d of %d: loss %.4f, val Dice %.4f (best %.4f), %.0f s",
                    cfg.run_name,
                    epoch + 1,
                    plan.epochs,
                    metrics["train_loss"],
                    val["dice"],
                    state.best,
                    metrics["epoch_seconds"],
                )
                if plan.stop_reason is not None:
                    log.info("%s: stops after epoch %d (%s)", cfg.run_name, epoch, plan.stop_reason)
                if on_epoch is not None:  # the epoch is recorded: a study may prune the run here
                    on_epoch(epoch, metrics)
            # rank 0's plan (a time budget's, its stop) for every rank: all train the same epochs
            plan = distributed.broadcast(plan, ctx)
            if plan.stop_reason is not None:
                break
        result = run.finish(state, plan) if rec is not None else None
        result = distributed.broadcast(result, ctx)
        assert result is not None
        return result
    except RunStopped as stop:  # a study's decision: the curve so far is the record
        stop.run_id = run.run_id
        if rec is not None:
            rec.set_tags(run.run_id, {"zoo.stopped": stop.reason})
            rec.finish(run.run_id, "KILLED")
            _drop_checkpoint(cfg, run.run_dir, force=True)
        raise
    except KeyboardInterrupt:
        if rec is not None:
            rec.finish(run.run_id, "KILLED")
        raise
    except BaseException:
        if rec is not None:
            rec.finish(run.run_id, "FAILED")
        raise


@dataclass
class _Progress:
    """What a run has achieved so far: the checkpoint holds it beside the model and optimiser."""

    next_epoch: int = 0
    best: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_state: dict[str, Tensor] = field(default_factory=dict)
    plan: Plan | None = None

    def after_epoch(self, epoch: int, val: dict[str, float], model: torch.nn.Module) -> None:
        """Epoch ``epoch`` has finished with validation figures ``val``: keep its weights if it is the
        best so far (by Dice)."""
        self.next_epoch = epoch + 1
        if val["dice"] > self.best:
            self.best, self.best_epoch, self.bad_epochs, self.best_metrics = val["dice"], epoch, 0, val
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1


@dataclass
class _Run:
    """One run's fixed parts: config, processes, data, model, optimiser and where it is recorded.

    ``rec`` is the tracker on rank 0 (and in a single process), None on the other ranks."""

    cfg: TrainConfig
    ctx: Distributed
    device: torch.device
    rec: Tracker | None
    data: RunData
    model: SegmentationModel
    step_model: torch.nn.Module  # the model as the step calls it: DDP- or compile-wrapped
    precision: Precision
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    crop: int
    out_size: int
    crops: RandomCrops
    micro_batches: int  # of a whole epoch; 0: one pass over the crops
    augment: AugmentConfig
    inferer: TiledInferer  # how validation images are predicted (run_inferer)
    scale: TrainingScale
    run_id: str = ""
    run_dir: Path = Path()

    @classmethod
    def build(
        cls, cfg: TrainConfig, ctx: Distributed, device: torch.device, rec: Tracker | None, *, workdir: Path
    ) -> _Run:
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        data = build_data(cfg, workdir)
        ds, split = data.dataset, data.split
        model, precision = prepare_model(cfg, ds.in_channels, ds.num_classes, device)
        if cfg.sync_bn and ctx.enabled:
            distributed.convert_sync_batchnorm(model)  # swaps the BatchNorm children in place
        crop = model.nearest_valid_input_size(cfg.crop)
        if crop != cfg.crop:
            log.warning(
                "%s: crop=%d is not an input size %s takes; training at %d",
                cfg.run_name,
                cfg.crop,
                cfg.model,
                crop,
            )
        out_size = model.output_size(crop)
        step_model: torch.nn.Module = model
        if ctx.enabled:
            # averages the gradients over ranks; the weights stay those of `model` (same state-dict keys)
            step_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if cfg.compile:
            step_model = torch.compile(step_model)  # type: ignore[assignment]
        micro_batches = (cfg.steps_per_epoch or 0) * cfg.accumulate
        repeats = max(1, math.ceil(micro_batches * cfg.batch_size / len(split.train))) if micro_batches else 1
        crops = RandomCrops(
            ds, split.train, (crop, crop), repeats=repeats, seed=cfg.seed, context=(crop - out_size) // 2
        )
        # the pixel scale of the training images, recorded with the weights so that predict brings its
        # inputs to it (a resize) or warns about inputs far from the images' size
        height, width = ds.arrays(split.train[0])[0].shape[:2]
        resize = (cfg.resize[0], cfg.resize[1]) if cfg.resize else None
        return cls(
            cfg=cfg,
            ctx=ctx,
            device=device,
            rec=rec,
            data=data,
            model=model,
            step_model=step_model,
            precision=precision,
            opt=_optimizer(cfg, model),
            scaler=torch.amp.GradScaler(device.type, enabled=precision.autocast_dtype == torch.float16),
            crop=crop,
            out_size=out_size,
            crops=crops,
            micro_batches=micro_batches,
            augment=AugmentConfig(**cfg.augment),
            inferer=run_inferer(cfg, precision),
            scale=TrainingScale(resize=resize, image_size=(height, width)),
        )

    # -- recording ---------------------------------------------------------------------------------------
    def start(self, workdir: Path, *, parent_run_id: str | None, tags: Mapping[str, str] | None) -> None:
        """A new MLflow run (rank 0) with its folder, config and params; every rank learns its id."""
        run_id, run_dir = "", workdir
        if self.rec is not None:
            cfg, rec = self.cfg, self.rec
            run_id = rec.start_run(
                cfg.run_name, parent_run_id=parent_run_id, tags={"zoo.kind": "run", **(tags or {})}
            )
            run_dir = workdir / rec.experiment / f"{cfg.run_name}-{run_id[:8]}"
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(cfg.to_json() + "\n", encoding="utf-8")
            (run_dir / "run.json").write_text(
                json.dumps({"run_id": run_id, "experiment": rec.experiment}) + "\n", encoding="utf-8"
            )
            rec.log_params(run_id, self._params())
            tags_ = {
                **git_state(),
                "torch_version": torch.__version__,
                "cuda_version": str(torch.version.cuda),
                "device_name": describe_machine(self.device)["device_name"],
            }
            rec.set_tags(run_id, tags_)
            rec.log_artifact(run_id, run_dir / "config.json", "config")
            if self.data.entry.source is not None:  # a dataset file: its content, as the run read it
                rec.log_artifact(run_id, self.data.entry.source, "dataset")
        self.run_id, self.run_dir = distributed.broadcast((run_id, run_dir), self.ctx)

    def _params(self) -> dict[str, Any]:
        cfg, ds, split = self.cfg, self.data.dataset, self.data.split
        params: dict[str, Any] = {
            f"cfg.{k}": json.dumps(v) if isinstance(v, dict | list) else v for k, v in cfg.to_dict().items()
        }
        params.update(split.as_params(ds.names))
        params.update(
            {
                "model_args": json.dumps(self.model.model_args, sort_keys=True, default=str),
                "recipe_tuning": recipe_tuning(cfg.recipe),
                "data_source": self.data.source,
                **self.data.entry.describe(ds),
                **class_names_param(ds.class_names),
                "train_input_size": self.crop,
                "train_image_size": json.dumps(self.scale.as_record()["image_size"]),
                "train_output_size": self.out_size,
                "device": str(self.device),
                "dtype": self.precision.dtype_name,
                "memory_format": self.precision.memory_format,
                "train_images": len(split.train),
                "val_images": len(split.val),
                "world_size": self.ctx.world_size,
            }
        )
        return params

    def resume(self, run_dir: Path) -> _Progress:
        """The killed run's progress, its model and optimiser restored from its last checkpoint."""
        self.run_dir = run_dir
        self.run_id = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["run_id"]
        if self.rec is not None:
            self.rec.resume_run(self.run_id)
        path = run_dir / "checkpoint.pt"
        if not path.is_file():  # killed before its first epoch ended: it starts over, in the same run
            return _Progress()
        ckpt = torch.load(path, map_location=self.device, weights_only=True)  # never executes code
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        state = _Progress(
            next_epoch=ckpt["epoch"] + 1,
            best=ckpt["best"],
            best_epoch=ckpt["best_epoch"],
            bad_epochs=ckpt["bad_epochs"],
            best_metrics=ckpt["best_metrics"],
            best_state=ckpt["best_model"],
            # checkpoints written before budgets have no plan: epochs was the plan
            plan=Plan.from_state_dict(ckpt["plan"]) if "plan" in ckpt else None,
        )
        # killed between the checkpoint and the metrics upload: record that epoch now, exactly once
        if self.rec is not None and ckpt["epoch"] not in self.rec.logged_steps(self.run_id, "val_dice"):
            self.rec.log_metrics(self.run_id, ckpt["epoch_metrics"], step=ckpt["epoch"])
        log.info("resuming %s at epoch %d", self.run_id, state.next_epoch)
        return state

    def save_checkpoint(self, state: _Progress, plan: Plan, metrics: Mapping[str, float]) -> None:
        """The single record of progress (best weights included): written before the epoch's metrics are
        sent, and atomically, so a kill at any point leaves a consistent state to resume from."""
        _atomic_save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict(),
                "epoch": state.next_epoch - 1,
                "best": state.best,
                "best_epoch": state.best_epoch,
                "bad_epochs": state.bad_epochs,
                "best_metrics": state.best_metrics,
                "best_model": state.best_state,
                "epoch_metrics": dict(metrics),
                "plan": plan.state_dict(),
            },
            self.run_dir / "checkpoint.pt",
        )

    # -- training and validation -----------------------------------------------------------------------
    def train_epoch(self, epoch: int, lr: float, limit: int, progress: bool) -> dict[str, float]:
        """One epoch of optimiser steps (``limit`` micro-batches; 0: one pass over the crops); returns
        its mean loss, micro-batches and mean gradient norm. Crops, augmentation and dropout are seeded by
        the epoch, so a resumed run repeats exactly what an uninterrupted one would."""
        cfg, ctx, device, model, opt, scaler = (
            self.cfg,
            self.ctx,
            self.device,
            self.model,
            self.opt,
            self.scaler,
        )
        for group in opt.param_groups:
            group["lr"] = lr
        self.crops.set_epoch(epoch)
        gen = torch.Generator().manual_seed(_seed(cfg.seed, epoch))
        # dropout; each rank its own masks, or all ranks would drop the same units of different samples
        torch.manual_seed(_seed(_seed(cfg.seed, epoch), ctx.rank) if ctx.enabled else _seed(cfg.seed, epoch))
        # global batches in the sampler's seeded order (same crops); each rank loads its part only
        loader = make_loader(
            self.crops,
            batch_size=cfg.batch_size,
            shuffle=True,
            in_memory=True,
            seed=_seed(cfg.seed, epoch),
            device=device,
            shard=(ctx.rank, ctx.world_size),
        )
        sampler = loader.batch_sampler
        assert isinstance(sampler, ShardedBatchSampler)
        self._check_last_batch(sampler, limit)
        model.train()
        loss_sum = torch.zeros((), device=device)
        grad_norm_sum = torch.zeros((), device=device)
        steps = 0
        # micro-batches this epoch, and the last optimiser step's share when accumulate does not divide
        # them: that step averages over its own micro-batches instead of dropping their gradients
        total = min(limit, len(loader)) if limit else len(loader)
        whole = total - total % cfg.accumulate
        opt.zero_grad(set_to_none=True)
        bar = tqdm(
            loader,
            total=limit or len(loader),
            desc=f"epoch {epoch}",
            leave=False,
            disable=not progress or None,
        )
        for i, batch in enumerate(bar):
            if limit and i >= limit:
                break
            # uint8 crops travel; they become float on the device
            image = unit_float(batch[0].to(device, non_blocking=True))
            mask = batch[1].to(device, non_blocking=True)
            weight = batch[2].to(device) if len(batch) > 2 else None
            # random numbers drawn for the whole global batch, this rank's rows kept: each sample is
            # augmented as one process would augment it
            image, mask, weight = augment_batch(
                image, mask, weight, config=self.augment, generator=gen, part=sampler.part(i)
            )
            with self.precision.autocast(device):
                logits = self.step_model(self.precision.input(image))
            window = None if weight is None else _center(weight, self.out_size)
            loss = _loss(cfg, logits, _center(mask, self.out_size), window, ctx)
            # on CPU the check is free; on a GPU it would sync every step, so look every 8 steps there.
            # The loss is the global batch's, the same on every rank: all ranks stop together.
            if (device.type == "cpu" or i % 8 == 0) and not torch.isfinite(loss_sum + loss):
                raise NonFiniteLossError(
                    f"{cfg.run_name}: non-finite loss ({loss.item()}) at epoch {epoch}, batch {i} (lr "
                    f"{lr:.3g}); the run is marked FAILED and the checkpoint of the last good epoch "
                    "kept. Lower the learning rate, use amp='bf16' or 'none' instead of fp16, or check "
                    "the data for NaN."
                )
            group = cfg.accumulate if i < whole else total - whole
            scaler.scale(loss / group).backward()
            if (i + 1) % cfg.accumulate == 0 or i + 1 == total:
                grad_norm_sum += _unscale_and_clip(cfg, model, opt, scaler)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            steps += 1
        train_loss = (loss_sum / max(steps, 1)).item()
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"{cfg.run_name}: non-finite mean loss in epoch {epoch}; run marked FAILED"
            )
        return {
            "train_loss": train_loss,
            "train_steps": float(steps),
            "grad_norm": (grad_norm_sum / max(math.ceil(steps / cfg.accumulate), 1)).item(),
        }

    def _check_last_batch(self, sampler: ShardedBatchSampler, limit: int) -> None:
        short = sampler.first_short_batch()
        if short is not None and (not limit or short < limit):
            # a rank with no sample would feed BatchNorm an empty batch (NaN statistics)
            raise ConfigError(
                f"{self.cfg.run_name}: an epoch of {len(self.crops)} crops ends with a global batch of "
                f"{len(self.crops) % self.cfg.batch_size}, fewer samples than the {self.ctx.world_size} "
                f"processes; set steps_per_epoch (times accumulate) to at most {short}, or a batch_size "
                "that leaves no such remainder"
            )

    def validate(self, model: SegmentationModel | None = None) -> dict[str, float]:
        """Quality of ``model`` (default: the run's) on the whole validation images (rank 0)."""
        return evaluate(
            model or self.model,
            self.data.dataset,
            self.data.split.val,
            inferer=self.inferer,
            isbi=self.data.entry.isbi,
            max_images=self.cfg.max_val_images,
        )

    # -- the end ---------------------------------------------------------------------------------------------
    def finish(self, state: _Progress, plan: Plan) -> RunResult:
        """The best epoch's weights written, their cost measured, artifacts logged, the run FINISHED."""
        cfg, rec, ds = self.cfg, self.rec, self.data.dataset
        assert rec is not None
        model = self.model
        if cfg.sync_bn and self.ctx.enabled:
            # synchronised BatchNorm in training mode waits for the other ranks, as measure_cost's
            # training step (rank 0 alone) would: the final figures are taken on a plain copy
            model = prepare_model(cfg, ds.in_channels, ds.num_classes, self.device)[0]
        model.load_state_dict(state.best_state)
        best_metrics, stored = state.best_metrics, getattr(torch, cfg.weights_dtype)
        if stored != torch.float32:
            # the figures of the file as stored: the weights rounded to its dtype, then measured again
            rounded = {k: v.to(stored) if v.is_floating_point() else v for k, v in state.best_state.items()}
            model.load_state_dict(rounded)
            best_metrics = self.validate(model)
        record = {
            "dataset": self.data.entry.name,
            "epoch": state.best_epoch,
            "metrics": best_metrics,
            "run_id": self.run_id,
            **self.scale.as_record(),
        }
        save_weights(model, self.run_dir / "best.safetensors", record, dtype=stored)
        final = {**best_metrics, "best_epoch": float(state.best_epoch)}
        cost = measure_cost(
            model,
            size=cfg.cost_size or self.crop,
            batch=cfg.cost_batch,
            precision=self.precision,
        )
        rec.log_metrics(self.run_id, {**final, **cost}, step=state.best_epoch)
        rec.log_params(
            self.run_id,
            {
                "cost_size": model.nearest_valid_input_size(cfg.cost_size or self.crop),
                "cost_batch": cfg.cost_batch,
                "planned_epochs": plan.epochs,
                "stop_reason": plan.stop_reason or "epochs",
                "stopped_early": plan.stop_reason == "patience",
            },
        )
        self._log_artifacts(model)
        rec.finish(self.run_id, "FINISHED")
        _drop_checkpoint(cfg, self.run_dir)
        return RunResult(self.run_id, self.run_dir, {**final, **cost})

    def _log_artifacts(self, model: SegmentationModel) -> None:
        assert self.rec is not None
        self.rec.log_artifact(self.run_id, self.run_dir / "best.safetensors", "weights")
        ds, inferer = self.data.dataset, self.inferer
        for i in self.data.split.val[:2]:
            image, mask = ds[i][0], ds[i][1]
            pred = inferer.logits(model, image).argmax(1)[0]
            path = save_overlay(self.run_dir / "overlays" / f"{ds.names[i]}.png", image, mask == 1, pred == 1)
            self.rec.log_artifact(self.run_id, path, "overlays")


def _drop_checkpoint(cfg: TrainConfig, run_dir: Path, *, force: bool = False) -> None:
    # Only after the run is marked FINISHED (or stopped): a process killed before that leaves a run that
    # is still RUNNING, which --resume must be able to pick up from this file.
    path = run_dir / "checkpoint.pt"
    if (cfg.keep_checkpoint and not force) or not path.is_file():
        return
    size = path.stat().st_size
    try:
        path.unlink()
    except OSError as err:  # the run itself is complete and recorded: a leftover file must not fail it
        log.warning("%s: could not remove its checkpoint %s: %s", cfg.run_name, path, err)
        return
    log.debug(  # the suite's progress line is the one a user reads per run
        "%s: finished; removed its checkpoint (%.1f MB; keep_checkpoint=true keeps it)",
        cfg.run_name,
        size / 1e6,
    )

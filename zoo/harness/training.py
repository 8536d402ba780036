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
from collections.abc import Mapping
from dataclasses import dataclass
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
from zoo.harness import distributed
from zoo.harness.budget import Plan
from zoo.harness.config import TrainConfig
from zoo.harness.data import build_data
from zoo.harness.distributed import Distributed, all_reduce_sum
from zoo.harness.evaluate import evaluate, save_overlay
from zoo.harness.throughput import measure_cost
from zoo.harness.tracking import Tracker, class_names_param, git_state
from zoo.machine import describe_machine
from zoo.models.base import SegmentationModel
from zoo.tiling import predict_logits
from zoo.weights import TrainingScale, save_weights

__all__ = [
    "NonFiniteLossError",
    "RunResult",
    "prepare_model",
    "resolve_amp",
    "resolve_channels_last",
    "resolve_device",
    "train",
]

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run is marked failed and its last checkpoint kept."""


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    metrics: dict[str, float]


def resolve_device(name: str) -> torch.device:
    """The device ``name`` ("auto": CUDA when there is one) names, ready to compute on.

    On a CPU this also flushes denormal floats to zero for the process (``torch.set_flush_denormal``):
    gradients and activations that decay below 1e-38 otherwise take x86's microcode path, and a
    ``unet_bn`` training step on this project's 2-core Intel Xeon took 7.9 s instead of 0.82 s (bf16,
    width 32, 192x192, batch 4). Values that small change no result."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available here; use device='cpu' or 'auto'")
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 where the hardware supports it ("auto"), fp16 on CUDA only, or None."""
    if amp == "none":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device (on CPU use 'bf16' or 'none')")
        return torch.float16
    if device.type == "cuda":
        if amp == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if amp == "bf16" or supported:
        return torch.bfloat16
    return None


def resolve_channels_last(requested: bool | None, amp: torch.dtype | None) -> bool:
    """Channels-last as requested, or (None) wherever autocast is on: oneDNN/cuDNN's fast reduced-precision
    convolutions want NHWC, and in fp32 eager it is not reliably faster."""
    return requested if requested is not None else amp is not None


def prepare_model(
    cfg: TrainConfig, in_channels: int, num_classes: int, device: torch.device
) -> tuple[SegmentationModel, torch.dtype | None, bool]:
    """The run's model on its device, with its autocast dtype and memory format (training and evaluation
    alike): channels-last defaults to on wherever autocast is on."""
    amp = resolve_amp(cfg.amp, device)
    channels_last = resolve_channels_last(cfg.channels_last, amp)
    model = create_model(cfg.model, in_channels=in_channels, num_classes=num_classes, **cfg.overrides)
    if not isinstance(model, SegmentationModel):
        raise TypeError(f"{cfg.model}: the harness needs a zoo SegmentationModel, got {type(model).__name__}")
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, amp, channels_last


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
        total = total + (1 - (2 * inter + 1) / (denom + 1)).mean()
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


def train(
    cfg: TrainConfig | None,
    *,
    tracker: Tracker | None,
    workdir: str | Path = "runs",
    parent_run_id: str | None = None,
    resume: str | Path | None = None,
    tags: Mapping[str, str] | None = None,
    progress: bool = True,
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
    """
    workdir = Path(workdir)
    if resume is None and cfg is None:
        raise ValueError("train() needs a config, or resume=RUN_DIR")
    if resume is not None:
        meta_path = Path(resume) / "run.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path}: not a run folder (no run.json); pass the folder a run created"
            )
        cfg = TrainConfig.from_dict(json.loads((Path(resume) / "config.json").read_text()))
        run_id = json.loads(meta_path.read_text())["run_id"]
        # Checked on the recording process only; under torchrun its error ends the other ranks too.
        if tracker is not None and tracker.run_status(run_id) == "FINISHED":
            raise ValueError(
                f"{resume}: run {run_id} has FINISHED; there is nothing to resume (a finished run keeps "
                "best.safetensors and drops its checkpoint unless keep_checkpoint=true). Start a new run "
                "with `unet-zoo train`, or score this one with `unet-zoo evaluate`."
            )
    assert cfg is not None
    with distributed.session(resolve_device(cfg.device)) as (ctx, device):
        if ctx.is_main and tracker is None:
            raise ValueError("train() needs a tracker (only torchrun ranks other than 0 may pass None)")
        return _train(
            cfg,
            ctx,
            device,
            tracker if ctx.is_main else None,
            workdir=workdir,
            parent_run_id=parent_run_id,
            resume=Path(resume) if resume is not None else None,
            tags=tags,
            progress=progress and ctx.is_main,
        )


def _train(
    cfg: TrainConfig,
    ctx: Distributed,
    device: torch.device,
    rec: Tracker | None,
    *,
    workdir: Path,
    parent_run_id: str | None,
    resume: Path | None,
    tags: Mapping[str, str] | None,
    progress: bool,
) -> RunResult:
    # rec: the tracker on rank 0 (and in a single process), None on the other ranks
    if cfg.batch_size % ctx.world_size:
        raise ValueError(
            f"batch_size={cfg.batch_size} is the global batch and must split evenly among the "
            f"{ctx.world_size} processes; use a multiple of {ctx.world_size}"
        )
    sync_bn = cfg.sync_bn and ctx.enabled
    if resume is not None:
        run_dir = resume
        run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
        if rec is not None:
            rec.resume_run(run_id)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)

    data = build_data(cfg, workdir)
    ds, split = data.dataset, data.split
    model, amp, channels_last = prepare_model(cfg, ds.in_channels, ds.num_classes, device)
    if sync_bn:
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
    # the pixel scale of the training images, recorded with the weights so that predict brings its
    # inputs to it (a resize) or warns about inputs far from the images' size
    height, width = ds.arrays(split.train[0])[0].shape[:2]
    resize = (cfg.resize[0], cfg.resize[1]) if cfg.resize else None
    scale = TrainingScale(resize=resize, image_size=(height, width))
    opt = _optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    step_model: torch.nn.Module = model
    if ctx.enabled:
        # averages the gradients over ranks; the weights stay those of `model` (same state-dict keys)
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        step_model = torch.compile(step_model)  # type: ignore[assignment]

    start_epoch, best, best_epoch, bad_epochs, best_metrics = 0, -1.0, -1, 0, {}
    best_state: dict[str, Tensor] = {}
    saved_plan: Plan | None = None
    if resume is None:
        run_id, run_dir = "", workdir
        if rec is not None:
            run_id = rec.start_run(
                cfg.run_name, parent_run_id=parent_run_id, tags={"zoo.kind": "run", **(tags or {})}
            )
            run_dir = workdir / rec.experiment / f"{cfg.run_name}-{run_id[:8]}"
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(cfg.to_json() + "\n")
            (run_dir / "run.json").write_text(
                json.dumps({"run_id": run_id, "experiment": rec.experiment}) + "\n"
            )
            params = {
                f"cfg.{k}": json.dumps(v) if isinstance(v, dict | list) else v
                for k, v in cfg.to_dict().items()
            }
            params.update(split.as_params(ds.names))
            params.update(
                {
                    "model_args": json.dumps(model.model_args, sort_keys=True, default=str),
                    "data_source": data.source,
                    **data.entry.describe(ds),
                    **class_names_param(ds.class_names),
                    "train_input_size": crop,
                    "train_image_size": json.dumps(scale.as_record()["image_size"]),
                    "train_output_size": out_size,
                    "device": str(device),
                    "dtype": str(amp).removeprefix("torch.") if amp else "float32",
                    "memory_format": "channels_last" if channels_last else "contiguous",
                    "train_images": len(split.train),
                    "val_images": len(split.val),
                    "world_size": ctx.world_size,
                }
            )
            rec.log_params(run_id, params)
            machine = describe_machine(device)
            rec.set_tags(
                run_id,
                {
                    **git_state(),
                    "torch_version": torch.__version__,
                    "cuda_version": str(torch.version.cuda),
                    "device_name": machine["device_name"],
                },
            )
            rec.log_artifact(run_id, run_dir / "config.json", "config")
            if data.entry.source is not None:  # a dataset file: its content, as the run read it
                rec.log_artifact(run_id, data.entry.source, "dataset")
        run_id, run_dir = distributed.broadcast((run_id, run_dir), ctx)
    else:
        ckpt_path = run_dir / "checkpoint.pt"
        if ckpt_path.is_file():
            ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)  # never executes code
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            start_epoch, best, best_epoch = ckpt["epoch"] + 1, ckpt["best"], ckpt["best_epoch"]
            bad_epochs, best_metrics, best_state = (
                ckpt["bad_epochs"],
                ckpt["best_metrics"],
                ckpt["best_model"],
            )
            if "plan" in ckpt:  # checkpoints written before budgets have none: epochs was the plan
                saved_plan = Plan.from_state_dict(ckpt["plan"])
            # killed between the checkpoint and the metrics upload: record that epoch now, exactly once
            if rec is not None and ckpt["epoch"] not in rec.logged_steps(run_id, "val_dice"):
                rec.log_metrics(run_id, ckpt["epoch_metrics"], step=ckpt["epoch"])
            log.info("resuming %s at epoch %d", run_id, start_epoch)

    try:
        micro_batches = (cfg.steps_per_epoch or 0) * cfg.accumulate
        repeats = max(1, math.ceil(micro_batches * cfg.batch_size / len(split.train))) if micro_batches else 1
        crops = RandomCrops(
            ds, split.train, (crop, crop), repeats=repeats, seed=cfg.seed, context=(crop - out_size) // 2
        )
        plan = saved_plan or Plan.start(cfg, crops=len(crops))
        aug = AugmentConfig(**cfg.augment)
        gen = torch.Generator()
        # a run killed after its last epoch's checkpoint has nothing left to train
        remaining = range(start_epoch, cfg.epochs) if plan.stop_reason is None else range(0)
        for epoch in tqdm(
            remaining,
            desc=cfg.run_name,
            disable=not progress or None,
            initial=start_epoch,
            total=cfg.epochs,
            leave=False,
        ):
            t0 = time.perf_counter()
            lr = _lr(cfg, epoch, plan.epochs)
            for group in opt.param_groups:
                group["lr"] = lr
            limit = plan.micro_batches(epoch, micro_batches)  # 0: one pass over the crops
            crops.set_epoch(epoch)
            gen.manual_seed(_seed(cfg.seed, epoch))
            # dropout; each rank its own masks, or all ranks would drop the same units of different samples
            torch.manual_seed(
                _seed(_seed(cfg.seed, epoch), ctx.rank) if ctx.enabled else _seed(cfg.seed, epoch)
            )
            # global batches in the sampler's seeded order (same crops); each rank loads its part only
            loader = make_loader(
                crops,
                batch_size=cfg.batch_size,
                shuffle=True,
                in_memory=True,
                seed=_seed(cfg.seed, epoch),
                device=device,
                shard=(ctx.rank, ctx.world_size),
            )
            sharded = loader.batch_sampler
            assert isinstance(sharded, ShardedBatchSampler)
            short = sharded.first_short_batch()
            if short is not None and (not limit or short < limit):
                # a rank with no sample would feed BatchNorm an empty batch (NaN statistics)
                raise ValueError(
                    f"{cfg.run_name}: an epoch of {len(crops)} crops ends with a global batch of "
                    f"{len(crops) % cfg.batch_size}, fewer samples than the {ctx.world_size} processes; "
                    f"set steps_per_epoch (times accumulate) to at most {short}, or a batch_size that "
                    "leaves no such remainder"
                )
            model.train()
            loss_sum = torch.zeros((), device=device)
            grad_norm_sum = torch.zeros((), device=device)
            steps = 0
            opt.zero_grad(set_to_none=True)
            total_steps = limit or len(loader)
            bar = tqdm(
                loader, total=total_steps, desc=f"epoch {epoch}", leave=False, disable=not progress or None
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
                    image, mask, weight, config=aug, generator=gen, part=sharded.part(i)
                )
                if channels_last:
                    image = image.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    logits = step_model(image)
                target = _center(mask, out_size)
                loss = _loss(
                    cfg, logits, target, _center(weight, out_size) if weight is not None else None, ctx
                )
                # on CPU the check is free; on a GPU it would sync every step, so look every 8 steps there.
                # The loss is the global batch's, the same on every rank: all ranks stop together.
                if (device.type == "cpu" or i % 8 == 0) and not torch.isfinite(loss_sum + loss):
                    raise NonFiniteLossError(
                        f"{cfg.run_name}: non-finite loss ({loss.item()}) at epoch {epoch}, batch {i} (lr "
                        f"{lr:.3g}); the run is marked FAILED and the checkpoint of the last good epoch "
                        "kept. Lower the learning rate, use amp='bf16' or 'none' instead of fp16, or check "
                        "the data for NaN."
                    )
                scaler.scale(loss / cfg.accumulate).backward()
                if (i + 1) % cfg.accumulate == 0:
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
            train_seconds = time.perf_counter() - t0
            if rec is not None:  # rank 0 validates and records; the others wait for its verdict below
                val = evaluate(
                    model,
                    ds,
                    split.val,
                    isbi=data.entry.isbi,
                    batch_size=cfg.batch_size,
                    autocast_dtype=amp,
                    channels_last=channels_last,
                    max_images=cfg.max_val_images,
                )
                metrics: dict[str, float] = {
                    "train_loss": train_loss,
                    "lr": lr,
                    "train_seconds": train_seconds,
                    "train_steps": float(steps),
                    "grad_norm": (grad_norm_sum / max(steps // cfg.accumulate, 1)).item(),
                    "epoch_seconds": time.perf_counter() - t0,
                }
                metrics.update({f"val_{k}": v for k, v in val.items()})
                if val["dice"] > best:
                    best, best_epoch, bad_epochs, best_metrics = val["dice"], epoch, 0, val
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad_epochs += 1
                plan = plan.after_epoch(
                    cfg,
                    epoch=epoch,
                    seconds=metrics["epoch_seconds"],
                    patience_spent=cfg.patience is not None and bad_epochs >= cfg.patience,
                )
                # The checkpoint is the single record of progress (best weights included): written first
                # and atomically, so a kill at any point leaves a consistent state to resume from.
                _atomic_save(
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scaler": scaler.state_dict(),
                        "epoch": epoch,
                        "best": best,
                        "best_epoch": best_epoch,
                        "bad_epochs": bad_epochs,
                        "best_metrics": best_metrics,
                        "best_model": best_state,
                        "epoch_metrics": metrics,
                        "plan": plan.state_dict(),
                    },
                    run_dir / "checkpoint.pt",
                )
                rec.log_metrics(run_id, metrics, step=epoch)
                if plan.stop_reason is not None:
                    log.info("%s: stops after epoch %d (%s)", cfg.run_name, epoch, plan.stop_reason)
            # rank 0's plan (a time budget's, its stop) for every rank: all train the same epochs
            plan = distributed.broadcast(plan, ctx)
            if plan.stop_reason is not None:
                break

        result: RunResult | None = None
        if rec is not None:
            if sync_bn:
                # synchronised BatchNorm in training mode waits for the other ranks, as measure_cost's
                # training step (rank 0 alone) would: the final figures are taken on a plain copy
                model = prepare_model(cfg, ds.in_channels, ds.num_classes, device)[0]
            # final figures: the best epoch's weights, also written as the run's safetensors file
            model.load_state_dict(best_state)
            save_weights(
                model,
                run_dir / "best.safetensors",
                {
                    "dataset": data.entry.name,
                    "epoch": best_epoch,
                    "metrics": best_metrics,
                    "run_id": run_id,
                    **scale.as_record(),
                },
            )
            final = {**best_metrics, "best_epoch": float(best_epoch)}
            cost = measure_cost(
                model,
                size=cfg.cost_size or crop,
                batch=cfg.cost_batch,
                autocast_dtype=amp,
                channels_last=channels_last,
            )
            rec.log_metrics(run_id, {**final, **cost}, step=best_epoch)
            rec.log_params(
                run_id,
                {
                    "cost_size": model.nearest_valid_input_size(cfg.cost_size or crop),
                    "cost_batch": cfg.cost_batch,
                    "planned_epochs": plan.epochs,
                    "stop_reason": plan.stop_reason or "epochs",
                    "stopped_early": plan.stop_reason == "patience",
                },
            )
            _log_artifacts(rec, run_id, run_dir, model, ds, split.val, amp, channels_last)
            rec.finish(run_id, "FINISHED")
            _drop_checkpoint(cfg, run_dir)
            result = RunResult(run_id, run_dir, {**final, **cost})
        result = distributed.broadcast(result, ctx)
        assert result is not None
        return result
    except KeyboardInterrupt:
        if rec is not None:
            rec.finish(run_id, "KILLED")
        raise
    except BaseException:
        if rec is not None:
            rec.finish(run_id, "FAILED")
        raise


def _drop_checkpoint(cfg: TrainConfig, run_dir: Path) -> None:
    # Only after the run is marked FINISHED: a process killed before that leaves a run that is still
    # RUNNING, which --resume must be able to pick up from this file.
    path = run_dir / "checkpoint.pt"
    if cfg.keep_checkpoint or not path.is_file():
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


def _log_artifacts(
    tracker: Tracker,
    run_id: str,
    run_dir: Path,
    model: SegmentationModel,
    ds: Any,
    val: tuple[int, ...],
    amp: torch.dtype | None,
    channels_last: bool,
) -> None:
    tracker.log_artifact(run_id, run_dir / "best.safetensors", "weights")
    for i in val[:2]:
        image, mask = ds[i][0], ds[i][1]
        pred = predict_logits(model, image, autocast_dtype=amp, channels_last=channels_last).argmax(1)[0]
        path = save_overlay(run_dir / "overlays" / f"{ds.names[i]}.png", image, mask == 1, pred == 1)
        tracker.log_artifact(run_id, path, "overlays")

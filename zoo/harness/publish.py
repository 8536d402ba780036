"""From a finished harness run to a published weights file, and back from a file to its metrics.

:func:`publish_run` reads everything from MLflow (the run's best weights artifact, its parameters, its
measured metrics, its suite and git commit), writes a safetensors file whose metadata repeat those
facts, and adds a manifest entry. :func:`reproduce_metrics` rebuilds the model from an entry and
evaluates it on the exact validation images the entry names, the way the harness measured them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from zoo.data import DataError, SegmentationDataset
from zoo.data.datasets import Selection
from zoo.data.registry import DatasetEntry, get_dataset
from zoo.errors import ZooError
from zoo.factory import load_entry, model_from_state
from zoo.harness.tracking import quality_keys
from zoo.weights import (
    TrainingScale,
    WeightsEntry,
    check_tag,
    file_sha256,
    load_manifest,
    read_weights,
    save_weights,
    write_manifest,
)

__all__ = ["DataUnavailableError", "PublishError", "find_run", "publish_run", "reproduce_metrics"]

log = logging.getLogger(__name__)


class PublishError(ZooError, ValueError):
    """A run that cannot be published: an unknown or ambiguous id, an unfinished or incomplete run, or
    an entry that exists already; the message says which and what to do."""


def find_run(client: Any, run_id: str) -> Any:
    """The MLflow run with id ``run_id`` or a unique id prefix of at least 8 characters."""
    from mlflow.exceptions import MlflowException

    if len(run_id) == 32:
        try:
            return client.get_run(run_id)
        except MlflowException:
            pass
    if len(run_id) < 8:
        raise PublishError(f"run id {run_id!r} is too short; give at least 8 characters of it")
    experiments = [e.experiment_id for e in client.search_experiments()]
    matches = [
        r
        for r in client.search_runs(experiments, "tags.`zoo.kind` = 'run'", max_results=50_000)
        if r.info.run_id.startswith(run_id)
    ]
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        raise PublishError(f"{found} with an id starting {run_id!r} in {client.tracking_uri}")
    return matches[0]


def publish_run(
    run_id: str,
    *,
    tracking_uri: str,
    out_dir: str | Path,
    tag: str | None = None,
    manifest: str | Path | None = None,
    url_base: str | None = None,
    default: bool = False,
    notes: str = "",
    overwrite: bool = False,
) -> WeightsEntry:
    """Turn a finished harness run's best checkpoint into ``OUT_DIR/MODEL.TAG.safetensors`` and an entry
    in ``manifest`` (default ``OUT_DIR/manifest.json``) with the run's measured metrics.

    Args:
        tag: the entry's tag (default ``<dataset>-<suite>-s<seed>``).
        url_base: where the file will be served (the entry's url is ``url_base/FILE``); without it the
            entry is ``packaged`` (the file ships inside ``zoo/pretrained``).
        overwrite: replace an existing entry of the same name.

    Raises:
        PublishError: an unknown, unfinished or incomplete run, or an entry that exists already.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run = find_run(client, run_id)
    name = run.info.run_name or run.info.run_id
    if run.info.status != "FINISHED":
        raise PublishError(f"run {name} ({run.info.run_id}) is {run.info.status}; only finished runs publish")
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    data = get_dataset(params["cfg.dataset"])
    dataset = data.name
    keys = quality_keys(isbi=data.isbi, class_names=data.class_names)
    quality = {k: metrics[k] for k in keys if k in metrics}
    if "dice" not in quality:
        raise PublishError(f"run {name} has no final metrics (dice); it did not complete")
    suite = tags.get("suite", "")
    tag = tag or f"{dataset}-{suite or 'run'}-s{params.get('cfg.seed', '0')}"
    check_tag(tag, "--tag")  # before anything is written: the tag names the file
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = Path(manifest) if manifest is not None else out_dir / "manifest.json"
    if url_base is None and manifest_path.resolve().parent != out_dir.resolve():
        raise PublishError(
            f"a packaged file lives beside its manifest: put the manifest in {out_dir} or give --url-base"
        )
    existing = load_manifest([manifest_path]) if manifest_path.is_file() else []

    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run.info.run_id, "weights/best.safetensors", tmp)
        state, meta = read_weights(local)
        cfg = json.loads(
            Path(client.download_artifacts(run.info.run_id, "config/config.json", tmp)).read_text()
        )
    model_name = meta["model_name"]
    model_args = json.loads(meta["model_args"])
    if json.loads(meta.get("metrics", "{}")).get("dice") != quality["dice"]:
        raise PublishError(
            f"run {name}: the weights artifact's metrics differ from the run's; not publishing"
        )
    in_ch, classes = data.in_channels, data.num_classes
    file_name = f"{model_name}.{tag}.safetensors"
    if any(e.name == f"{model_name}.{tag}" for e in existing) and not overwrite:
        raise PublishError(
            f"{manifest_path} already has {model_name}.{tag}; choose another --tag or --overwrite"
        )

    val_items = params.get("split_val_items", "").split(",")
    max_val = cfg.get("max_val_images")
    evaluated = val_items[:max_val] if max_val else val_items
    # the scale the model was trained at, as the training config resized its images (older runs did not
    # record the images' size: then it is known only when they were resized)
    scale = TrainingScale.from_record(
        {"resize": cfg.get("resize"), "image_size": params.get("train_image_size")}, origin=f"run {name}"
    )
    split = {
        "method": params.get("split_method", ""),
        "detail": params.get("split_detail", ""),
        "train_size": int(params.get("split_train_size", 0)),
        "val_items": evaluated,
    }
    evaluation = {
        "dtype": params.get("dtype", "float32"),
        "channels_last": params.get("memory_format") == "channels_last",
        "batch_size": int(cfg.get("batch_size", 4)),
        **scale.as_record(),
        "isbi": data.isbi,
        "data_source": params.get("data_source", ""),
    }
    target = out_dir / file_name
    metadata = {
        "dataset": dataset,
        "tag": tag,
        "metrics": quality,
        "run_id": run.info.run_id,
        "suite": suite,
        "git_commit": tags.get("git_commit", ""),
        **scale.as_record(),
    }
    # the run's tensors, unchanged, under the zoo's file format with the full metadata
    model = model_from_state(
        model_name, model_args, in_ch, classes, state, source=f"run {name}'s weights artifact"
    )
    save_weights(model, target, metadata)
    entry = WeightsEntry(
        model=model_name,
        tag=tag,
        model_args=model_args,
        in_channels=in_ch,
        num_classes=classes,
        dataset=dataset,
        split=split,
        evaluation=evaluation,
        metrics=quality,
        params=sum(p.numel() for p in model.parameters()),
        file=file_name,
        size=target.stat().st_size,
        sha256=file_sha256(target),
        url=f"{url_base.rstrip('/')}/{file_name}" if url_base else None,
        packaged=url_base is None,
        suite=suite,
        run_id=run.info.run_id,
        git_commit=tags.get("git_commit", ""),
        default=default,
        notes=notes,
        recipe=cfg.get("recipe") or "",
        train_config={k: v for k, v in cfg.items() if k != "data_root"},
        training=_training_cost(client, run),
        extra={"git_dirty": tags.get("git_dirty", "unknown"), "seed": params.get("cfg.seed", "")},
    )
    entry.check(str(manifest_path))
    kept = [e for e in existing if e.name != entry.name]
    if default:
        kept = [dataclasses.replace(e, default=False) if e.model == entry.model else e for e in kept]
    write_manifest(manifest_path, [*kept, entry])
    entry = dataclasses.replace(
        entry, location=str(manifest_path.resolve().parent) if entry.packaged else None
    )
    log.info("published %s (%d bytes, sha256 %s) to %s", entry.name, entry.size, entry.sha256, target)
    return entry


def _training_cost(client: Any, run: Any) -> dict[str, Any]:
    """Device, wall-clock minutes (start to finish: training, validation, checkpoints, cost figures), and
    epochs of a finished run."""
    epochs = client.get_metric_history(run.info.run_id, "epoch_seconds")
    return {
        "device": run.data.tags.get("device_name", run.data.params.get("device", "")),
        "minutes": round((run.info.end_time - run.info.start_time) / 60_000, 2),
        "epochs": len({m.step for m in epochs}),
        "best_epoch": int(run.data.metrics.get("best_epoch", -1)),
    }


class DataUnavailableError(DataError):
    """The data an entry names is not on this machine (tests skip on it). A ZooError, as DataError is."""


def _registry_entry(entry: WeightsEntry) -> DatasetEntry:
    """The dataset an entry was trained on: a registered one, or the dataset file its run trained on."""
    source = entry.train_config.get("dataset", entry.dataset)
    try:
        return get_dataset(source)
    except DataError as err:  # a dataset file that is not on this machine
        raise DataUnavailableError(str(err)) from None


def _entry_dataset(entry: WeightsEntry, data_root: str | Path) -> tuple[SegmentationDataset, list[int]]:
    data = _registry_entry(entry)
    try:
        root = data.root(data_root)
    except DataError as err:
        raise DataUnavailableError(f"{entry.dataset} is not present under {data_root}: {err}") from None
    assert root is not None
    names = list(entry.split["val_items"])
    try:
        ds = data.load(root, resize=entry.training_scale.resize, select=Selection(names=frozenset(names)))
    except DataError as err:
        raise DataUnavailableError(str(err)) from None
    index = {n: i for i, n in enumerate(ds.names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise DataUnavailableError(f"{root}: {len(missing)} of the entry's images are absent: {missing[:5]}")
    return ds, [index[n] for n in names]


def reproduce_metrics(
    entry: WeightsEntry, data_root: str | Path, *, model: torch.nn.Module | None = None
) -> dict[str, float]:
    """Evaluate the entry's weights on the validation images it names, as the harness measured them
    (same dtype, memory format, batch size and input resize).

    Raises:
        DataUnavailableError: the dataset or some of its images are not under ``data_root``.
    """
    from zoo.harness.evaluate import evaluate
    from zoo.runtime import Precision
    from zoo.tiling import TiledInferer

    ds, indices = _entry_dataset(entry, data_root)
    if model is None:
        model = load_entry(entry)
    dtype_name = entry.evaluation.get("dtype", "float32")
    precision = Precision(
        autocast_dtype=None if dtype_name == "float32" else getattr(torch, dtype_name),
        channels_last=bool(entry.evaluation.get("channels_last", False)),
    )
    precision.model(model)
    inferer = TiledInferer(batch_size=int(entry.evaluation.get("batch_size", 4)), precision=precision)
    isbi = bool(entry.evaluation.get("isbi", False))
    return evaluate(model, ds, indices, inferer=inferer, isbi=isbi)  # type: ignore[arg-type]

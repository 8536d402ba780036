"""From a finished harness run to a published weights file, and back from a file to its metrics.

:func:`publish_run` reads everything from MLflow (the run's best weights artifact, its parameters, its
measured metrics, its suite and git commit), writes a safetensors file whose metadata repeat those
facts, and adds a manifest entry; with a :class:`HubTarget` it also pushes the file to a Hugging Face
Hub repository (:func:`write_hub_folder` lays the repository out from the entry, and
:func:`zoo.weights.hf_hub.push_folder` commits it) and the entry names that repository as its source.
:func:`reproduce_metrics` rebuilds the model from an entry and evaluates it on the exact validation
images the entry names, the way the harness measured them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from zoo.data import DataError, SegmentationDataset
from zoo.data.cards import CARDS
from zoo.data.datasets import Selection
from zoo.data.registry import DatasetEntry, get_dataset
from zoo.errors import ZooError
from zoo.factory import load_entry, model_from_state
from zoo.harness.tracking import quality_keys
from zoo.registry import get_entry
from zoo.weights import (
    TrainingScale,
    WeightsEntry,
    check_tag,
    file_sha256,
    load_manifest,
    read_weights,
    save_weights,
    verify_file,
    write_manifest,
)
from zoo.weights.hf_hub import (
    CARD_FILE,
    CONFIG_FILE,
    HUB_PREFIX,
    WEIGHTS_FILE,
    HubSpec,
    check_token,
    hub_config,
    push_folder,
)

__all__ = [
    "DataUnavailableError",
    "HubTarget",
    "PublishError",
    "find_run",
    "publish_run",
    "reproduce_metrics",
    "write_hub_folder",
]

log = logging.getLogger(__name__)


class PublishError(ZooError, ValueError):
    """A run that cannot be published: an unknown or ambiguous id, an unfinished or incomplete run, or
    an entry that exists already; the message says which and what to do."""


@dataclasses.dataclass(frozen=True)
class HubTarget:
    """Where :func:`publish_run` pushes a checkpoint: the model repository ``repo_id`` (``ORG/REPO``) on
    the Hugging Face Hub (``HF_ENDPOINT``), with the token of ``HF_TOKEN`` or ``hf auth login``."""

    repo_id: str
    revision: str | None = None
    """The branch to commit to (created from the default branch if absent); None: the default branch."""
    private: bool = False
    """Create the repository private (an existing repository keeps its visibility)."""
    commit_message: str | None = None
    """Default: ``Publish MODEL.TAG (DATASET, dice ...)``."""
    license: str = "other"
    """The model card's licence: a Hub licence id (``mit``, ``cc-by-4.0`` ...), or ``other``, whose
    terms the card states as the training data's."""


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
    push_to_hub: HubTarget | None = None,
) -> WeightsEntry:
    """Turn a finished harness run's best checkpoint into ``OUT_DIR/MODEL.TAG.safetensors`` and an entry
    in ``manifest`` (default ``OUT_DIR/manifest.json``) with the run's measured metrics.

    Args:
        tag: the entry's tag (default ``<dataset>-<suite>-s<seed>``).
        url_base: where the file will be served (the entry's url is ``url_base/FILE``); without it (and
            without ``push_to_hub``) the entry is ``packaged`` (the file ships inside ``zoo/pretrained``).
        overwrite: replace an existing entry of the same name.
        push_to_hub: also push the file to this Hub repository (:func:`write_hub_folder`'s layout); the
            entry's url is then ``hf-hub:ORG/REPO@COMMIT``, the commit made. The manifest is written only
            once the push has succeeded.

    Raises:
        PublishError: an unknown, unfinished or incomplete run, an entry that exists already, or both
            ``url_base`` and ``push_to_hub``.
        UploadError: no token to push with (checked before anything is written), or the Hub refused.
    """
    from mlflow.tracking import MlflowClient

    if push_to_hub is not None:
        if url_base is not None:
            raise PublishError(
                "give --url-base or --push-to-hub, not both: an entry names one place its file is served from"
            )
        branch = f"@{push_to_hub.revision}" if push_to_hub.revision else ""
        HubSpec.parse(f"{HUB_PREFIX}{push_to_hub.repo_id}{branch}", where="--push-to-hub")
        check_token()  # before anything is written
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
    packaged = url_base is None and push_to_hub is None
    if packaged and manifest_path.resolve().parent != out_dir.resolve():
        raise PublishError(
            f"a packaged file lives beside its manifest: put the manifest in {out_dir} or give --url-base"
        )
    existing = load_manifest([manifest_path]) if manifest_path.is_file() else []

    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run.info.run_id, "weights/best.safetensors", tmp)
        state, meta = read_weights(local)
        cfg = json.loads(
            Path(client.download_artifacts(run.info.run_id, "config/config.json", tmp)).read_text(
                encoding="utf-8"
            )
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
        packaged=packaged,
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
    if push_to_hub is not None:
        entry = dataclasses.replace(entry, url=str(_push(entry, target, push_to_hub)))
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


def _push(entry: WeightsEntry, weights: Path, hub: HubTarget) -> HubSpec:
    """Lay out and push ``entry``'s repository; the repository pinned to the commit made."""
    dice = entry.metrics.get("dice")
    message = hub.commit_message or (
        f"Publish {entry.name} ({entry.dataset}" + (f", val dice {dice:.4f})" if dice is not None else ")")
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "repo"
        write_hub_folder(
            entry, weights, folder, repo_id=hub.repo_id, revision=hub.revision, license=hub.license
        )
        return push_folder(
            folder, hub.repo_id, revision=hub.revision, private=hub.private, commit_message=message
        )


def write_hub_folder(
    entry: WeightsEntry,
    weights: str | Path,
    folder: str | Path,
    *,
    repo_id: str,
    revision: str | None = None,
    license: str = "other",
) -> Path:
    """Write ``entry``'s Hugging Face Hub repository into ``folder`` (created; it must not hold files):
    ``model.safetensors`` (a copy of ``weights``, checked against the entry first), ``config.json``
    (:func:`zoo.weights.hf_hub.hub_config`: the model, its classes, its training scale, the file's size and
    sha256, and the entry's provenance) and ``README.md``, the model card: YAML front matter the Hub
    reads (library, licence, tags, dataset, metrics with their values) and what was measured on what,
    how it was trained and what that cost, and how to load it (``repo_id``, at ``revision`` if given).
    Returns ``folder``.

    Raises:
        ChecksumError: ``weights`` is not the entry's file.
        PublishError: ``folder`` already holds files.
    """
    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()):
        raise PublishError(f"{folder} is not empty; write a Hub repository into a new folder")
    verify_file(weights, entry)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, folder / WEIGHTS_FILE)
    try:
        data: DatasetEntry | None = _registry_entry(entry)
    except DataUnavailableError:  # a user's dataset file that is not on this machine
        data = None
    class_names = list(data.class_names) if data is not None else None
    provenance = {
        "weights": entry.name,
        **{k: v for k, v in entry.to_dict().items() if k in _PROVENANCE},
    }
    config = hub_config(
        model_name=entry.model,
        model_args=entry.model_args,
        in_channels=entry.in_channels,
        num_classes=entry.num_classes,
        class_names=class_names,
        training_scale=entry.training_scale,
        weights=folder / WEIGHTS_FILE,
        provenance=provenance,
    )
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    source = f"{HUB_PREFIX}{repo_id}" + (f"@{revision}" if revision else "")
    (folder / CARD_FILE).write_text(
        _model_card(entry, data, source=source, license=license), encoding="utf-8"
    )
    return folder


_PROVENANCE = (
    "dataset",
    "split",
    "evaluation",
    "metrics",
    "params",
    "recipe",
    "train_config",
    "training",
    "suite",
    "run_id",
    "git_commit",
    "notes",
    "extra",
)
"""The entry's fields that ``config.json`` keeps under ``provenance`` (the rest are its own keys)."""


def _model_card(entry: WeightsEntry, data: DatasetEntry | None, *, source: str, license: str) -> str:
    """The model card: the Hub's YAML front matter, then the facts of the entry in prose and tables."""
    from huggingface_hub import EvalResult, ModelCardData

    model = get_entry(entry.model)
    about = model.summary.rstrip(".") + (f"; {model.paper}" if model.paper else "")
    split_name = "validation"
    dataset_title = data.title if data is not None else entry.dataset
    data_terms = CARDS[data.card].license if data is not None and data.card in CARDS else ""
    card_data = ModelCardData(
        library_name="unet-zoo",
        license=license,
        license_name="training-data-terms" if license == "other" else None,
        tags=["unet-zoo", "image-segmentation", "semantic-segmentation", "u-net", entry.model, model.family],
        datasets=[entry.dataset],
        metrics=sorted(entry.metrics),
        pipeline_tag="image-segmentation",
        model_name=entry.name,
        eval_results=[
            EvalResult(
                task_type="image-segmentation",
                dataset_type=entry.dataset,
                dataset_name=dataset_title,
                dataset_split=split_name,
                metric_type=key,
                metric_value=value,
            )
            for key, value in entry.metrics.items()
        ],
    )
    split = entry.split
    cost = entry.training
    evaluation = entry.evaluation
    scale = entry.training_scale
    classes = ", ".join(f"{i}: {n}" for i, n in enumerate(data.class_names)) if data is not None else "-"
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        f"# {entry.name}",
        "",
        f"`{entry.model}` ({about}) trained on {dataset_title} by unet-zoo's harness, and published from "
        f"its run `{entry.run_id}`.",
        "",
        "## Load it",
        "",
        "```python",
        "import zoo",
        "",
        f'model = zoo.create_model("{entry.model}", weights="{source}")',
        "```",
        "",
        "or from the command line:",
        "",
        "```",
        f"unet-zoo predict --model {entry.model} --weights {source} --out masks/ IMAGES...",
        "```",
        "",
        f"Append `@REVISION` (a branch, tag or commit) to pin a revision. unet-zoo checks `{WEIGHTS_FILE}` "
        f"against the size and sha256 that `{CONFIG_FILE}` records before it loads it.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| model | `{entry.model}` ({model.family}) |",
        f"| arguments | `{json.dumps(entry.model_args, sort_keys=True)}` |",
        f"| input channels | {entry.in_channels} |",
        f"| classes | {entry.num_classes} ({classes}) |",
        f"| parameters | {entry.params:,} |",
        f"| training scale | {_scale_text(scale)} |",
        "",
        "## Metrics",
        "",
        f"Measured by the harness on the {len(split.get('val_items', []))} {split_name} images named in "
        f"`{CONFIG_FILE}` (`provenance.split.val_items`): Dice and IoU of the foreground class (the mean "
        "over classes when there are several), per image and then averaged over the images; an image whose "
        "prediction and truth are both empty scores 1. Evaluated in "
        f"{evaluation.get('dtype', 'float32')}"
        + (", channels-last" if evaluation.get("channels_last") else "")
        + f", batch {evaluation.get('batch_size', '-')}.",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {key} | {value:.4f} |" for key, value in entry.metrics.items()),
        "",
        "## Dataset and split",
        "",
        f"{dataset_title} (`{entry.dataset}`). Split: {split.get('method', '-')} "
        f"({split.get('detail', '-')}); {split.get('train_size', '-')} training images, "
        f"{len(split.get('val_items', []))} {split_name} images.",
        "",
        "## Training recipe",
        "",
        (f"Recipe `{entry.recipe}`, resolved to:" if entry.recipe else "No named recipe; the run's config:"),
        "",
        "```json",
        json.dumps(entry.train_config, indent=2, sort_keys=True),
        "```",
        "",
        "## Training cost",
        "",
        (
            f"{cost.get('minutes', '-')} minutes on {cost.get('device', '-')} for {cost.get('epochs', '-')} "
            f"epochs (best epoch: {cost.get('best_epoch', '-')}; wall time of the whole run, validation "
            "included)."
            if cost
            else "Not recorded."
        ),
        "",
        "## Licence",
        "",
        f"Weights: `{license}`"
        + (" (the training data's terms below apply)." if license == "other" else ".")
        + (f" Training data ({entry.dataset}): {data_terms}" if data_terms else ""),
        "",
        "## Provenance",
        "",
        f"Weights `{entry.name}`, run `{entry.run_id}`"
        + (f" of suite `{entry.suite}`" if entry.suite else "")
        + f", git commit `{entry.git_commit or '-'}` (uncommitted changes: "
        f"{entry.extra.get('git_dirty', 'unknown')}), seed {entry.extra.get('seed', '-')}.",
    ]
    if entry.notes:
        lines += ["", entry.notes]
    return "\n".join(lines) + "\n"


def _scale_text(scale: TrainingScale) -> str:
    if scale.resize is not None:
        return f"inputs resized to {scale.resize[0]}x{scale.resize[1]} (predict does it)"
    if scale.image_size is not None:
        return f"images at their own pixel scale ({scale.image_size[0]}x{scale.image_size[1]} in training)"
    return "not recorded"


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

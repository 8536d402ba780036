"""The ``unet-zoo`` command. Thin: it parses arguments, calls the library and prints.

A :class:`zoo.errors.ZooError` (a bad value, file, dataset, recipe, run folder or weights file: something
the user can fix, its message says how) is printed as one line, ``unet-zoo: error: ...``, with exit code
2; any other exception is a bug and keeps its traceback. Output that cannot be written is no bug either: a
reader that has gone (``unet-zoo models | head -1``) ends the command quietly, as it ends Unix tools
(exit code 141, a shell's for SIGPIPE); a full device (``> /dev/full``) is one line and exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.data.io import DataError
from zoo.errors import ConfigError, ZooError
from zoo.factory import model_info
from zoo.registry import list_models

TUNED_RECIPES = "tuned-recipes.toml"
"""Where ``unet-zoo tune`` writes tuned recipes in the workdir; train, bench and recipes read it."""

if TYPE_CHECKING:
    from zoo.export import ExportReport
    from zoo.harness.engines import Engine
    from zoo.harness.tracking import Tracker

__all__ = ["main"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
FLOPS_NOTE = "GFLOPs: one image at the stated input size, 2 FLOPs per multiply-add (convolutions, matmuls)"


def _table(rows: list[list[str]], header: list[str], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def _cmd_models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}; registered: {', '.join(list_models())}", file=sys.stderr)
        return 1
    rows = []
    for name in names:
        info = model_info(
            name, in_channels=args.in_channels, num_classes=args.num_classes, input_size=args.size
        )
        rows.append(
            [
                info.name,
                info.family,
                f"{info.params:,}",
                f"{info.input_size}->{info.output_size}",
                f"{info.gflops:.1f}",
                info.padding,
                info.paper,
            ]
        )
    header = ["name", "family", "params", "input->output", "GFLOPs", "padding", "paper"]
    print(_table(rows, header, right={2, 3, 4}))
    print(f"\n{FLOPS_NOTE}; {args.in_channels} input channel(s), {args.num_classes} classes.")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    info = model_info(
        args.name, in_channels=args.in_channels, num_classes=args.num_classes, input_size=args.size
    )
    arguments = ", ".join(f"{k}={v!r}" for k, v in sorted(info.arguments.items()))
    lines = [
        f"{info.name}: {info.summary}",
        f"  family           {info.family}",
        f"  paper            {info.paper}",
        f"  parameters       {info.params:,} "
        f"(in_channels={info.in_channels}, num_classes={info.num_classes})",
        f"  GFLOPs           {info.gflops:.2f} at {info.input_size}x{info.input_size} "
        "(2 FLOPs per multiply-add)",
        f"  padding          {info.padding}",
        f"  input sizes      {info.size_rule}; input multiple {info.input_multiple}, "
        f"minimum {info.min_input_size}",
        f"  size example     {info.input_size}x{info.input_size} -> {info.output_size}x{info.output_size}",
        f"  arguments        {arguments}",
        f"  overrides        {', '.join(info.overrides)}",
        f"  create           zoo.create_model({info.name!r}, in_channels={info.in_channels}, "
        f"num_classes={info.num_classes})",
    ]
    print("\n".join(lines))
    return 0


def _cmd_data_list(args: argparse.Namespace) -> int:
    from zoo.data.registry import get_dataset, list_datasets

    rows = []
    for name in list_datasets(args.pattern):
        e = get_dataset(name)
        rows.append(
            [
                e.name,
                str(e.in_channels),
                ", ".join(e.class_names),
                e.split_rule,
                ", ".join(("dice", "iou", *e.metrics)),
                e.recipe or "-",
                "yes" if e.twin else "no",
                e.title,
            ]
        )
    header = ["name", "channels", "classes", "split", "metrics", "default recipe", "twin", "what"]
    print(_table(rows, header, right=set()))
    print(
        "\nYour own data: `unet-zoo data init --images DIR --masks DIR --out my.toml`, then give my.toml "
        "wherever a dataset name goes (--dataset my.toml)."
    )
    return 0


def _cmd_data_init(args: argparse.Namespace) -> int:
    from zoo.data.folder import infer_spec

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"--out {out} exists; choose another --out, or --force to replace it")
    spec, inspection = infer_spec(
        Path(args.images), Path(args.masks), name=args.name, roi=Path(args.roi) if args.roi else None
    )
    for line in inspection.lines():
        print(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(spec.to_toml(relative_to=out.parent.resolve()))
    print(
        f"\nwrote {out}: edit it if a guess above is wrong (class names, split, groups), then\n"
        f"  unet-zoo data verify {out}\n  unet-zoo train --dataset {out}"
    )
    return 0


def _cmd_data_verify(args: argparse.Namespace) -> int:
    from zoo.data.registry import get_dataset, is_dataset_file
    from zoo.data.verify import Report, verify_dataset

    report: Report
    if is_dataset_file(args.path):
        from zoo.data.folder import load_spec, verify_folder

        report = verify_folder(load_spec(args.path))
    else:
        card = get_dataset(args.dataset).card if args.dataset else None
        if args.dataset and card is None:
            raise ConfigError(
                f"dataset {args.dataset!r} has no card to verify a folder against; verify its dataset file "
                "instead (`unet-zoo data verify my.toml`)"
            )
        report = verify_dataset(args.path, dataset=card, checksums=args.checksums)
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items())
    print(f"{report.root}: {report.dataset} ({report.layout}): {counts}")
    for note in report.notes:
        print(f"  note: {note}")
    for path, message in report.problems:
        print(f"  PROBLEM {path}: {message}")
    print(f"{len(report.problems)} problem(s)" if report.problems else "OK: no problems")
    return 1 if report.problems else 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from zoo.data.registry import get_dataset

    twin = get_dataset(args.name).twin
    if twin is None:
        raise ConfigError(
            f"dataset {args.name!r} has no synthetic twin; `unet-zoo data list` shows the datasets that do"
        )
    count, size = args.count or twin.count, args.size or twin.size
    twin.write(Path(args.out), count=count, size=size, seed=args.seed)
    print(
        f"wrote a synthetic {args.name} twin to {args.out} ({count} samples, side {size}, seed {args.seed}); "
        f"check it with `unet-zoo data verify {args.out}`"
    )
    return 0


# Python's spellings of the JSON literals: `--override attention=False` means the boolean, not a string
_PYTHON_LITERALS: dict[str, object] = {"True": True, "False": False, "None": None}


def _parse_value(text: str) -> object:
    if text in _PYTHON_LITERALS:
        return _PYTHON_LITERALS[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word: a string


def _key_values(pairs: Sequence[str] | None, flag: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} epochs=5")
        out[key] = _parse_value(value)
    return out


# the quality columns of the results table: the ISBI ones show "-" on other datasets
RESULT_QUALITY = ("dice", "iou", "misclassified", "pixel_error", "rand_error", "vrand")


def _print_results(outcomes: Sequence[tuple[str, object]]) -> None:
    from zoo.harness.training import RunResult
    from zoo.metrics import split_class_key

    # per-class Dice of multi-class datasets, in the order the runs report them
    per_class = list(
        dict.fromkeys(
            k
            for _, o in outcomes
            if isinstance(o, RunResult)
            for k in o.metrics
            if (parts := split_class_key(k)) and parts[0] == "dice"
        )
    )
    quality = (*RESULT_QUALITY[:1], *per_class, *RESULT_QUALITY[1:])
    rows = []
    for name, outcome in outcomes:
        if isinstance(outcome, RunResult):
            m = outcome.metrics
            rows.append(
                [
                    name,
                    *(f"{m[k]:.4f}" if k in m else "-" for k in quality),
                    f"{m['train_images_per_s']:.2f}",
                    f"{m['infer_images_per_s']:.2f}",
                    outcome.run_id[:8],
                ]
            )
        else:
            rows.append([name, "FAILED", *[""] * (len(quality) + 1), str(outcome)[:60]])
    header = ["run", *quality, "train img/s", "infer img/s", "run id"]
    print(_table(rows, header, right=set(range(1, len(quality) + 3))))
    print(
        "Dice/IoU: foreground, per image then mean over validation images (best epoch's weights; the mean "
        "over foreground classes, dice_<class> each); misclassified: 1 - accuracy of the argmax, the same "
        "way; pixel_error, rand_error, vrand: the ISBI 2012 challenge's, at the best threshold of the cell "
        "probability for all validation images."
    )


def _tracker(args: argparse.Namespace, default_experiment: str) -> Tracker:
    from zoo.harness.tracking import Tracker

    return Tracker(args.experiment or default_experiment, workdir=args.workdir)


def _use_recipes(args: argparse.Namespace) -> None:
    """The tuned recipes a study wrote into the workdir, and any --recipes file, for every lookup."""
    from zoo.harness.recipes import use_recipe_files

    tuned = Path(args.workdir) / TUNED_RECIPES
    files = [*([tuned] if tuned.is_file() else []), *(args.recipes or [])]
    for path in map(Path, files):
        if not path.is_file():
            raise ConfigError(f"--recipes {path}: no such file (a recipes TOML, e.g. {tuned})")
    use_recipe_files(*files)


def _engine(args: argparse.Namespace) -> Engine:
    from zoo.harness.engines import Engine

    return Engine(args.backend, args.address, args.cpus_per_trial, args.gpus_per_trial)


def _cmd_bench(args: argparse.Namespace) -> int:
    from zoo.harness import load_suite, run_suite

    _use_recipes(args)
    suite = load_suite(
        args.suite,
        models=args.models,
        datasets=args.datasets,
        seeds=args.seeds,
        data_root=args.data_root,
        extra=_key_values(args.set, "--set"),
    )
    source = f"real data under {args.data_root}" if args.data_root else "synthetic twins"
    print(f"suite {suite.name}: {len(suite.runs)} runs on {source}", flush=True)
    tracker = _tracker(args, f"suite-{suite.name}")
    engine = _engine(args)
    if engine.name == "ray":
        from zoo.harness.ray_engine import run_suite_on_ray

        outcomes = run_suite_on_ray(suite, tracker=tracker, workdir=args.workdir, engine=engine)
    else:
        outcomes = run_suite(suite, tracker=tracker, workdir=args.workdir, jobs=args.jobs)
    _print_results(outcomes)
    uri = tracker.uri
    print(f"\nruns: MLflow experiment {tracker.experiment!r} at {uri}")
    print(f"      browse with: mlflow ui --backend-store-uri {uri}")
    if any(hasattr(o, "run_id") for _, o in outcomes):
        from zoo.report import build, write_report

        out = Path(args.report_out or Path(args.workdir) / "reports" / tracker.experiment)
        board = build(tracker.experiment, uri)
        paths = write_report(board, out, experiment=tracker.experiment, tracking_uri=uri)
        print(
            f"leaderboard: {paths['html']} (also {paths['md'].name}, {paths['csv'].name}); "
            f"regenerate with: unet-zoo report --experiment {tracker.experiment} --workdir {args.workdir}"
        )
    return 1 if any(not hasattr(o, "run_id") for _, o in outcomes) else 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from zoo.harness import load_suite
    from zoo.harness.spaces import load_spaces
    from zoo.harness.suites import find_suite, read_suite_file
    from zoo.harness.tuning import make_studies, run_study, tune_settings, write_tuned_recipe

    path = find_suite(args.suite)
    settings = tune_settings(read_suite_file(path), str(path))
    for key in ("trials", "max_images", "seconds", "sampler", "pruner"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    suite = load_suite(
        args.suite,
        models=args.models,
        datasets=args.datasets,
        seeds=1,
        data_root=args.data_root,
        extra=_key_values(args.set, "--set"),
        tuned=False,
    )
    spaces = load_spaces(args.space) if args.space else None
    studies = make_studies(suite.runs, suite=suite.name, settings=settings, space=spaces)
    engine = _engine(args)
    tracker = _tracker(args, f"tune-{suite.name}")
    out = Path(args.recipes_out or Path(args.workdir) / TUNED_RECIPES)
    source = f"real data under {args.data_root}" if args.data_root else "synthetic twins"
    print(
        f"suite {suite.name}: {len(studies)} studies on {source}, each {studies[0].budget.describe()} "
        f"({studies[0].sampler} sampler, {studies[0].pruner} pruning, {args.backend} engine)",
        flush=True,
    )
    rows, failed = [], 0
    for study in studies:
        if engine.name == "ray":
            from zoo.harness.ray_engine import run_study_on_ray

            result = run_study_on_ray(study, tracker=tracker, workdir=args.workdir, engine=engine)
        else:
            result = run_study(study, tracker=tracker, workdir=args.workdir)
        best = result.best
        if best is None:
            failed += 1
            rows.append([study.name, "-", "no trial completed", "", "", ""])
            continue
        name = write_tuned_recipe(result, out, tracking_uri=tracker.uri, experiment=tracker.experiment)
        counts = f"{result.count('complete')}/{result.count('pruned')}/{result.count('failed')}"
        values = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.values.items()
        )
        rows.append([study.name, f"{best.value:.4f}", name, counts, f"{result.seconds / 60:.1f}", values])
    print(
        _table(
            rows, ["study", "best Dice", "tuned recipe", "done/pruned/failed", "min", "best values"], {1, 4}
        )
    )
    print(f"\ntuned recipes: {out} (`unet-zoo recipes`, `train --recipe NAME`, `bench --suite {suite.name}`)")
    print(f"trials: MLflow experiment {tracker.experiment!r} at {tracker.uri}")
    return 1 if failed else 0


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from zoo.data.registry import get_dataset
    from zoo.factory import create_model
    from zoo.harness.config import TrainConfig
    from zoo.harness.distributed import env_rank
    from zoo.harness.recipes import resolve_recipe
    from zoo.harness.training import train

    _use_recipes(args)
    cfg: TrainConfig | None = None  # None: --resume, the run folder holds it
    if args.resume and not (Path(args.resume) / "run.json").is_file():  # said before the store opens
        raise ConfigError(
            f"--resume {args.resume}: not a run folder (no run.json); pass the folder a run created "
            f"(under {args.workdir}/EXPERIMENT/)"
        )
    if not args.resume:
        fields = {
            "model": args.model,
            "dataset": args.dataset,
            "data_root": args.data_root,
            "overrides": _key_values(args.override, "--override"),
            **_key_values(args.set, "--set"),
        }
        recipe = args.recipe
        if not recipe and args.dataset and not args.model:
            recipe = get_dataset(args.dataset).recipe  # the dataset's default
        if recipe:
            cfg = resolve_recipe(recipe, fields)
        elif not args.model or not args.dataset:
            raise ConfigError(
                "train needs --recipe NAME, or --dataset (a dataset with a default recipe), or --model and "
                "--dataset (or --resume RUN_DIR)"
            )
        else:
            cfg = TrainConfig.from_dict(fields)
        # the overrides' names, types and sizes, before the store opens (a bad --override would leave a
        # failed run behind): built on the meta device, nothing allocated; the channels are placeholders,
        # the dataset's come with its files
        with torch.device("meta"):
            create_model(cfg.model, in_channels=1, num_classes=2, **cfg.overrides)
    main_rank = env_rank() == 0  # under torchrun only rank 0 records and prints
    # the store is opened once the config is known to be good: a bad --set leaves nothing behind
    tracker = _tracker(args, "train") if main_rank else None
    result = train(cfg, tracker=tracker, workdir=args.workdir, resume=args.resume)
    if main_rank:
        _print_results([(result.run_dir.name, result)])
        print(f"run folder: {result.run_dir}")
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from zoo.harness.recipes import list_recipes

    _use_recipes(args)
    recipes = list_recipes(args.pattern)
    if not recipes:
        print(f"no recipe matches {args.pattern!r}; see `unet-zoo recipes`", file=sys.stderr)
        return 1
    if not args.show:
        rows = [
            [r.name, r.dataset, ", ".join(r.models), _recipe_origin(r), r.description.split(": ")[0]]
            for r in recipes
        ]
        print(_table(rows, ["name", "dataset", "models", "made by", "what"], right=set()))
        return 0
    for r in recipes:
        print(f"[{r.name}]  # {r.dataset}; models {', '.join(r.models)}")
        for key, value in sorted(r.fields.items()):
            print(f"{key} = {json.dumps(value)}")
        for key, value in (r.tuned or {}).items():
            print(f"# tuned.{key} = {json.dumps(value)}")
        print()
    return 0


def _recipe_origin(recipe: Any) -> str:
    """Who made a recipe: by hand, or a study (its name, trials, budget and date: its provenance)."""
    t = recipe.tuned
    if not t:
        return "hand"
    return f"study {t.get('study')} ({t.get('budget')}; {t.get('date')}, {t.get('commit')})"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file

    from zoo.harness.config import TrainConfig
    from zoo.harness.data import build_data
    from zoo.harness.evaluate import evaluate
    from zoo.harness.training import prepare_model, run_inferer
    from zoo.runtime import resolve_device

    run_dir = Path(args.run_dir)
    config, weights = run_dir / "config.json", run_dir / "best.safetensors"
    if not config.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.json); pass a folder that a run created")
    if not weights.is_file():
        raise ConfigError(
            f"{run_dir}: no best.safetensors; the run ended before its first validation. Resume it with "
            f"`unet-zoo train --resume {run_dir}`, or evaluate a run that finished an epoch"
        )
    cfg = TrainConfig.from_dict(_read_json(config))
    if args.data_root:
        cfg.data_root = args.data_root
    data = build_data(cfg, args.workdir)
    device = resolve_device(cfg.device)
    model, precision = prepare_model(cfg, data.dataset.in_channels, data.dataset.num_classes, device)
    model.load_state_dict(load_file(str(weights), device=str(device)))
    metrics = evaluate(
        model,
        data.dataset,
        data.split.val,
        inferer=run_inferer(cfg, precision),
        isbi=data.entry.isbi,
        max_images=cfg.max_val_images,
    )
    for key, value in metrics.items():
        print(f"{key:12s} {value:.4f}")
    print(
        f"on {min(len(data.split.val), cfg.max_val_images or len(data.split.val))} validation images of "
        f"{data.source} ({data.split.detail}); the run's dtype and memory format"
    )
    if args.record:
        _record_rescored(run_dir, metrics, args.workdir)
    return 0


def _read_json(path: Path) -> dict[str, Any]:
    """A run folder's JSON file; a damaged one is a ConfigError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"{path}: not valid JSON ({err}); the run folder is damaged: restore the file, or use another run"
        ) from err
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a JSON object, found {type(data).__name__}; the run folder is damaged"
        )
    return data


def _record_rescored(run_dir: Path, metrics: dict[str, float], workdir: str) -> None:
    """Record a run's metrics as this version defines them (after a change of definitions), once the
    weights are shown to be the run's: its Dice must reproduce."""
    from zoo.harness.tracking import Tracker, git_state

    run = _read_json(run_dir / "run.json")
    tracker = Tracker(run["experiment"], workdir=workdir)
    recorded = tracker.client.get_run(run["run_id"]).data.metrics
    if "dice" not in recorded or abs(recorded["dice"] - metrics["dice"]) > 1e-4:
        raise DataError(
            f"{run_dir}: Dice {metrics['dice']:.6f} does not reproduce the run's recorded "
            f"{recorded.get('dice', float('nan')):.6f}; not recording (other data or other weights?)"
        )
    tracker.log_metrics(run["run_id"], metrics, step=int(recorded.get("best_epoch", 0)))
    tracker.set_tags(run["run_id"], {"metrics_rescored_at": git_state()["git_commit"]})
    print(f"recorded in run {run['run_id']} (experiment {run['experiment']})")


def _cmd_report(args: argparse.Namespace) -> int:
    from zoo.harness.tracking import check_experiment_name, default_tracking_uri
    from zoo.report import build, write_comparison, write_report

    experiments = args.experiment or ["suite-default"]
    if len(experiments) > 2:
        raise ConfigError(
            f"--experiment given {len(experiments)} times ({', '.join(experiments)}): give one for a "
            "leaderboard, two to compare them"
        )
    uri = default_tracking_uri(args.workdir)
    name = experiments[0] if len(experiments) == 1 else "-vs-".join(experiments)
    # per experiment under the workdir by default: never the repository's published reports/ by surprise
    if not args.out:  # the names make the folder's name: an existing experiment of another name needs --out
        for experiment in experiments:
            check_experiment_name(experiment, fix="report it with --out FOLDER")
    out = Path(args.out) if args.out else Path(args.workdir) / "reports" / name
    boards = [build(e, uri) for e in experiments]
    for experiment, board in zip(experiments, boards, strict=True):
        for line in board.excluded:
            print(f"left out ({experiment}): {line}" if len(boards) > 1 else f"left out: {line}")
        print(f"{experiment}: {len(board.runs)} runs, {len(board.table)} leaderboard rows from {uri}")
    if len(boards) == 1:
        paths = write_report(boards[0], out, experiment=name, tracking_uri=uri, force=args.force)
    else:
        pair = (experiments[0], experiments[1])
        paths = write_comparison(boards[0], boards[1], out, experiments=pair, force=args.force)
    for kind, path in paths.items():
        print(f"  {kind:18s} {path}")
    return 0


def _cmd_weights_list(args: argparse.Namespace) -> int:
    from zoo.weights import list_weights, local_copy

    rows = []
    for e in list_weights(args.pattern):
        remote = "hf-hub" if (e.url or "").startswith("hf-hub:") else "url"
        where = "packaged" if e.packaged else ("cached" if local_copy(e) is not None else remote)
        dice = f"{e.metrics['dice']:.4f}" if "dice" in e.metrics else "-"
        cost = e.training
        trained = f"{cost['minutes']:.0f} min, {cost['device']}" if cost else "-"
        rows.append(
            [
                e.name + (" *" if e.default else ""),
                e.dataset,
                dice,
                f"{e.params / 1e6:.2f}",
                f"{e.size / 1e6:.1f}",
                where,
                e.recipe or "-",
                trained,
            ]
        )
    if not rows:
        print(f"no weights match {args.pattern!r}")
        return 1
    header = ["weights", "dataset", "val dice", "params (M)", "MB", "source", "recipe", "trained"]
    print(_table(rows, header, {2, 3, 4}))
    print("* the model's default (pretrained=True); Dice on the validation split named in the manifest")
    return 0


def _cmd_weights_download(args: argparse.Namespace) -> int:
    from zoo.weights import fetch, find_weights, list_weights

    entries = list_weights() if args.all else []
    for name in args.names:
        if name.startswith("hf-hub:"):
            from zoo.weights.hf_hub import download

            print(f"{name}: {download(name, progress=True)} (size, sha256 verified against its config.json)")
            continue
        model, dot, tag = name.partition(".")
        if not (dot and _NAME.fullmatch(model) and _NAME.fullmatch(tag)):
            raise ConfigError(
                f"{name!r}: give weights as MODEL.TAG, letters, digits, '_' and '-' "
                "(see `unet-zoo weights list`)"
            )
        entries.append(find_weights(model, tag))
    if not entries and not args.names:
        raise ConfigError(
            "name weights to download (MODEL.TAG or hf-hub:ORG/REPO[@REVISION] ...) or pass --all"
        )
    for e in entries:
        path = fetch(e, mirror=args.mirror, timeout=args.timeout, progress=True)
        print(f"{e.name}: {path} (sha256 verified)")
    return 0


def _cmd_weights_verify(args: argparse.Namespace) -> int:
    from zoo.harness.publish import DataUnavailableError, reproduce_metrics
    from zoo.weights import WeightsError, fetch, list_weights, load_manifest, local_copy

    entries = load_manifest([args.manifest]) if args.manifest else list_weights(args.pattern)
    bad = 0
    for e in entries:
        if local_copy(e) is None:
            print(f"{e.name}: not downloaded (`unet-zoo weights download {e.name}`)")
            continue
        try:
            fetch(e, offline=True)
        except WeightsError as err:
            print(f"{e.name}: BAD: {err}")
            bad += 1
            continue
        line = f"{e.name}: ok (size, sha256)"
        if args.data_root:
            try:
                got = reproduce_metrics(e, args.data_root)
            except DataUnavailableError as err:
                line += f"; metrics not checked: {err}"
            else:
                diffs = {k: got[k] - v for k, v in e.metrics.items() if k in got}
                worst = max(abs(d) for d in diffs.values())
                line += "; metrics " + ", ".join(f"{k} {got[k]:.4f} ({d:+.1e})" for k, d in diffs.items())
                if worst > args.tolerance:
                    line += f" DIFFER by more than {args.tolerance}"
                    bad += 1
        print(line)
    return 1 if bad else 0


def _cmd_weights_publish(args: argparse.Namespace) -> int:
    from zoo.harness.model_registry import check_alias
    from zoo.harness.publish import publish_run
    from zoo.harness.tracking import default_tracking_uri

    if args.register:
        check_alias(args.alias)  # before the file is written
    entry = publish_run(
        args.run_id,
        tracking_uri=default_tracking_uri(args.workdir),
        out_dir=args.out,
        tag=args.tag,
        manifest=args.manifest,
        url_base=args.url_base,
        default=args.default,
        notes=args.notes or "",
        overwrite=args.overwrite,
        push_to_hub=_hub_target(args),
    )
    print(f"{entry.name}: {Path(args.out) / entry.file} ({entry.size} bytes, sha256 {entry.sha256})")
    print("metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in entry.metrics.items()))
    if args.push_to_hub:
        _print_pushed(entry, args)
    if args.register:
        _register(entry.run_id or args.run_id, workdir=args.workdir, name=None, alias=args.alias)
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    _register(args.run_id, workdir=args.workdir, name=args.name, alias=args.alias)
    return 0


def _register(run_id: str, *, workdir: str, name: str | None, alias: str) -> None:
    from zoo.harness.model_registry import register_run
    from zoo.harness.tracking import default_tracking_uri

    uri = default_tracking_uri(workdir)
    reg = register_run(run_id, tracking_uri=uri, name=name, alias=alias)
    how = "new" if reg.created else "the run's existing version"
    print(f"registered {reg.name} version {reg.version} ({how}) from run {reg.run_id}, alias @{reg.alias}")
    print(f"weights: {reg.size} bytes, sha256 {reg.sha256}")
    print(f"load:  {reg.uri}  (this version: {reg.version_uri}; store: {uri})")
    print(f"serve: MLFLOW_TRACKING_URI={uri} mlflow models serve -m {reg.uri} --env-manager local -p 5000")


def _hub_target(args: argparse.Namespace) -> Any:
    from zoo.harness.publish import HubTarget

    if not args.push_to_hub:
        return None
    return HubTarget(
        args.push_to_hub,
        revision=args.revision,
        private=args.private,
        commit_message=args.commit_message,
        license=args.license,
    )


def _print_pushed(entry: Any, args: argparse.Namespace) -> None:
    from zoo.weights.hf_hub import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, HubSpec, repo_url

    pinned = HubSpec.parse(entry.url)
    source = f"hf-hub:{args.push_to_hub}" + (f"@{args.revision}" if args.revision else "")
    print(
        f"pushed {CONFIG_FILE}, {WEIGHTS_FILE}, {CARD_FILE} to {repo_url(pinned.repo_id)} "
        f"(commit {pinned.revision}); the manifest entry's url is {entry.url}"
    )
    print(f'load: zoo.create_model("{entry.model}", weights="{source}")  (this commit: {entry.url})')


def _cmd_weights_import(args: argparse.Namespace) -> int:
    from zoo.interop import import_checkpoint
    from zoo.weights import save_weights

    model = import_checkpoint(args.source)
    meta = {"imported_from": str(args.source)}
    if getattr(model, "mask_values", None) is not None:
        meta["mask_values"] = model.mask_values  # type: ignore[assignment]
    save_weights(model, args.out, meta)
    print(
        f"{args.source} -> {args.out} ({model.model_name}; use it as "
        f"--model {model.model_name} --weights {args.out})"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from zoo.export import ExportCheckError, default_size, export_model
    from zoo.factory import create_model
    from zoo.models import SegmentationModel

    if args.weights.lower() == "none":
        torch.manual_seed(0)  # the same random model on every run
        in_channels, num_classes = args.in_channels or 1, args.num_classes or 2
        model = create_model(args.model, in_channels=in_channels, num_classes=num_classes)
        weights = f"{args.model}.random"
    else:  # resolved as predict resolves --weights; channels/classes, when given, must fit the weights
        model = create_model(
            args.model, weights=args.weights, in_channels=args.in_channels, num_classes=args.num_classes
        )
        weights = str(getattr(model, "pretrained_weights", args.weights))
    if not isinstance(model, SegmentationModel):
        raise ConfigError(f"{args.model} is not a zoo SegmentationModel; export takes zoo models only")
    size: tuple[int, int] | None = None
    origin = ""
    if args.size:
        size = (args.size[0], args.size[1])
    elif not args.dynamic:
        size, origin = default_size(model)
    kind = f"{size[0]}x{size[1]}" if size is not None else "dynamic"
    # a file in this folder, whatever the weights' name holds (hf-hub:ORG/REPO, models:/NAME@ALIAS)
    stem = re.sub(r"[^A-Za-z0-9_.@-]+", "_", weights).strip("_")
    out = Path(args.out) if args.out else Path(f"{stem}.{kind}.{args.format}")
    try:
        report = export_model(
            model,
            out,
            format=args.format,
            size=size,
            dynamic=args.dynamic,
            tolerance=args.tolerance,
            force=args.force,
        )
    except ExportCheckError as err:
        print(_export_check_line(err.report), file=sys.stderr)
        print(f"unet-zoo export: error: {err}", file=sys.stderr)
        return 1
    print(f"{weights} -> {report.path} ({report.format}, {report.detail}, {report.size_bytes / 1e6:.1f} MB)")
    print(
        f"input: {report.shape.rule()}"
        + (f" ({origin})" if origin else "")
        + f"; the size rule of {args.model}: {model.size_rule()} per side"
    )
    print(_export_check_line(report))
    resize = getattr(getattr(model, "training_scale", None), "resize", None)
    if resize is not None:
        print(
            f"note: {weights} was trained on images resized to {resize[0]}x{resize[1]}; resize inputs the "
            "same way (as `unet-zoo predict` does) before running the exported graph"
        )
    return 0


def _export_check_line(report: ExportReport) -> str:
    runner = "onnxruntime" if report.format == "onnx" else "the loaded ExportedProgram"
    shapes = ", ".join("x".join(map(str, s)) for s in report.checked)
    return (
        f"check: {runner} vs PyTorch on seeded random input(s) {shapes}: largest absolute difference "
        f"{report.max_abs_diff:.3g} ({report.describe_tolerance()})"
    )


def _size_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in-channels", type=int, default=1, help="input channels (default 1, as ISBI)")
    p.add_argument("--num-classes", type=int, default=2, help="output classes (default 2)")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="input height=width for FLOPs (default: the model's reference size, 572 for unet, else 512; "
        "a size the model does not take is replaced by the nearest it does)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unet-zoo", description="U-Net model zoo and benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="table of registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell wildcard, e.g. 'unet*' (default: all)")
    _size_options(p)
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("info", help="one model in detail")
    p.add_argument("name")
    _size_options(p)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("recipes", help="named training recipes (`train --recipe NAME`)")
    p.add_argument("pattern", nargs="?", default="*", help="shell wildcard on the name (default: all)")
    p.add_argument("--show", action="store_true", help="every field of each recipe, as TOML")
    p.add_argument("--recipes", action="append", metavar="FILE", help="more recipes files (tuned recipes)")
    p.add_argument("--workdir", default="runs", help=f"its {TUNED_RECIPES} (a study's) is read too")
    p.set_defaults(func=_cmd_recipes)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("list", help="registered datasets: channels, classes, split rule, default recipe")
    p.add_argument("pattern", nargs="?", default="*", help="shell wildcard on the name (default: all)")
    p.set_defaults(func=_cmd_data_list)
    p = data.add_parser(
        "init",
        help="write a dataset file (TOML) for your folders of images and masks, inferred by reading them",
    )
    p.add_argument("--images", required=True, help="folder of images (PNG, JPEG, TIFF, BMP)")
    p.add_argument("--masks", required=True, help="folder of masks (PNG, GIF, TIFF, BMP)")
    p.add_argument("--roi", default=None, help="folder of region-of-interest masks: score inside them only")
    p.add_argument("--name", default=None, help="the dataset's name (default: from the folders)")
    p.add_argument("--out", required=True, help="the dataset file to write, e.g. my.toml")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_cmd_data_init)
    p = data.add_parser(
        "verify",
        help="check a dataset folder against its card, or every file a dataset file names; exit 1 on any "
        "problem",
    )
    p.add_argument("path", help="a dataset folder (isbi2012/, carvana/ ...) or a dataset file (my.toml)")
    p.add_argument("--dataset", default=None, help="registered dataset (default: detected from the layout)")
    p.add_argument(
        "--checksums",
        action="store_true",
        help="also compare files with the published checksums on record (real data only)",
    )
    p.set_defaults(func=_cmd_data_verify)
    p = data.add_parser("synth", help="write a synthetic twin in the real on-disk format")
    p.add_argument("name", help="a registered dataset with a twin (`unet-zoo data list`)")
    p.add_argument("out")
    p.add_argument(
        "--count",
        type=int,
        default=None,
        help="isbi2012: labelled slices (and as many test slices); carvana: images, 16 views per car "
        "(default: the twin's, as training uses it)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="isbi2012: slice side; carvana: image width, height 2/3 of it (default: the twin's)",
    )
    p.set_defaults(func=_cmd_data_synth)

    def run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-root",
            default=None,
            help="folder holding isbi2012/, carvana512/ ... (e.g. ../shared/data); default: synthetic twins",
        )
        p.add_argument("--workdir", default="runs", help="run folders, twins and the default MLflow store")
        p.add_argument("--experiment", default=None, help="MLflow experiment name")
        p.add_argument(
            "--set", action="append", metavar="KEY=VALUE", help="any TrainConfig field, e.g. epochs=3"
        )

    def engine_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--backend",
            choices=("local", "ray"),
            default="local",
            help="local: this machine; ray: Ray Tune trials on a local Ray or a cluster (pip install "
            "'unet-zoo[tune]')",
        )
        p.add_argument(
            "--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)"
        )
        p.add_argument("--cpus-per-trial", type=float, default=None, help="Ray: CPUs (threads) per trial")
        p.add_argument("--gpus-per-trial", type=float, default=None, help="Ray: GPUs per trial")
        p.add_argument(
            "--recipes", action="append", metavar="FILE", help="more recipes files (tuned recipes)"
        )

    p = sub.add_parser("bench", help="run a benchmark suite (default: the main job)")
    p.add_argument(
        "--suite",
        default="default",
        help="suite name (./benchmarks/suites, then the built-in ones) or a .toml path",
    )
    p.add_argument("--models", default=None, help="registry pattern, e.g. 'unet*'")
    p.add_argument(
        "--datasets", nargs="+", default=None, help="registered datasets or dataset files (my.toml)"
    )
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, each in its own process, sharing the CPU threads (default 1: in turn)",
    )
    p.add_argument(
        "--report-out", default=None, help="leaderboard folder (default: WORKDIR/reports/EXPERIMENT)"
    )
    run_options(p)
    engine_options(p)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "tune",
        help="search each (model, dataset) of a suite with the same budget; write tuned recipes",
    )
    p.add_argument(
        "--suite", required=True, help="suite name or .toml path; its [tune] table holds the study"
    )
    p.add_argument("--models", default=None, help="registry pattern, e.g. 'unet*'")
    p.add_argument("--datasets", nargs="+", default=None, help="registered datasets or dataset files")
    p.add_argument(
        "--trials", type=int, default=None, help="trials per study (the budget, with --max-images)"
    )
    p.add_argument("--max-images", type=int, default=None, help="training images per trial at most")
    p.add_argument("--seconds", type=float, default=None, help="a wall-clock limit per study on top")
    p.add_argument("--sampler", choices=("tpe", "random"), default=None, help="Optuna sampler (default tpe)")
    p.add_argument(
        "--pruner", choices=("median", "asha", "none"), default=None, help="pruning (default median)"
    )
    p.add_argument("--space", default=None, help="a search spaces TOML (default: zoo/harness/spaces.toml)")
    p.add_argument(
        "--recipes-out", default=None, help=f"recipes file to write (default: WORKDIR/{TUNED_RECIPES})"
    )
    run_options(p)
    engine_options(p)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser(
        "train",
        help="train one model on one dataset, or resume a killed run; data-parallel under "
        "torchrun --nproc-per-node N -m zoo.cli train ... (--set batch_size is the global batch)",
    )
    p.add_argument(
        "--recipe",
        help="start from a named recipe (`unet-zoo recipes`); --model, --override, --set refine it",
    )
    p.add_argument("--model", help="registered model (default: the recipe's)")
    p.add_argument(
        "--dataset",
        help="registered dataset (`unet-zoo data list`) or dataset file (my.toml); default: the recipe's",
    )
    p.add_argument(
        "--override",
        action="append",
        metavar="KEY=VALUE",
        help="model override, e.g. base_channels=16 or attention=true (JSON values; True/False/None too)",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    p.add_argument("--recipes", action="append", metavar="FILE", help="more recipes files (tuned recipes)")
    run_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("report", help="leaderboard (Markdown, CSV, HTML, plots) from an experiment's runs")
    p.add_argument(
        "--experiment",
        action="append",
        help="MLflow experiment (default: suite-default, the main job's); twice, A then B: the two "
        "side by side with the change B - A",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: WORKDIR/reports/EXPERIMENT); one holding another experiment's "
        "report is refused without --force",
    )
    p.add_argument("--workdir", default="runs", help="where the default SQLite store is")
    p.add_argument(
        "--force", action="store_true", help="replace a report of another experiment in the output folder"
    )
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("evaluate", help="evaluate a run's best weights on its validation split")
    p.add_argument("run_dir")
    p.add_argument("--data-root", default=None)
    p.add_argument("--workdir", default="runs", help="where synthetic twins are (for runs on synthetic data)")
    p.add_argument(
        "--record",
        action="store_true",
        help="record the metrics, as this version defines them, in the run (after its Dice reproduces)",
    )
    p.set_defaults(func=_cmd_evaluate)

    from zoo import predict  # the predict subcommand's options live beside its code

    predict.add_parser(sub)

    from zoo.export import DEFAULT_TOLERANCE, FORMATS

    p = sub.add_parser(
        "export",
        help="a model and its weights as ONNX or a torch.export program, checked against PyTorch",
        description=(
            "Export a registered model with its weights to ONNX (the dynamo exporter; needs "
            "`pip install 'unet-zoo[export]'`) or a torch.export .pt2 program, at a fixed size (batch 1) "
            "or with dynamic shapes. The size contract decides the shapes: a size the model cannot take "
            "is refused, naming the nearest it can. The written file is loaded back and run (onnxruntime, "
            "or the loaded ExportedProgram) next to PyTorch on seeded random inputs; the largest absolute "
            "difference is printed, and above --tolerance nothing is written and the exit code is 1."
        ),
    )
    p.add_argument("model", help="registered model name, e.g. unet_bn (see `unet-zoo models`)")
    p.add_argument(
        "--weights",
        required=True,
        metavar="TAG|PATH|hf-hub:ORG/REPO|none",
        help="a weights tag of the model (isbi2012-w16-s0 or unet_bn.isbi2012-w16-s0), a .safetensors "
        "file, or a Hugging Face Hub repository (hf-hub:ORG/REPO[@REVISION]), as predict takes; none: the "
        "randomly initialised model (seed 0; see --in-channels)",
    )
    p.add_argument("--format", required=True, choices=list(FORMATS), help="onnx or pt2 (torch.export)")
    shapes = p.add_mutually_exclusive_group()
    shapes.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="export for inputs of exactly (1, C, H, W); H and W must be sizes the model takes (the "
        "paper's unet: 188 + 16k). Default: the weights' training image size, else the model's "
        "reference size (572 for unet, else 512)",
    )
    shapes.add_argument(
        "--dynamic",
        action="store_true",
        help="one graph for any batch and for sides H, W = m + s*k (k >= 0) with s the least common "
        "multiple of the size contract's period and the model's total stride and m its smallest size "
        "that torch.export can keep dynamic: unet 188 + 16k, padded U-Nets 32 + 16k, smp models "
        "64 + 32k (the command prints the rule). An ONNX graph does not check the rule: other sizes give "
        "wrong outputs or errors",
    )
    p.add_argument("--out", default=None, metavar="FILE", help="default: MODEL.TAG.HxW.FORMAT (or .dynamic.)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest accepted absolute difference of the logits, relative to the largest absolute logit "
        f"when that is above 1 (default {DEFAULT_TOLERANCE:g})",
    )
    p.add_argument(
        "--in-channels", type=int, default=None, help="with --weights none: input channels (default 1)"
    )
    p.add_argument(
        "--num-classes", type=int, default=None, help="with --weights none: output classes (default 2)"
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "register",
        help="a finished run's best weights as a version in MLflow's model registry (models:/NAME@ALIAS)",
        description=(
            "Register a finished harness run's best weights as a new version of a registered model (default "
            "name MODEL-DATASET), point an alias at it and tag it with the run's metrics, commit and the "
            "weights' sha256. Load it with --weights models:/NAME@ALIAS; serve it with `mlflow models serve "
            "-m models:/NAME@ALIAS --env-manager local`. A run registered already keeps its version: the "
            "alias moves to it."
        ),
    )
    p.add_argument("run_id", help="MLflow run id (or a unique prefix of at least 8 characters)")
    p.add_argument(
        "--name", default=None, help="registered model name (default: MODEL-DATASET, e.g. unet_bn-isbi2012)"
    )
    p.add_argument("--alias", default="champion", help="alias moved to the version (default: champion)")
    p.add_argument(
        "--workdir", default="runs", help="where the default SQLite store is (or MLFLOW_TRACKING_URI)"
    )
    p.set_defaults(func=_cmd_register)

    weights = sub.add_parser("weights", help="pretrained weights: list, download, verify, publish, import")
    wsub = weights.add_subparsers(dest="weights_command", required=True)
    p = wsub.add_parser("list", help="weights in the manifest (shipped + UNET_ZOO_MANIFEST)")
    p.add_argument("pattern", nargs="?", default="*", help="shell wildcard on MODEL.TAG")
    p.set_defaults(func=_cmd_weights_list)
    p = wsub.add_parser("download", help="fetch weights into the cache (UNET_ZOO_HOME), verified by sha256")
    p.add_argument(
        "names",
        nargs="*",
        metavar="MODEL.TAG|hf-hub:ORG/REPO[@REVISION]",
        help="manifest entries, or Hugging Face Hub repositories (into huggingface_hub's cache, HF_HOME)",
    )
    p.add_argument("--all", action="store_true", help="every entry of the manifest")
    p.add_argument("--mirror", default=None, help="URL or folder standing in for the source host")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds of silence before giving up")
    p.set_defaults(func=_cmd_weights_download)
    p = wsub.add_parser("verify", help="check shipped and cached files (size, sha256); exit 1 on a bad one")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--manifest", default=None, help="check this manifest's entries instead")
    p.add_argument(
        "--data-root", default=None, help="also re-measure each entry's metrics on the data it names"
    )
    p.add_argument("--tolerance", type=float, default=2e-3, help="allowed metric difference (default 0.002)")
    p.set_defaults(func=_cmd_weights_verify)
    p = wsub.add_parser("publish", help="a harness run's best weights -> file + manifest entry")
    p.add_argument("run_id", help="MLflow run id (or a unique prefix of at least 8 characters)")
    p.add_argument("--out", default="published", help="folder for the file (default: published/)")
    p.add_argument("--tag", default=None, help="default: DATASET-SUITE-sSEED")
    p.add_argument("--manifest", default=None, help="manifest to add to (default: OUT/manifest.json)")
    p.add_argument("--url-base", default=None, help="where the file will be served; default: packaged")
    p.add_argument("--default", action="store_true", help="make it the model's default weights")
    p.add_argument("--notes", default=None)
    p.add_argument("--overwrite", action="store_true", help="replace an entry of the same name")
    hub = p.add_argument_group(
        "Hugging Face Hub",
        "push the file to a model repository (config.json, model.safetensors, README.md model card); the "
        "entry's url becomes hf-hub:ORG/REPO@COMMIT. Token: HF_TOKEN or `hf auth login`; HF_ENDPOINT for "
        "another Hub",
    )
    hub.add_argument(
        "--push-to-hub", default=None, metavar="ORG/REPO", help="the repository (created if absent)"
    )
    hub.add_argument(
        "--revision",
        default=None,
        metavar="BRANCH",
        help="branch to commit to (created if absent; default main)",
    )
    hub.add_argument("--private", action="store_true", help="create the repository private")
    hub.add_argument(
        "--commit-message", default=None, help="default: Publish MODEL.TAG (DATASET, val dice ...)"
    )
    hub.add_argument(
        "--license",
        default="other",
        help="the model card's licence: a Hub licence id (mit, cc-by-4.0 ...) or other (default), the "
        "training data's terms, which the card quotes",
    )
    p.add_argument("--workdir", default="runs", help="where the default SQLite store is")
    p.add_argument(
        "--register",
        action="store_true",
        help="also register the run in MLflow's model registry (`register`)",
    )
    p.add_argument("--alias", default="champion", help="with --register: the alias (default: champion)")
    p.set_defaults(func=_cmd_weights_publish)
    p = wsub.add_parser("import", help="convert a milesial/Pytorch-UNet .pth or an smp folder to a zoo file")
    p.add_argument("source", help="milesial checkpoint file, or smp save_pretrained folder")
    p.add_argument("out", help="output .safetensors file")
    p.set_defaults(func=_cmd_weights_import)
    return parser


class _OutputError(OSError):
    """Writing the command's output failed: its reader has gone, or its device is full."""


class _Output:
    """``sys.stdout`` while a command runs: a write or flush that fails raises :class:`_OutputError`, so
    that :func:`main` tells the output's failure from a bug's OSError."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self.stream.write(text))
        except OSError as err:
            raise _OutputError(err.errno, err.strerror) from err

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as err:
            raise _OutputError(err.errno, err.strerror) from err

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _output_failed(err: _OutputError, stream: Any) -> int:
    """The exit code for output that could not be written, after a line saying why (none for a reader
    that has gone). The rest of the output is then dropped: the interpreter flushes it at exit, and
    would fail again there with a message of its own."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a file (a test's capture): nothing is flushed at exit
        fd = None
    where = "standard output"
    if fd is not None:
        with contextlib.suppress(OSError):
            where = os.readlink(f"/proc/self/fd/{fd}")  # Linux: the file or device it points at
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    if err.errno == errno.EPIPE:
        return 141  # 128 + SIGPIPE: what a shell reports for a tool its closed pipe ended
    fix = "redirect it elsewhere"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free some space there, or {fix}"
    print(f"unet-zoo: error: cannot write the output to {where}: {err.strerror}; {fix}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "httpx", "httpx2", "mlflow", "onnx_ir", "onnxscript"):  # httpx: the Hub client
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stdout = sys.stdout
    sys.stdout = _Output(stdout)  # a TextIO in all that print and the libraries use
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # what is still buffered fails here, not in the interpreter's exit
        return code
    except ZooError as err:  # the user's to fix, and the message says how; anything else is a bug
        print(f"unet-zoo: error: {' '.join(str(err).splitlines())}", file=sys.stderr)  # one line, always
        return 2
    except _OutputError as err:
        return _output_failed(err, stdout)
    finally:
        sys.stdout = stdout


if __name__ == "__main__":
    raise SystemExit(main())

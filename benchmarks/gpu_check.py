"""Check a GPU end to end in one command, within a time budget (issue 16).

GPU time comes in short slots, so this runs the project's GPU measurements as a sequence of stages,
each in its own process with its own timeout: a stage that hangs, crashes or runs out of memory is
recorded (``timeout`` or ``failed``, with the tail of its output) and the next one still runs. Each stage
gets a share of ``--budget-seconds`` (default 460: under 8 minutes with the start-up) as its hard
timeout; one that finds less than half its share left is ``skipped``, with the reason. Training budgets
are seconds (``budget_seconds``, derived from the stage's share), never epoch counts that could overrun.

Stages (GPU mode):

1. ``throughput``: the paper's ``unet`` at 572x572 against NVIDIA's A100 figures
   (``benchmarks/unet572_throughput.py``: images/s, model FLOPs utilisation, CUDA graphs);
2. ``overhead-unet_bn``, ``overhead-unet``: the harness's training step against a bare one
   (``benchmarks/harness_overhead.py``), as harness over bare images/s;
3. ``bench-isbi2012``, ``bench-carvana512``: every registered variant trained briefly on the real data
   through ``unet-zoo bench --suite gpu``; each run's Dice and images/s read back from MLflow;
4. ``train-isbi2012``, ``train-carvana512``: one longer run each through ``unet-zoo train --recipe
   gpu-isbi2012`` / ``gpu-carvana512`` (``--model``, default ``unet_bn``), with its validation scores;
5. ``peers``: the zoo against MONAI and smp (``benchmarks/peers.py``), skipped if they do not import.

Stages 3-4 read ``--data-root`` (default ``../shared/data`` when it exists); without it they are skipped.

``--quick`` (also what a machine without CUDA falls back to) runs the same stages shrunk for a CPU in a
couple of minutes: tiny widths and crops, a few steps, synthetic twins unless ``--data-root`` is given.
It checks this script and the commands it drives, not speed.

Writes ``<out>/gpu_check[-quick]-<machine>.json`` (machine, settings, per stage: status, reason,
seconds, timeout, command, figures) and a Markdown summary beside it (``.md``). Progress lines go to
stdout, so ``| tee gpu_check.log`` keeps a record of a slot that is cut short.

    PYTHONPATH=.:/tmp/site python3 benchmarks/gpu_check.py --data-root ../shared/data
    python benchmarks/gpu_check.py --quick [--out /tmp/check]       # CPU, ~2 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import DEFAULT_DATA_ROOT, RESULTS

from zoo.machine import describe_machine, machine_slug, write_results
from zoo.registry import list_models

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
DEFAULT_DATA = DEFAULT_DATA_ROOT
GPU_BUDGET = 460.0
QUICK_BUDGET = 600.0  # a cap: an idle 2-core CPU needs about 2 minutes, a busy one far more
STATUSES = ("ok", "failed", "timeout", "skipped")
# a stage that finds less than this part of its share left is skipped: it could not finish anyway
MIN_SHARE = 0.5
OUTPUT_TAIL = 3000  # characters of a failed stage's output kept in the JSON
QUICK_TWIN = '{"count": 32, "size": 96}'  # small synthetic twins for --quick (enough for 4 ISBI folds)


@dataclass(frozen=True)
class Plan:
    """The resolved options every stage reads."""

    quick: bool
    device: str
    data_root: Path | None
    model: str
    models: str
    workdir: Path
    budget_seconds_field: bool  # TrainConfig takes budget_seconds (else short epochs stand in)

    @property
    def runs(self) -> Path:
        """The training stages' one workdir: synthetic twins are written once and shared."""
        return self.workdir / "runs"

    @property
    def tracking_uri(self) -> str:
        """One throwaway SQLite store for every stage (its schema is created once, which takes seconds)."""
        return f"sqlite:///{(self.workdir / 'mlflow.db').as_posix()}"


@dataclass(frozen=True)
class StageRun:
    """What a stage's command and collector see: the plan, the stage's folder and its timeout."""

    plan: Plan
    folder: Path
    timeout: float


@dataclass(frozen=True)
class Stage:
    """One time-boxed step. ``share`` is its part of the budget (its hard timeout); ``skip`` returns a
    reason not to run it, ``command`` the argv to run, ``collect`` the figures from what it wrote (it
    raises when the stage left no results). ``missed_is_ok``: the script exits 1 when a target is missed,
    which is a finding recorded in the figures, not a failed stage."""

    name: str
    what: str
    share: float
    command: Callable[[StageRun], list[str]]
    collect: Callable[[StageRun], dict[str, Any]]
    skip: Callable[[Plan], str | None] = lambda plan: None
    missed_is_ok: bool = False


@dataclass
class StageResult:
    name: str
    what: str
    status: str
    seconds: float = 0.0
    timeout_s: float | None = None
    reason: str | None = None
    returncode: int | None = None
    command: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    output_tail: str | None = None


class Clock:
    """Elapsed and remaining seconds of the whole check, for the budget and the progress lines."""

    def __init__(self, budget: float, reserve: float) -> None:
        self.start = time.perf_counter()
        self.budget = budget
        self.reserve = reserve  # kept for collecting results and writing the files at the end

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def remaining(self) -> float:
        return self.budget - self.reserve - self.elapsed

    def log(self, message: str) -> None:
        print(
            f"[gpu_check {self.elapsed:6.1f} s | {max(self.remaining, 0):6.1f} s left] {message}", flush=True
        )


# -- commands ------------------------------------------------------------------------------------------
def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def script(name: str, *args: str) -> list[str]:
    return python(str(BENCHMARKS / name), *args)


def zoo_cli(*args: str) -> list[str]:
    return python("-m", "zoo.cli", *args)


def training_budget(run: StageRun, *, runs: int, part: float) -> list[str]:
    """``--set`` flags bounding each training run by seconds: ``part`` of the stage's timeout shared by
    its ``runs`` (the rest is start-up, validation, cost figures, MLflow). Before TrainConfig has
    ``budget_seconds``, short epochs stand in (the timeout stays the hard stop)."""
    plan = run.plan
    if plan.budget_seconds_field:
        seconds = max(1, int(run.timeout * part / max(runs, 1)))
        flags = ["--set", f"budget_seconds={seconds}"]
        if plan.quick:  # a CPU needs no more than a handful of steps to prove the path
            flags += ["--set", "epochs=1", "--set", "steps_per_epoch=2"]
        return flags
    epochs, steps = (1, 2) if plan.quick else (1, 10)
    return ["--set", f"epochs={epochs}", "--set", f"steps_per_epoch={steps}"]


def data_flags(plan: Plan) -> list[str]:
    return ["--data-root", str(plan.data_root)] if plan.data_root else []


def experiment(run: StageRun) -> str:
    return f"gpu-check-{run.folder.name}"


def throughput_command(run: StageRun) -> list[str]:
    extra = ["--quick"] if run.plan.quick else []
    return script("unet572_throughput.py", "--device", run.plan.device, "--out", str(run.folder), *extra)


def overhead_command(model: str) -> Callable[[StageRun], list[str]]:
    def command(run: StageRun) -> list[str]:
        # GPU: full width on 256x256 crops of the 256x256 twin, batch 8 (a step long enough to time)
        width, crop, batch, steps, epochs = (8, 32, 2, 2, 2) if run.plan.quick else (64, 256, 8, 20, 3)
        # --quick in fp32: oneDNN's bf16 kernels take seconds per step at these toy sizes on some CPUs
        amp = ["--amp", "none"] if run.plan.quick else []
        return script(
            "harness_overhead.py",
            *("--model", model, "--width", str(width), "--crop", str(crop), "--batch", str(batch)),
            *("--steps", str(steps), "--epochs", str(epochs), "--device", run.plan.device),
            *("--out", str(run.folder), *amp),
        )

    return command


def bench_command(dataset: str) -> Callable[[StageRun], list[str]]:
    def command(run: StageRun) -> list[str]:
        plan = run.plan
        runs = len(list_models(plan.models))
        common = ["--models", plan.models, "--seeds", "1", "--workdir", str(plan.runs)]
        common += ["--experiment", experiment(run), "--report-out", str(run.folder / "report")]
        if plan.quick:
            # the smoke suite's tiny widths at 32x32; a small twin when no data root is given
            flags = ["--suite", "smoke", "--datasets", dataset, "--set", f"device={plan.device}"]
            flags += ["--set", "crop=32", "--set", "cost_size=32"]
            if plan.data_root is None:
                flags += ["--set", f"synthetic={QUICK_TWIN}"]
                flags += ["--set", "val_fraction=0.5"] if dataset.startswith("carvana") else []
        else:
            # short epochs, so that the seconds budget, checked after each epoch, cuts close
            flags = ["--suite", "gpu", "--datasets", dataset, "--set", "steps_per_epoch=20"]
            flags += ["--set", "max_val_images=32"]
        budget = training_budget(run, runs=runs, part=0.35)
        return zoo_cli("bench", *flags, *common, *data_flags(plan), *budget)

    return command


def train_command(recipe: str) -> Callable[[StageRun], list[str]]:
    def command(run: StageRun) -> list[str]:
        plan = run.plan
        flags = ["--recipe", recipe, "--model", plan.model, "--set", f"device={plan.device}"]
        flags += ["--workdir", str(plan.runs), "--experiment", experiment(run)]
        if plan.quick:
            flags += ["--override", "base_channels=8", "--set", "crop=32", "--set", "batch_size=2"]
            flags += ["--set", "max_val_images=2", "--set", "cost_batch=2", "--set", "cost_size=32"]
            if plan.data_root is None:
                flags += ["--set", f"synthetic={QUICK_TWIN}"]
        elif recipe.endswith("carvana512"):
            flags += ["--set", "max_val_images=64"]  # 900 validation images would eat the slot
        budget = training_budget(run, runs=1, part=0.55)
        return zoo_cli("train", *flags, *data_flags(plan), *budget)

    return command


def peers_command(run: StageRun) -> list[str]:
    extra = ["--quick"] if run.plan.quick else []
    return script("peers.py", "--device", run.plan.device, "--out", str(run.folder), *extra)


# -- skip rules ----------------------------------------------------------------------------------------
def needs_data(dataset: str) -> Callable[[Plan], str | None]:
    def skip(plan: Plan) -> str | None:
        if plan.quick and plan.data_root is None:
            return None  # synthetic twins
        if plan.data_root is None:
            return (
                f"no data root: give --data-root DIR (the folder holding {dataset}/); "
                f"{DEFAULT_DATA} does not exist here"
            )
        if not (plan.data_root / dataset).is_dir():
            return f"{plan.data_root / dataset} does not exist; give the --data-root that holds {dataset}/"
        return None

    return skip


def needs_peers(plan: Plan) -> str | None:
    missing = [m for m in ("monai", "segmentation_models_pytorch") if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"{', '.join(missing)} not importable: pip install -e '.[peers]', or put the wheels on PYTHONPATH"
        )
    return None


# -- figures -------------------------------------------------------------------------------------------
def results_file(folder: Path, stem: str) -> dict[str, Any]:
    found = sorted(folder.glob(f"{stem}*.json"))
    if not found:
        raise FileNotFoundError(f"the stage wrote no {stem}-*.json into {folder}")
    data: dict[str, Any] = json.loads(found[0].read_text())
    return data


def collect_throughput(run: StageRun) -> dict[str, Any]:
    data = results_file(run.folder, "unet572_throughput")
    keep = ("batch", "images_per_s", "over_a100_reference", "model_tflops_per_s", "mfu")
    return {
        "device_name": data["device_name"],
        "input": data["input"],
        "gflop_per_image_forward": data["gflop_per_image_forward"],
        "a100_training_images_per_s": data["a100_reference"]["training_images_per_s"],
        "a100_inference_images_per_s": data["a100_reference"]["inference_images_per_s"],
        "peak_bf16_tflops": data["peak_bf16_tflops"],
        "max_memory_gib": data["max_memory_gib"],
        "rows": [{"run": key, **{k: row[k] for k in keep}} for key, row in data["runs"].items()],
    }


def collect_overhead(run: StageRun) -> dict[str, Any]:
    data = results_file(run.folder, "harness_overhead")
    bare, harness = data["bare_seconds_per_step"], data["harness_seconds_per_step"]
    return {
        "model": data["model"],
        "base_channels": data["base_channels"],
        "crop": data["crop"],
        "batch": data["batch"],
        "steps_compared": data["steps_compared"],
        "bare_images_per_s": round(data["batch"] / bare, 2),
        "harness_images_per_s": round(data["batch"] / harness, 2),
        # images/s of the harness over the bare loop's: 1.0 is no overhead, 0.91 the 10%
        "harness_over_bare": round(bare / harness, 4),
        "overhead_fraction": data["overhead_fraction"],
        "within_10_percent": data["within_10_percent"],
    }


def mlflow_runs(run: StageRun) -> list[dict[str, Any]]:
    """Each training run the stage recorded: status, quality and cost figures, epochs and seconds."""
    from mlflow.tracking import MlflowClient  # late: seconds to import, only training stages need it

    client = MlflowClient(tracking_uri=run.plan.tracking_uri)
    found_experiment = client.get_experiment_by_name(experiment(run))
    if found_experiment is None:
        raise FileNotFoundError(f"the stage recorded no MLflow experiment {experiment(run)!r}")
    found = client.search_runs([found_experiment.experiment_id], max_results=1000)
    rows = []
    for r in sorted(found, key=lambda r: r.info.run_name or ""):
        if r.data.tags.get("zoo.kind") != "run":
            continue  # the suite's parent run
        m = r.data.metrics
        history = client.get_metric_history(r.info.run_id, "train_seconds")
        row: dict[str, Any] = {"run": r.info.run_name, "status": r.info.status}
        for key in ("dice", "iou", "pixel_error", "rand_error", "vrand", "train_images_per_s"):
            if key in m:
                row[key] = round(m[key], 4 if "images" not in key else 2)
        if "infer_images_per_s" in m:
            row["infer_images_per_s"] = round(m["infer_images_per_s"], 2)
        row["epochs"] = len(history)
        row["train_seconds"] = round(sum(h.value for h in history), 1)
        rows.append(row)
    return rows


def collect_bench(run: StageRun) -> dict[str, Any]:
    rows = mlflow_runs(run)
    if not rows:
        raise FileNotFoundError(f"no training run recorded in experiment {experiment(run)!r}")
    finished = [r for r in rows if r["status"] == "FINISHED"]
    return {
        "runs": len(rows),
        "finished": len(finished),
        "expected": len(list_models(run.plan.models)),
        "rows": rows,
    }


def collect_train(run: StageRun) -> dict[str, Any]:
    rows = mlflow_runs(run)
    if len(rows) != 1:
        raise FileNotFoundError(
            f"expected one training run in experiment {experiment(run)!r}, found {len(rows)}"
        )
    return rows[0]


def collect_peers(run: StageRun) -> dict[str, Any]:
    data = results_file(run.folder, "peers")
    rows = [
        {
            "pair": f"{p['zoo']} vs {p['peer']}",
            "run": key,
            "zoo_over_peer_throughput": row["zoo_over_peer_throughput"],
            "zoo_over_peer_per_flop": row["zoo_over_peer_per_flop"],
            "passed": row.get("passed", "-"),
        }
        for p in data["pairs"]
        for key, row in p["runs"].items()
    ]
    return {"versions": data["versions"], "all_targets_met": all(data["checks"].values()), "rows": rows}


def default_stages() -> list[Stage]:
    """The GPU check's stages in order; shares of the budget sum to 0.98 (2% is kept for the end)."""
    return [
        Stage(
            "throughput",
            "the paper's unet (572x572, bf16, channels-last on a GPU) vs NVIDIA's A100 figures",
            0.09,
            throughput_command,
            collect_throughput,
        ),
        *(
            Stage(
                f"overhead-{model}",
                f"harness training step vs a bare loop, {model}",
                share,
                overhead_command(model),
                collect_overhead,
                missed_is_ok=True,
            )
            for model, share in (("unet_bn", 0.08), ("unet", 0.09))
        ),
        *(
            Stage(
                f"bench-{dataset}",
                f"the --models variants (default: all registered), a short run on {dataset} (unet-zoo bench)",
                0.20,
                bench_command(dataset),
                collect_bench,
                skip=needs_data(dataset),
            )
            for dataset in ("isbi2012", "carvana512")
        ),
        *(
            Stage(
                f"train-{dataset}",
                f"one longer run, recipe gpu-{dataset} (unet-zoo train)",
                0.12,
                train_command(f"gpu-{dataset}"),
                collect_train,
                skip=needs_data(dataset),
            )
            for dataset in ("isbi2012", "carvana512")
        ),
        Stage(
            "peers",
            "the zoo vs MONAI BasicUNet / AttentionUnet and smp.Unet (throughput ratios)",
            0.08,
            peers_command,
            collect_peers,
            skip=needs_peers,
            missed_is_ok=True,
        ),
    ]


# -- running -------------------------------------------------------------------------------------------
def child_env(plan: Plan) -> dict[str, str]:
    env = dict(os.environ)
    # the project runs uninstalled on a lent GPU machine: make `zoo` importable from any folder
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    # every run goes to the stage's throwaway store, never to a team's server
    env["MLFLOW_TRACKING_URI"] = plan.tracking_uri
    env["PYTHONUNBUFFERED"] = "1"  # a killed stage's log then holds its last lines
    return env


def tail(path: Path) -> str:
    text = path.read_text(errors="replace") if path.is_file() else ""
    return text[-OUTPUT_TAIL:]


def run_stage(stage: Stage, plan: Plan, clock: Clock) -> StageResult:
    result = StageResult(stage.name, stage.what, "skipped")
    reason = stage.skip(plan)
    share = stage.share * (clock.budget - clock.reserve)
    if reason is None and clock.remaining < share * MIN_SHARE:
        reason = (
            f"budget: {clock.remaining:.0f} s left, under half of its {share:.0f} s share; "
            "raise --budget-seconds"
        )
    if reason is not None:
        result.reason = reason
        clock.log(f"skip  {stage.name}: {reason}")
        return result
    timeout = min(share, clock.remaining)
    folder = plan.workdir / stage.name
    folder.mkdir(parents=True, exist_ok=True)
    run = StageRun(plan, folder, timeout)
    result.command = stage.command(run)
    result.timeout_s = round(timeout, 1)
    clock.log(f"start {stage.name} (timeout {timeout:.0f} s): {shlex.join(result.command)}")
    log_path = folder / "output.log"
    start = time.perf_counter()
    with log_path.open("w") as log:
        # a session of its own: on timeout the whole group goes (DataLoader and suite workers too)
        proc = subprocess.Popen(
            result.command,
            cwd=ROOT,
            env=child_env(plan),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            result.returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            result.status = "timeout"
            result.reason = f"still running after its {timeout:.0f} s share: killed"
    result.seconds = round(time.perf_counter() - start, 1)
    if result.status == "timeout":
        # what a cut stage finished still counts (the suite's first runs, say); often it is nothing
        with contextlib.suppress(Exception):
            result.figures = stage.collect(run)
    else:
        try:
            result.figures = stage.collect(run)
        except Exception as err:  # no results: the stage failed before writing them
            result.status, result.reason = "failed", f"exit {result.returncode}; {err}"
        else:
            if result.returncode == 0:
                result.status = "ok"
            elif result.returncode == 1 and stage.missed_is_ok:
                result.status = "ok"
                result.reason = "exit 1: a target was missed (see the figures)"
            else:
                result.status, result.reason = "failed", f"exit {result.returncode}"
    if result.status != "ok":
        result.output_tail = tail(log_path)
        lines = result.output_tail.strip().splitlines()[-15:]
        print("\n".join(f"    | {line}" for line in lines), flush=True)
    clock.log(f"end   {stage.name}: {result.status} in {result.seconds:.1f} s" + _why(result))
    return result


def _why(result: StageResult) -> str:
    return f" ({result.reason})" if result.reason else ""


# -- the report ----------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value).replace("|", "/")


def markdown_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "-")) for c in columns) + " |" for row in rows]
    return lines


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    overview = [
        {
            "stage": s["name"],
            "status": s["status"],
            "seconds": s["seconds"],
            "timeout s": s["timeout_s"] if s["timeout_s"] is not None else "-",
            "note": s["reason"] or "",
        }
        for s in results["stages"]
    ]
    lines = [
        f"# GPU check{' (quick, CPU)' if results['quick'] else ''}: {machine['device_name']}",
        "",
        f"{results['finished_at']}; {results['total_seconds']} s of a {results['budget_seconds']:.0f} s "
        f"budget; data: {results['data_root'] or 'synthetic twins'}; torch {machine['torch']}, "
        f"CUDA {machine['cuda']}; training budget: {results['training_budget']}.",
        "",
        *markdown_table(overview),
    ]
    for s in results["stages"]:
        lines += ["", f"## {s['name']}: {s['status']}", "", s["what"] + ".", ""]
        figures = dict(s["figures"])
        rows = figures.pop("rows", None)
        if figures:
            lines += markdown_table([{"figure": k, "value": v} for k, v in figures.items()])
            lines.append("")
        if rows:
            lines += markdown_table(rows)
            lines.append("")
        if s["reason"]:
            lines += [f"Note: {s['reason']}", ""]
        if s["command"]:
            lines += ["```", shlex.join(s["command"]), "```"]
    return "\n".join(lines).rstrip() + "\n"


# -- main ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help=f"folder holding isbi2012/ and carvana512/ (default: {DEFAULT_DATA} if it exists; "
        "--quick: synthetic twins)",
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help=f"the whole check's time (default {GPU_BUDGET:.0f}; --quick {QUICK_BUDGET:.0f})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="CPU, tiny sizes, a few steps: checks the script"
    )
    parser.add_argument("--model", default="unet_bn", help="the variant of the longer runs (default unet_bn)")
    parser.add_argument(
        "--models", default=None, help="bench stages' pattern (default '*'; --quick 'unet_bn')"
    )
    parser.add_argument("--stages", default=None, help="comma-separated stage names to run (default: all)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for the JSON and Markdown results")
    parser.add_argument("--workdir", default=None, help="stage folders (default: a temporary one, removed)")
    return parser


def main(argv: Sequence[str] | None = None, *, stages: Sequence[Stage] | None = None) -> int:
    """Run the check; ``stages`` replaces the default table (tests inject stages of their own)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quick = args.quick
    if not quick and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; running the --quick CPU check instead", flush=True)
        quick = True
    budget = args.budget_seconds or (QUICK_BUDGET if quick else GPU_BUDGET)
    if budget <= 0:
        parser.error(f"--budget-seconds {budget}: give a positive number of seconds, e.g. {GPU_BUDGET:.0f}")
    data_root: Path | None = None
    if args.data_root is not None:
        data_root = Path(args.data_root).resolve()
        if not data_root.is_dir():
            parser.error(f"--data-root {args.data_root}: no such folder; give the one holding isbi2012/")
    elif not quick and DEFAULT_DATA.is_dir():
        data_root = DEFAULT_DATA
    table = list(stages) if stages is not None else default_stages()
    if args.stages:
        wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {s.name for s in table})
        if unknown:
            parser.error(f"--stages: unknown {unknown}; stages are {', '.join(s.name for s in table)}")
        table = [s for s in table if s.name in wanted]
    from zoo.harness.config import TrainConfig  # the harness's fields decide how a budget is given

    has_budget = "budget_seconds" in {f.name for f in dataclasses.fields(TrainConfig)}
    device = "cpu" if quick else "cuda"
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check-")).resolve()
    plan = Plan(
        quick=quick,
        device=device,
        data_root=data_root,
        model=args.model,
        models=args.models or ("unet_bn" if quick else "*"),
        workdir=workdir,
        budget_seconds_field=has_budget,
    )
    clock = Clock(budget, reserve=max(5.0, 0.02 * budget))
    clock.log(
        f"{'quick CPU' if quick else 'GPU'} check, budget {budget:.0f} s, {len(table)} stages, "
        f"data {data_root or 'synthetic twins'}, stage folders {workdir}"
        + ("" if has_budget else "; TrainConfig has no budget_seconds yet: short epochs instead")
    )
    results_list: list[StageResult] = []
    try:
        for stage in table:
            results_list.append(run_stage(stage, plan, clock))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results = {
        "benchmark": "gpu_check",
        "quick": quick,
        "device": device,
        "budget_seconds": budget,
        "total_seconds": round(clock.elapsed, 1),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "data_root": str(data_root) if data_root else None,
        "model": plan.model,
        "models": plan.models,
        "training_budget": "budget_seconds" if has_budget else "short epochs (no budget_seconds field)",
        "statuses": {s.name: s.status for s in results_list},
        "stages": [dataclasses.asdict(s) for s in results_list],
        "machine": describe_machine(device),
    }
    stem = f"gpu_check{'-quick' if quick else ''}"
    out = write_results(stem, results, args.out, device=device)
    summary = out.with_suffix(".md")
    summary.write_text(markdown(results))
    counts = {status: sum(s.status == status for s in results_list) for status in STATUSES}
    clock.log(f"done: {', '.join(f'{n} {k}' for k, n in counts.items() if n)}")
    print(f"written {out}\n        {summary}  (machine {machine_slug(device)})", flush=True)
    return 1 if counts["failed"] or counts["timeout"] else 0


if __name__ == "__main__":
    sys.exit(main())

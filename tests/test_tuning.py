"""Studies (``unet-zoo tune``): search spaces and their checks, equal budgets, pruning, trials as MLflow
child runs, tuned recipes written and reused, and a killed sweep resumed. Ray: tests/test_ray_engine.py."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zoo.cli import main
from zoo.errors import ConfigError
from zoo.harness import Tracker, load_suite
from zoo.harness.recipes import get_recipe, list_recipes, resolve_recipe
from zoo.harness.spaces import list_spaces, load_spaces, space_for
from zoo.harness.training import RunResult, RunStopped
from zoo.harness.tuning import Budget, Study, make_studies, run_study, run_trial, write_tuned_recipe

from .helpers import TINY_SPACE, module_level_imports, seed_store, tiny_run, write_space

optuna = pytest.importorskip("optuna")


def tiny_study(tmp_path: Path, *, trials: int = 2, max_images: int = 4, **changes: Any) -> Study:
    """unet_bn at width 4 on a small EM twin: each trial trains at most ``max_images`` crops (2 a step)."""
    spaces = load_spaces(write_space(tmp_path))
    settings = {"trials": trials, "max_images": max_images, "startup_trials": 1, **changes}
    return make_studies([tiny_run(epochs=2)], suite="t", settings=settings, space=spaces)[0]


# -- search spaces --------------------------------------------------------------------------------------
def test_the_built_in_spaces_cover_every_model_on_every_registered_dataset() -> None:
    from zoo import list_models
    from zoo.data.registry import list_datasets

    for dataset in list_datasets():
        for model in list_models():
            space = space_for(model, dataset)
            assert "lr" in space.keys and "weight_decay" in space.keys and "dice_weight" in space.keys
    assert space_for("unet", "isbi2012").name == "unets-isbi2012"  # the family's own: dropout searched
    assert "overrides.dropout" in space_for("unet", "isbi2012").keys
    assert "overrides.dropout" not in space_for("unet_resnet34", "isbi2012").keys
    assert len({s.name for s in list_spaces()}) == len(list_spaces())


def test_every_built_in_space_fits_the_cpu_suite_configs_it_serves() -> None:
    for cfg in load_suite("tuned-cpu", tuned=False, seeds=1).runs:
        space_for(cfg.model, cfg.dataset).check(cfg)  # each bound gives a config and a model that build


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("lr = { low = 0.1, high = 0.01 }", "low < high"),
        ("lr = { low = 0.0, high = 0.01, log = true }", "log = true needs low > 0"),
        ("lr = { low = 1e-3 }", "needs both low and high"),
        ("lr = { low = 1e-3, hihg = 1e-2 }", "'hihg' (did you mean 'high'?)"),
        ("lr = { choices = [] }", "non-empty list"),
        ("lr = { choices = [0.1], low = 0.0 }", "cannot be mixed"),
        ("optimizer = { low = 0, high = 1 }", "takes choices"),
        ("epochs = { low = 1.5, high = 4 }", "whole-number"),
        ("lrr = { low = 1e-3, high = 1e-2 }", "'lrr' (did you mean 'lr'?)"),
        ("seed = { low = 0, high = 4 }", "a study fixes it"),
        ('"augment.rotaton" = { low = 0, high = 9 }', "'rotaton' (did you mean 'rotation'?)"),
        ("lr = 0.01", "expected { low = ..., high = ... }"),
    ],
)
def test_a_bad_space_is_refused_naming_the_file_the_field_and_the_fix(
    tmp_path: Path, params: str, message: str
) -> None:
    text = f'["s"]\ndescription = "d"\nmodels = ["*"]\ndatasets = ["*"]\n\n["s".params]\n{params}\n'
    with pytest.raises(ConfigError) as err:
        load_spaces(write_space(tmp_path, text))
    assert message in str(err.value) and "spaces.toml" in str(err.value) and "'s'" in str(err.value)


def test_a_space_without_params_or_with_a_misspelt_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="space 's' lacks params"):
        load_spaces(write_space(tmp_path, '["s"]\ndescription = ""\nmodels = ["*"]\ndatasets = ["*"]\n'))
    text = '["s"]\ndescription = ""\nmodel = ["*"]\ndatasets = ["*"]\nparams = { lr = { low = 1, high = 2 } }'
    with pytest.raises(ConfigError, match=r"'model' \(did you mean 'models'\?\)"):
        load_spaces(write_space(tmp_path, text))


def test_a_space_value_the_run_cannot_take_is_refused_when_the_study_is_made(tmp_path: Path) -> None:
    bad_model = TINY_SPACE.replace("[0.0, 0.5]", "[0.0, 1.5]")  # dropout must lie in [0, 1)
    with pytest.raises(ConfigError, match=r"overrides.dropout=1.5 .*dropout=1.5 must be in \[0, 1\)"):
        make_studies(
            [tiny_run()],
            suite="t",
            settings={"trials": 1, "max_images": 4},
            space=load_spaces(write_space(tmp_path, bad_model)),
        )
    bad_range = TINY_SPACE.replace(
        '"overrides.dropout" = { choices = [0.0, 0.5] }', "momentum = { low = 0.5, high = 1.5 }"
    )
    with pytest.raises(ConfigError, match=r"momentum=1.5 .*must be at least 0 and below 1"):
        make_studies(
            [tiny_run()],
            suite="t",
            settings={"trials": 1, "max_images": 4},
            space=load_spaces(write_space(tmp_path, bad_range)),
        )


def test_sampling_sets_each_field_where_the_run_reads_it(tmp_path: Path) -> None:
    study = tiny_study(tmp_path)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    values = study.space.sample(trial)
    cfg = study.trial_config(values)
    assert 1e-4 <= cfg.lr <= 1e-1 and cfg.lr == values["lr"]
    assert cfg.overrides == {"base_channels": 4, "dropout": values["overrides.dropout"]}
    assert cfg.budget_images == 4 and cfg.seed == 0


# -- budgets -----------------------------------------------------------------------------------------------
def test_every_variant_of_a_suite_gets_the_same_budget() -> None:
    suite = load_suite("tuned-cpu", tuned=False, seeds=1)
    studies = make_studies(suite.runs, suite=suite.name, settings={"trials": 6, "max_images": 480})
    assert {(s.base.model, s.base.dataset) for s in studies} == {(c.model, c.dataset) for c in suite.runs}
    assert len(studies) == 14 and {s.budget for s in studies} == {Budget(6, 480)}
    assert {s.trial_config({}).budget_images for s in studies} == {480}
    assert {(s.sampler, s.pruner) for s in studies} == {("tpe", "median")}
    # the published suite's own [tune] table is what `unet-zoo tune --suite tuned-cpu` uses
    from zoo.harness.suites import find_suite, read_suite_file
    from zoo.harness.tuning import tune_settings

    path = find_suite("tuned-cpu")
    assert tune_settings(read_suite_file(path), str(path))["max_images"] == 480


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_images": 4}, "needs trials"),
        ({"trials": 0, "max_images": 4}, "at least 1"),
        ({"trials": 2, "max_images": 1}, "at least one optimiser step's 2"),
        ({"trials": 2, "max_images": 4, "sampler": "grid"}, "sampler='grid' is not one of"),
        ({"trials": 2, "max_images": 4, "pruner": "hyperband"}, "pruner='hyperband' is not one of"),
    ],
)
def test_a_bad_budget_or_engine_setting_is_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_studies([tiny_run()], suite="t", settings=settings)


# -- pruning (the engine's decisions, on a stand-in for training whose curve the lr decides) ------------
def _curve_train(calls: list[float]) -> Any:
    def fake(cfg: Any, *, on_epoch: Any, **_: Any) -> RunResult:
        calls.append(cfg.lr)
        for epoch in range(4):
            on_epoch(epoch, {"val_dice": cfg.lr * (epoch + 1)})  # a larger lr: a better curve
        return RunResult(f"run-{len(calls)}", Path(), {"dice": cfg.lr * 4})

    return fake


def test_median_pruning_stops_trials_whose_curve_falls_below_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_store: Callable[[Path], Path]
) -> None:
    fresh_store(tmp_path)
    calls: list[float] = []
    monkeypatch.setattr("zoo.harness.tuning.train", _curve_train(calls))
    study = tiny_study(tmp_path, trials=6, sampler="random")
    result = run_study(study, tracker=Tracker("prune", workdir=tmp_path), workdir=tmp_path)
    assert len(result.trials) == 6 == len(calls)
    pruned = [t for t in result.trials if t.state == "pruned"]
    complete = [t for t in result.trials if t.state == "complete"]
    assert pruned and complete
    for trial in pruned:  # each pruned trial was worse than the median of those before it
        earlier = sorted(t.values["lr"] for t in result.trials if t.number < trial.number)
        assert trial.values["lr"] < earlier[len(earlier) // 2]
        assert trial.epochs < 4
    assert result.best is not None and result.best.value == pytest.approx(4 * max(calls))


def test_a_pruned_trial_is_recorded_as_stopped_with_its_curve(
    tmp_path: Path, fresh_store: Callable[[Path], Path]
) -> None:
    fresh_store(tmp_path)
    study = tiny_study(tmp_path, max_images=8)  # two epochs of two steps
    tracker = Tracker("pruned-run", workdir=tmp_path)
    parent = tracker.start_run("study")
    with pytest.raises(RunStopped) as stop:
        run_trial(
            study,
            {"lr": 1e-3, "overrides.dropout": 0.0},
            0,
            tracker=tracker,
            workdir=tmp_path,
            parent=parent,
            report=lambda epoch, value: True,  # prune at the first report
        )
    run = tracker.client.get_run(stop.value.run_id)
    assert run.info.status == "KILLED" and run.data.tags["zoo.stopped"] == "pruned"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["zoo.kind"] == "trial"
    assert [m.step for m in tracker.client.get_metric_history(run.info.run_id, "val_dice")] == [0]
    assert "dice" not in run.data.metrics  # no final figures: it did not train to its end
    run_dir = next((tmp_path / "pruned-run").glob("unet_bn-isbi2012-s0-*"))
    assert not (run_dir / "checkpoint.pt").exists()  # nothing resumes a pruned trial


# -- a real study: child runs, tuned recipe, reuse ---------------------------------------------------------
@pytest.fixture(scope="module")
def finished_study(
    tmp_path_factory: pytest.TempPathFactory, store_template: Path
) -> tuple[Any, Tracker, Path]:
    tmp = seed_store(store_template, tmp_path_factory.mktemp("study"))
    study = tiny_study(tmp, trials=2, max_images=8, pruner="none")
    tracker = Tracker("tune-t", workdir=tmp)
    return run_study(study, tracker=tracker, workdir=tmp), tracker, tmp


def test_each_trial_is_an_mlflow_child_run_of_the_study(finished_study: tuple[Any, Tracker, Path]) -> None:
    result, tracker, _ = finished_study
    parent = tracker.client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["zoo.kind"] == "study"
    assert parent.data.params["budget"] == "2 trials x at most 8 training images"
    assert parent.data.metrics["trials_complete"] == 2
    children = tracker.child_runs(result.parent_run_id)
    assert len(children) == 2 == len(result.trials)
    assert {c.data.tags["zoo.trial"] for c in children} == {"0", "1"}
    by_run = {t.run_id: t for t in result.trials}
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["zoo.kind"] == "trial"
        assert child.data.params["cfg.budget_images"] == "8"
        trial = by_run[child.info.run_id]
        assert float(child.data.params["cfg.lr"]) == pytest.approx(trial.values["lr"])
        assert child.data.metrics["dice"] == pytest.approx(trial.value)
    assert parent.data.tags["zoo.best_run"] == result.best.run_id


def test_the_best_trial_becomes_a_tuned_recipe_that_runs_reuse(
    finished_study: tuple[Any, Tracker, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    result, tracker, tmp = finished_study
    out = tmp / "tuned-recipes.toml"
    name = write_tuned_recipe(result, out, tracking_uri=tracker.uri, experiment=tracker.experiment)
    assert name == "unet_bn-isbi2012-t"
    recipe = get_recipe(name)
    best = result.best
    tuned = recipe.tuned
    assert tuned is not None
    assert tuned["study"] == "t-unet_bn-isbi2012" and tuned["best_run_id"] == best.run_id
    assert tuned["budget"] == "2 trials x at most 8 training images" and tuned["trials_complete"] == 2
    assert tuned["searched"] == ["lr in [0.0001, 0.1, log]", "overrides.dropout in [0.0, 0.5]"]
    assert tuned["date"] and tuned["commit"] and tuned["parent_run_id"] == result.parent_run_id
    cfg = resolve_recipe(name, {})
    assert cfg.lr == best.values["lr"] and cfg.overrides["dropout"] == best.values["overrides.dropout"]
    assert cfg.budget_images is None and cfg.epochs == 2  # seeds train without the trial's cap
    # `unet-zoo recipes` lists it with its provenance; the CLI reads the workdir's file
    assert main(["recipes", "*-t", "--workdir", str(tmp)]) == 0
    assert "study t-unet_bn-isbi2012 (2 trials x at most 8 training images" in capsys.readouterr().out
    # a second study of the same name replaces its recipe, and the file still parses
    write_tuned_recipe(result, out, tracking_uri=tracker.uri, experiment=tracker.experiment)
    assert [r.name for r in list_recipes("*-t")] == [name]


def test_a_tuned_suite_trains_each_seed_from_its_tuned_recipe(
    finished_study: tuple[Any, Tracker, Path], tmp_path: Path, fresh_store: Callable[[Path], Path]
) -> None:
    fresh_store(tmp_path)
    result, tracker, tmp = finished_study
    suite = tmp_path / "t.toml"
    suite.write_text(
        'name = "t"\nmodels = ["unet_bn", "unet"]\ndatasets = ["isbi2012"]\nseeds = [0, 1, 2]\ntuned = true\n'
    )
    write_tuned_recipe(result, tmp / "tuned-recipes.toml", tracking_uri=tracker.uri, experiment="tune-t")
    with pytest.raises(ConfigError, match=r"'unet-isbi2012-t' does not exist yet: tune it first"):
        load_suite(str(suite))
    runs = load_suite(str(suite), models="unet_bn", data_root="/data").runs
    assert [c.seed for c in runs] == [0, 1, 2]
    assert {c.lr for c in runs} == {result.best.values["lr"]} and {c.recipe for c in runs} == {
        "unet_bn-isbi2012-t"
    }
    assert {c.data_root for c in runs} == {"/data"}
    # a seed's run records how its recipe was found, and the leaderboard states it
    from zoo.harness import train
    from zoo.report import build

    seeds = Tracker("suite-t", workdir=tmp_path)
    train(dataclasses.replace(runs[0], data_root=None), tracker=seeds, workdir=tmp_path, progress=False)
    board = build("suite-t", seeds.uri)
    (tuning,) = board.table["tuning"]
    assert tuning.startswith(
        "study t-unet_bn-isbi2012 (local, tpe sampler, none pruning): 2 trials x at most 8"
    )
    assert "searched lr, overrides.dropout" in tuning


def test_tune_on_the_command_line_writes_the_recipe_and_prints_the_study(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fresh_store: Callable[[Path], Path],
) -> None:
    fresh_store(tmp_path / "w")
    calls: list[float] = []
    monkeypatch.setattr("zoo.harness.tuning.train", _curve_train(calls))
    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "s.toml"
    suite.write_text(
        'name = "s"\nmodels = ["unet_bn", "unet_bilinear"]\ndatasets = ["isbi2012"]\n[train]\nepochs = 2\n'
        "batch_size = 2\nsteps_per_epoch = 1\n[tune]\ntrials = 3\nmax_images = 4\n"
    )
    code = main(["tune", "--suite", str(suite), "--workdir", "w", "--pruner", "none", "--trials", "2"])
    out = capsys.readouterr().out
    assert code == 0 and len(calls) == 4  # --trials wins over the file; two studies of two trials
    assert "2 studies on synthetic twins, each 2 trials x at most 4 training images" in out
    assert "unet_bn-isbi2012-s" in out and "unet_bilinear-isbi2012-s" in out
    text = (tmp_path / "w" / "tuned-recipes.toml").read_text()
    assert '["unet_bn-isbi2012-s".tuned]' in text or "[unet_bn-isbi2012-s.tuned]" in text


# -- resume --------------------------------------------------------------------------------------------------
def test_a_resumed_tpe_study_goes_on_past_its_start_up_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_store: Callable[[Path], Path]
) -> None:
    """A study stopped after its start-up trials and run again to a larger budget: its start-up values
    are not drawn again, and TPE proposes the rest (a resumed TPE sampler once failed every trial)."""
    fresh_store(tmp_path)
    calls: list[float] = []
    monkeypatch.setattr("zoo.harness.tuning.train", _curve_train(calls))
    tracker = Tracker("tune-tpe", workdir=tmp_path)
    first = tiny_study(tmp_path, trials=2, pruner="none", startup_trials=2)
    run_study(first, tracker=tracker, workdir=tmp_path)
    result = run_study(
        tiny_study(tmp_path, trials=4, pruner="none", startup_trials=2), tracker=tracker, workdir=tmp_path
    )
    assert [t.state for t in result.trials] == ["complete"] * 4 and len(calls) == 4
    assert [dict(t.values) for t in result.trials[:2]] == first.planned_values()
    assert len(set(calls)) == 4  # no values trained twice


def test_a_trial_that_cannot_draw_its_values_stops_the_sweep_and_does_not_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_store: Callable[[Path], Path]
) -> None:
    fresh_store(tmp_path)
    calls: list[float] = []
    monkeypatch.setattr("zoo.harness.tuning.train", _curve_train(calls))
    tracker = Tracker("tune-broken", workdir=tmp_path)
    study = tiny_study(tmp_path, trials=3, pruner="none", startup_trials=1)
    space = type(study.space)
    draw = space.sample

    def broken(self: Any, trial: Any) -> Any:
        if trial.number == 1:
            raise ValueError("the sampler broke")
        return draw(self, trial)

    monkeypatch.setattr(space, "sample", broken)
    with pytest.raises(ValueError, match="the sampler broke"):  # not three failed trials in a row
        run_study(study, tracker=tracker, workdir=tmp_path)
    assert len(calls) == 1
    monkeypatch.setattr(space, "sample", draw)
    result = run_study(study, tracker=tracker, workdir=tmp_path)
    assert [t.state for t in result.trials] == ["complete", "not run", "complete", "complete"]
    assert len(calls) == 3


def _sweep_killed_in_trial_1(tmp: Path) -> None:
    """In a forked child: a three-trial sweep whose second trial hangs (and is killed there)."""
    import zoo.harness.tuning as tuning

    def hanging(
        cfg: Any, *, tracker: Tracker, parent_run_id: str, tags: dict[str, str], on_epoch: Any, **_: Any
    ) -> RunResult:
        run_id = tracker.start_run("trial", parent_run_id=parent_run_id, tags=tags)
        if tags["zoo.trial"] == "1":
            (tmp / "in-trial-1").write_text(str(cfg.lr))
            time.sleep(600)
        on_epoch(0, {"val_dice": cfg.lr})
        tracker.finish(run_id)
        return RunResult(run_id, tmp, {"dice": cfg.lr})

    tuning.train = hanging  # type: ignore[assignment]  # this process only
    study = tiny_study(tmp, trials=3, pruner="none", sampler="random")
    run_study(study, tracker=Tracker("tune-kill", workdir=tmp), workdir=tmp)


def test_a_killed_sweep_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_store: Callable[[Path], Path]
) -> None:
    fresh_store(tmp_path)
    write_space(tmp_path)
    # forked, not started afresh, which would spend seconds importing torch and the zoo again
    proc = multiprocessing.get_context("fork").Process(target=_sweep_killed_in_trial_1, args=(tmp_path,))
    proc.start()
    marker = tmp_path / "in-trial-1"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the sweep never reached its second trial"
    study = tiny_study(tmp_path, trials=3, pruner="none", sampler="random")
    tracker = Tracker("tune-kill", workdir=tmp_path)
    with pytest.raises(ConfigError, match="being run by another process"):  # not a second sweep beside it
        run_study(study, tracker=tracker, workdir=tmp_path)
    proc.kill()  # SIGKILL: no handler runs, the trial and its run are left RUNNING
    proc.join()
    killed_lr = float(marker.read_text())

    calls: list[float] = []
    monkeypatch.setattr("zoo.harness.tuning.train", _curve_train(calls))
    result = run_study(study, tracker=tracker, workdir=tmp_path)
    # trial 0 is kept; the planned third values and the killed trial's again fill the budget of three
    assert len(calls) == 2 and killed_lr in calls
    states = [t.state for t in result.trials]
    assert states == ["complete", "killed", "complete", "complete"]
    assert result.trials[1].values["lr"] == result.trials[3].values["lr"] == killed_lr
    # the resumed study trains what an uninterrupted one would, not its first values again
    assert [dict(result.trials[n].values) for n in (0, 1, 2)] == study.planned_values()
    parents = tracker.client.search_runs([tracker.experiment_id], "tags.`zoo.kind` = 'study'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same study run, resumed
    orphan = [r for r in tracker.child_runs(result.parent_run_id) if r.data.tags.get("zoo.trial") == "1"]
    assert [(r.info.status, r.data.tags["zoo.stopped"]) for r in orphan] == [("KILLED", "sweep killed")]
    # run again when done: nothing left to train
    again = run_study(study, tracker=tracker, workdir=tmp_path)
    assert len(calls) == 2 and len(again.trials) == 4


def test_optuna_and_ray_stay_optional_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only inside functions (or for type checking), and only in the modules of studies: every other
    command imports without them."""
    for path, names in module_level_imports():
        assert not any(n.split(".")[0] in ("optuna", "ray") for n in names), f"{path}: {names}"
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    from zoo.harness.tuning import _import_optuna

    with pytest.raises(ConfigError, match=r"needs Optuna: pip install 'unet-zoo\[tune\]'"):
        _import_optuna()


def test_an_engine_option_without_its_engine_is_refused() -> None:
    from zoo.harness.engines import Engine

    with pytest.raises(ConfigError, match="are Ray's: add --backend ray"):
        Engine("local", address="head:6379")
    with pytest.raises(ConfigError, match="backend 'slurm' is not one of 'local', 'ray'"):
        Engine("slurm")

"""Budgets of training images or seconds: the plan they resolve to, the schedule, the stop, and resume."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import zoo.harness.training as train_module
from zoo.harness import Tracker, TrainConfig, train
from zoo.harness.budget import Plan

from .helpers import tiny_run

# a smaller twin than TINY_RUN's: budgets count its crops
TWIN = {"synthetic": {"count": 4, "size": 64}, "folds": 4, "fold": 3}


def _cfg(**changes: Any) -> TrainConfig:
    return tiny_run(**{"epochs": 10, **TWIN, **changes})


def _cosine(lr: float, epoch: int, span: int) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * epoch / span))


class Killed(Exception):
    """Stands for a kill -9 at a chosen point (the run's state on disk is what a kill leaves)."""


def _fake_clock(
    monkeypatch: pytest.MonkeyPatch,
    epoch_seconds: float,
    *,
    kill_at: Callable[[str, int], bool] | None = None,
) -> None:
    """Every epoch lasts exactly ``epoch_seconds`` on the clock the loop reads (validation advances it);
    ``kill_at(stage, call)`` raises :class:`Killed` at the ``call``-th evaluation or cost measurement."""
    now = [0.0]
    calls = {"evaluate": 0, "measure_cost": 0}
    real = {"evaluate": train_module.evaluate, "measure_cost": train_module.measure_cost}

    def wrap(stage: str) -> Callable[..., Any]:
        def patched(*args: Any, **kwargs: Any) -> Any:
            calls[stage] += 1
            if kill_at is not None and kill_at(stage, calls[stage]):
                raise Killed(f"{stage} call {calls[stage]}")
            if stage == "evaluate":
                now[0] += epoch_seconds
            return real[stage](*args, **kwargs)

        return patched

    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(train_module, "evaluate", wrap("evaluate"))
    monkeypatch.setattr(train_module, "measure_cost", wrap("measure_cost"))


def _history(tracker: Tracker, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in tracker.client.get_metric_history(run_id, key)}


# ---- the plan, without training ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "epochs", "cut"),
    [
        # 4 crops an epoch: two whole epochs, then one step (2 crops) of a third; 10 crops in all
        ({"budget_images": 10, "steps_per_epoch": 2}, 3, 1),
        # 9 crops: the ninth does not make a step; two whole epochs are the plan
        ({"budget_images": 9, "steps_per_epoch": 2}, 2, None),
        # an optimiser step is 4 crops (2 x accumulate 2), an epoch 8: one epoch, then one step of two
        ({"budget_images": 14, "steps_per_epoch": 2, "accumulate": 2}, 2, 2),
        # a budget beyond the maximum: epochs decides
        ({"budget_images": 1000, "steps_per_epoch": 2}, 10, None),
        # no steps_per_epoch: an epoch is one pass over the 6 crops (3 global batches)
        ({"budget_images": 16, "steps_per_epoch": None}, 3, 2),
        ({}, 10, None),
    ],
)
def test_an_images_budget_resolves_to_whole_steps_and_epochs(
    changes: dict[str, Any], epochs: int, cut: int | None
) -> None:
    plan = Plan.start(_cfg(epochs=10, **changes), crops=6)
    assert (plan.epochs, plan.cut) == (epochs, cut)
    full = (changes.get("steps_per_epoch", 1) or 0) * changes.get("accumulate", 1)  # 0: one pass
    assert [plan.micro_batches(e, full) for e in range(epochs)] == [full] * (epochs - 1) + [cut or full]


def _finish(cfg: TrainConfig, seconds: list[float], patience_at: int | None = None) -> tuple[Plan, int]:
    """Feed epochs of ``seconds`` until the plan stops; the plan and the epochs it ran."""
    plan = Plan.start(cfg, crops=6)
    for epoch, s in enumerate(seconds):
        plan = plan.after_epoch(cfg, epoch=epoch, seconds=s, patience_spent=epoch == patience_at)
        if plan.stop_reason is not None:
            return plan, epoch + 1
    raise AssertionError(f"no stop after {len(seconds)} epochs: {plan}")


def test_a_seconds_budget_plans_after_the_first_epoch_and_stops_when_the_next_would_not_fit() -> None:
    cfg = _cfg(epochs=10, budget_seconds=35)
    assert Plan.start(cfg, crops=6).epochs == 10  # before the first epoch nothing is known
    # steady epochs: floor(35 / 10) = 3 planned, and 3 run (a fourth would end at 40 s)
    plan, ran = _finish(cfg, [10.0] * 10)
    assert (plan.epochs, ran, plan.stop_reason, plan.seconds) == (3, 3, "budget_seconds", (10.0,) * 3)
    # a slow first epoch (compilation, caches): the plan errs short, and the run stops with its plan
    plan, ran = _finish(cfg, [17.0, 5.0, 5.0, 5.0])
    assert (plan.epochs, ran, plan.stop_reason) == (2, 2, "budget_seconds")
    # epochs that slow down: stopped by the clock before the plan ends (11 + 13 + their mean 12 > 35)
    plan, ran = _finish(cfg, [11.0, 13.0, 13.0])
    assert (plan.epochs, ran, plan.stop_reason) == (3, 2, "budget_seconds")
    # the first epoch always runs, even when it alone overruns the budget
    plan, ran = _finish(cfg, [50.0, 50.0])
    assert (plan.epochs, ran, plan.stop_reason) == (1, 1, "budget_seconds")
    # a budget beyond the maximum: epochs decides
    plan, ran = _finish(_cfg(epochs=4, budget_seconds=1e6), [10.0] * 5)
    assert (plan.epochs, ran, plan.stop_reason) == (4, 4, "epochs")


def test_the_stop_reason_is_the_first_that_applies() -> None:
    # patience ends a budgeted run early
    plan, ran = _finish(_cfg(epochs=10, budget_seconds=35, patience=1), [10.0] * 10, patience_at=1)
    assert (ran, plan.stop_reason) == (2, "patience")
    # patience spent on the last planned epoch: the budget ended the run anyway
    plan, ran = _finish(_cfg(epochs=10, budget_images=6, patience=1), [1.0] * 10, patience_at=2)
    assert (plan.epochs, ran, plan.stop_reason) == (3, 3, "budget_images")
    plan, ran = _finish(_cfg(epochs=3, patience=1), [1.0] * 3, patience_at=2)
    assert (ran, plan.stop_reason) == (3, "epochs")


def test_the_plan_round_trips_through_checkpoint_data() -> None:
    cfg = _cfg(epochs=10, budget_seconds=35)
    plan = Plan.start(cfg, crops=6).after_epoch(cfg, epoch=0, seconds=10.0, patience_spent=False)
    state = plan.state_dict()
    assert all(isinstance(v, int | list | type(None) | str) for v in state.values())  # weights_only
    assert Plan.from_state_dict(state) == plan


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"budget_images": 100, "budget_seconds": 60.0},
            r"budget_images=100 and budget_seconds=60\.0 are both set; a run has one budget",
        ),
        ({"budget_seconds": 0}, r"budget_seconds=0 must be > 0"),
        ({"budget_seconds": -5.0}, r"budget_seconds=-5\.0 must be > 0"),
        ({"budget_seconds": "2m"}, r"budget_seconds='2m': expected a float or null"),
        ({"budget_images": 0}, r"budget_images=0 must be a whole number .* at least one optimiser step's 2"),
        ({"budget_images": 3, "accumulate": 2}, r"budget_images=3 .* step's 4 \(batch_size=2 x accumulate=2"),
        ({"budget_images": 12.5}, r"budget_images=12\.5: expected a whole number or null"),
    ],
)
def test_bad_budgets_are_refused_by_name(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _cfg(**changes)


def test_the_cli_sets_a_budget_through_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.cli import main

    args = ["train", "--model", "unet_bn", "--dataset", "isbi2012", "--workdir", str(tmp_path)]
    assert main([*args, "--set", "budget_seconds=0"]) == 2
    assert "budget_seconds=0 must be > 0" in capsys.readouterr().err


def test_the_learning_rate_follows_the_plan_not_the_maximum() -> None:
    cfg = _cfg(epochs=10, lr=1.0)
    assert [train_module._lr(cfg, e, 3) for e in range(3)] == pytest.approx([1.0, 0.75, 0.25])
    step = _cfg(epochs=10, lr=1.0, schedule="step")
    assert [train_module._lr(step, e, 3) for e in range(3)] == pytest.approx([1.0, 1.0, 0.1])
    warm = _cfg(epochs=10, lr=1.0, warmup_epochs=2)  # warm-up is not shortened by a plan
    assert [train_module._lr(warm, e, 3) for e in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])


# ---- runs ------------------------------------------------------------------------------------------------


def test_an_images_budget_trains_on_its_images_with_a_schedule_over_its_epochs(
    tmp_path: Path, fresh_store: Callable[[Path], Path]
) -> None:
    tracker = Tracker("images", workdir=fresh_store(tmp_path))
    cfg = _cfg(epochs=10, steps_per_epoch=2, budget_images=10)
    result = train(cfg, tracker=tracker, workdir=tmp_path, progress=False)
    # 4 crops an epoch: two epochs of two micro-batches, then one of one (10 crops)
    assert _history(tracker, result.run_id, "train_steps") == {0: 2.0, 1: 2.0, 2: 1.0}
    lrs = _history(tracker, result.run_id, "lr")
    assert lrs == pytest.approx({e: _cosine(cfg.lr, e, 3) for e in range(3)})
    params = tracker.client.get_run(result.run_id).data.params
    assert params["planned_epochs"] == "3" and params["stop_reason"] == "budget_images"
    assert params["stopped_early"] == "False" and params["cfg.budget_images"] == "10"


def _seconds_run(workdir: Path, name: str) -> tuple[Tracker, TrainConfig]:
    """A tracker on ``workdir`` (which holds a store: ``fresh_store``) and a run with a 35 s budget."""
    return Tracker(name, workdir=workdir), _cfg(epochs=10, budget_seconds=35)


def test_a_seconds_budget_stops_at_an_epoch_boundary_with_its_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_store: Callable[[Path], Path]
) -> None:
    _fake_clock(monkeypatch, 10.0)
    tracker, cfg = _seconds_run(fresh_store(tmp_path), "seconds")
    result = train(cfg, tracker=tracker, workdir=tmp_path, progress=False)
    assert _history(tracker, result.run_id, "epoch_seconds") == {0: 10.0, 1: 10.0, 2: 10.0}
    # epoch 0 knew no plan yet, but cosine starts at the full rate whatever its span
    assert _history(tracker, result.run_id, "lr") == pytest.approx(
        {e: _cosine(cfg.lr, e, 3) for e in range(3)}
    )
    params = tracker.client.get_run(result.run_id).data.params
    assert params["planned_epochs"] == "3" and params["stop_reason"] == "budget_seconds"


def test_a_budgeted_run_killed_and_resumed_ends_where_an_uninterrupted_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_store: Callable[[Path], Path]
) -> None:
    with monkeypatch.context() as patch:
        _fake_clock(patch, 10.0)
        tracker, cfg = _seconds_run(fresh_store(tmp_path / "straight"), "straight")
        ref = train(cfg, tracker=tracker, workdir=tmp_path / "straight", progress=False)
        ref_dice = _history(tracker, ref.run_id, "val_dice")
        ref_params = tracker.client.get_run(ref.run_id).data.params
    assert sorted(ref_dice) == [0, 1, 2]

    workdir = fresh_store(tmp_path / "killed")
    tracker, cfg = _seconds_run(workdir, "killed")
    # killed during epoch 2's validation: epochs 0 and 1 are checkpointed with the plan
    with monkeypatch.context() as patch:
        _fake_clock(patch, 10.0, kill_at=lambda stage, call: stage == "evaluate" and call == 3)
        with pytest.raises(Killed):
            train(cfg, tracker=tracker, workdir=workdir, progress=False)
    (run_dir,) = (workdir / "killed").iterdir()
    # resumed, then killed again after the last epoch's checkpoint, before the final figures: the stop
    # decided at epoch 2 is in the checkpoint, so a second resume trains no epoch 3
    with monkeypatch.context() as patch:
        _fake_clock(patch, 10.0, kill_at=lambda stage, call: stage == "measure_cost" and call == 1)
        with pytest.raises(Killed):
            train(None, tracker=tracker, workdir=workdir, resume=run_dir, progress=False)
    with monkeypatch.context() as patch:
        _fake_clock(patch, 10.0, kill_at=lambda stage, call: stage == "evaluate")  # no epoch may run
        result = train(None, tracker=tracker, workdir=workdir, resume=run_dir, progress=False)

    assert _history(tracker, result.run_id, "val_dice") == pytest.approx(ref_dice, abs=1e-6)
    params = tracker.client.get_run(result.run_id).data.params
    for key in ("planned_epochs", "stop_reason", "stopped_early"):
        assert params[key] == ref_params[key], key


def test_an_epoch_that_accumulate_does_not_divide_steps_on_its_last_micro_batches(
    tmp_path: Path, fresh_store: Callable[[Path], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pass over the crops is 2 micro-batches; with accumulate=3 their gradients once made no step
    (computed, then dropped at the next epoch's zero_grad): now the last, short group makes one."""
    steps: list[int] = []
    make = train_module._optimizer

    def counted(cfg: TrainConfig, model: Any) -> Any:
        opt = make(cfg, model)
        opt.register_step_post_hook(lambda *_: steps.append(1))  # the run's optimiser only
        return opt

    monkeypatch.setattr(train_module, "_optimizer", counted)
    tracker = Tracker("accumulate", workdir=fresh_store(tmp_path))
    result = train(_cfg(epochs=2, steps_per_epoch=None, accumulate=3), tracker=tracker, workdir=tmp_path)
    assert _history(tracker, result.run_id, "train_steps") == {0: 2.0, 1: 2.0}  # micro-batches
    assert len(steps) == 2  # one optimiser step an epoch

"""Bad values given to `unet-zoo train --set`: one line naming the field and what it takes, exit code 2,
and nothing written (no store, no run folder, no FAILED run left behind)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from zoo.cli import main


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("lr=abc", "lr='abc': expected a float (--set lr=VALUE)"),
        ("epochs=1.5", "epochs=1.5: expected a whole number (--set epochs=VALUE)"),
        ("steps_per_epoch=-1", "steps_per_epoch=-1 must be at least 1"),
        ("steps_per_epoch=0", "steps_per_epoch=0 must be at least 1"),
        ("crop=0", "crop=0 must be at least 1"),
        ("batch_size=true", "batch_size=True: expected a whole number"),
        ("lr=-0.1", "lr=-0.1 must be at least 0"),
        ("momentum=1", "momentum=1 must be at least 0 and below 1"),
        ("val_fraction=1.5", "val_fraction=1.5 must be between 0 and 1 (exclusive)"),
        ("fold=4", "fold=4 must be below folds=4 (folds count from 0)"),
        ("weight_map=yes", "weight_map='yes': expected a bool"),
        ("max_val_images=0", "max_val_images=0 must be at least 1"),
        ("epocs=3", "unknown config key(s) ['epocs']. 'epocs' (did you mean 'epochs'?)"),
    ],
)
def test_a_bad_setting_is_one_line_and_leaves_nothing(
    setting: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--model", "unet_bn", "--dataset", "isbi2012", "--workdir", str(tmp_path / "runs")]
    assert main([*argv, "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unet-zoo: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_bad_values_in_a_recipe_run_are_refused_the_same_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--recipe", "unet_bn-isbi2012-cpu", "--workdir", str(tmp_path / "runs")]
    assert main([*argv, "--set", "warmup_epochs=-2"]) == 2
    assert "warmup_epochs=-2 must be at least 0" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_crop_the_model_does_not_take_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fresh_store: Callable[[Path], Path]
) -> None:
    from zoo.harness import Tracker, train

    from .helpers import tiny_run

    tracker = Tracker("crop", workdir=fresh_store(tmp_path))
    with caplog.at_level(logging.WARNING, logger="zoo.harness.training"):
        train(tiny_run(crop=7), tracker=tracker, workdir=tmp_path, progress=False)
    assert "crop=7 is not an input size unet_bn takes; training at 16" in caplog.text

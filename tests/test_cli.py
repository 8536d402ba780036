from __future__ import annotations

import sys
from importlib.metadata import entry_points

import pytest

from zoo import list_models
from zoo.cli import main


def test_models_table_lists_every_model_with_its_cost(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    header, _rule, *rows = out.splitlines()[: 2 + len(list_models())]
    assert header.split() == ["name", "family", "params", "input->output", "GFLOPs", "padding", "paper"]
    assert [r.split()[0] for r in rows] == list_models()
    unet_row = next(r for r in rows if r.startswith("unet "))
    assert unet_row.split()[1:6] == ["unet", "31,030,658", "572->388", "300.9", "valid"]
    assert "2 FLOPs per multiply-add" in out


def test_models_pattern_and_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "unet_b*", "--size", "256", "--in-channels", "3"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:4]
    assert [r.split()[0] for r in rows] == ["unet_bilinear", "unet_bn"]
    assert all("256->256" in r for r in rows)


def test_models_without_match_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "resnet*"]) == 1
    assert "no model matches 'resnet*'" in capsys.readouterr().err


def test_info_shows_the_contract_and_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "unetpp_resnet34", "--size", "333"]) == 0
    out = capsys.readouterr().out
    assert "input sizes      32 + 32k (k = 0, 1, 2, ...); input multiple 32, minimum 32" in out
    assert "size example     320x320 -> 320x320" in out
    assert "overrides        decoder_attention_type, decoder_channels, encoder_depth, encoder_weights" in out


def test_info_unknown_name_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "attention_unte"]) == 2
    assert "did you mean 'attention_unet'" in capsys.readouterr().err


def test_console_script_is_installed_and_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The installed ``unet-zoo`` entry point, called as its console script calls it (``sys.exit(main())``
    with the command line in ``sys.argv``). In this process: a fresh one spends its seconds importing
    torch; ``python -m zoo.cli`` starts fresh in the DDP tests (torchrun) and gpu_check's slow test."""
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "unet-zoo"]
    assert script.value == "zoo.cli:main"
    monkeypatch.setattr(sys, "argv", ["unet-zoo", "info", "unet"])
    assert script.load()() == 0
    assert "parameters       31,030,658" in capsys.readouterr().out

"""Behaviour every registered model must have. Registering a model gives it all of these tests."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from zoo import InputSizeError, SegmentationModel, list_models

from .helpers import small_size, tiny_model

MODELS = list_models()


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_reaches_every_parameter(name: str) -> None:
    model = tiny_model(name).train()
    size = small_size(model)
    x = torch.randn(2, 1, size, size)
    out = model(x)
    oh, ow = model.output_size((size, size))
    assert out.shape == (2, 2, oh, ow)
    assert torch.isfinite(out).all()
    target = torch.randint(0, 2, (2, oh, ow))
    F.cross_entropy(out, target).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]  # type: ignore[arg-type]
    assert not bad, f"non-finite gradients: {bad}"
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]  # type: ignore[union-attr]
    assert not zero, f"parameters whose gradient is identically zero: {zero}"


@pytest.mark.parametrize("name", MODELS)
def test_eval_mode_is_deterministic(name: str) -> None:
    model = tiny_model(name).eval()
    size = small_size(model)
    x = torch.randn(1, 1, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_odd_sizes_work_or_fail_with_the_nearest_valid_size(name: str) -> None:
    model = tiny_model(name).eval()
    h, w = 333, 517
    x = torch.randn(1, 1, h, w)
    if model.is_valid_input_size(h) and model.is_valid_input_size(w):
        with torch.no_grad():
            out = model(x)
        assert out.shape[-2:] == model.output_size((h, w))
        return
    with pytest.raises(InputSizeError) as info:
        model(x)
    msg = str(info.value)
    nh, nw = model.nearest_valid_input_size(h), model.nearest_valid_input_size(w)
    assert f"input size {h}x{w} is not accepted" in msg
    assert f"Nearest valid input: {nh}x{nw}" in msg
    with torch.no_grad():  # and the suggestion really works
        out = model(torch.randn(1, 1, nh, nw))
    assert out.shape[-2:] == model.output_size((nh, nw))


@pytest.mark.parametrize("name", MODELS)
def test_nearest_valid_size_is_valid_and_nearest(name: str) -> None:
    model = tiny_model(name)
    valid = [n for n in range(1, 700) if model.is_valid_input_size(n)]
    assert valid[0] == model.min_input_size
    # the stated multiple describes the accepted sizes exactly
    assert valid == [
        n for n in range(model.min_input_size, 700) if (n - model.min_input_size) % model.input_multiple == 0
    ]
    for n in (1, 17, 100, 333, 517, 572, 600):
        best = model.nearest_valid_input_size(n)
        assert best in valid
        assert all(abs(v - n) >= abs(best - n) for v in valid), (n, best)


@pytest.mark.parametrize("name", MODELS)
def test_output_size_matches_the_real_output_on_several_sizes(name: str) -> None:
    model = tiny_model(name).eval()
    for target in (64, 97, 130):
        h = model.nearest_valid_input_size(max(target, model.min_input_size))
        w = model.nearest_valid_input_size(h + 40)
        with torch.no_grad():
            out = model(torch.randn(1, 1, h, w))
        assert out.shape[-2:] == model.output_size((h, w)), (h, w)
        assert model.output_size(h) == out.shape[-2]


@pytest.mark.parametrize("name", MODELS)
def test_wrong_rank_or_channels_fail_clearly(name: str) -> None:
    model = tiny_model(name)
    size = small_size(model)
    with pytest.raises(ValueError, match=re.escape("expected a (B, C, H, W) tensor, got shape")):
        model(torch.randn(1, size, size))
    with pytest.raises(ValueError, match=r"expected 1 input channel\(s\), got 3 .*in_channels=3"):
        model(torch.randn(1, 3, size, size))


@pytest.mark.parametrize("name", MODELS)
def test_every_model_states_its_size_contract(name: str) -> None:
    model = tiny_model(name)
    assert isinstance(model, SegmentationModel)
    assert model.padding_mode in ("valid", "same")
    assert model.input_multiple >= 1 and model.min_input_size >= 1
    if model.padding_mode == "same":  # padded models keep the size they accept
        for n in range(model.min_input_size, 300, 7):
            if model.is_valid_input_size(n):
                assert model.output_size(n) == n

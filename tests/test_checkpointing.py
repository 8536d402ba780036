"""Gradient checkpointing: same outputs, gradients and BatchNorm state as a plain model, less memory."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo import list_models

from .helpers import small_size, tiny_model


def _step(model: nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)  # same dropout draw for both models
    out = model(x)
    target = torch.zeros(out.shape[0], *out.shape[2:], dtype=torch.long)
    F.cross_entropy(out, target).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list_models())
def test_checkpointed_training_step_is_identical(name: str) -> None:
    plain = tiny_model(name).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    size = small_size(plain)
    x = torch.randn(2, 1, size, size)
    out_a, grads_a = _step(plain, x, seed=1)
    out_b, grads_b = _step(ckpt, x, seed=1)
    torch.testing.assert_close(out_b, out_a, rtol=1e-6, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(list(plain.parameters()))
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-5, atol=1e-6, msg=n)
    # the recompute in backward must not update BatchNorm running statistics a second time
    buffers_a, buffers_b = dict(plain.named_buffers()), dict(ckpt.named_buffers())
    for n in buffers_a:
        torch.testing.assert_close(buffers_b[n], buffers_a[n], rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("name", ["unet", "unet_bn", "unet_resnet34"])
def test_checkpointing_stores_fewer_activations(name: str) -> None:
    def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x).sum().backward()
        return total

    plain = tiny_model(name).train()
    ckpt = tiny_model(name, grad_checkpointing=True).train()
    size = small_size(plain, 128)
    x = torch.randn(2, 1, size, size)
    # only block inputs (and what the joins between blocks keep) stay stored; the blocks' insides go
    assert saved_bytes(ckpt, x) < 0.6 * saved_bytes(plain, x)


def test_checkpointed_model_in_eval_gives_the_plain_outputs() -> None:
    plain = tiny_model("unet_bn").eval()
    ckpt = tiny_model("unet_bn", grad_checkpointing=True).eval()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ckpt(x), plain(x), rtol=0, atol=0)

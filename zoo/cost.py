"""Model cost that needs no timing: parameter count and FLOPs.

FLOPs follow one convention everywhere in the zoo: 2 FLOPs per multiply-add, counted by
``torch.utils.flop_counter`` over convolutions (transposed ones included) and matrix products.
Element-wise work (activations, normalisation, pooling, interpolation) is not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_parameters"]


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one inference forward pass on an input of ``input_shape`` ``(B, C, H, W)``.

    A model on the ``meta`` device is counted without computing anything (shapes only), so the cost
    of full-size models can be stated instantly.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(tuple(input_shape), device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())

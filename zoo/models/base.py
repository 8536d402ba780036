"""What every zoo model shares: the size contract and gradient checkpointing.

The size contract is defined once, here. A model says, per spatial dimension, which output length an
input length gives (or that it is not accepted) through :meth:`SegmentationModel._output_length`;
everything else (``output_size``, the nearest valid size, the error message) derives from that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from zoo.errors import ZooError

__all__ = ["InputSizeError", "SegmentationModel", "checkpoint_segment"]

SizeT = TypeVar("SizeT", int, tuple[int, int])


class InputSizeError(ZooError, ValueError):
    """An input whose height or width the model cannot take; the message gives the nearest that works."""


class SegmentationModel(nn.Module):
    """Base class of zoo models: ``(B, in_channels, H, W) -> (B, num_classes, H', W')`` logits.

    ``(H', W') == output_size((H, W))``. Subclasses set ``in_channels``, ``num_classes``,
    ``padding_mode`` ("valid": outputs shrink, as in the paper; "same": outputs keep the input size)
    and implement :meth:`_output_length`, :attr:`input_multiple` and :attr:`min_input_size`.
    """

    in_channels: int
    num_classes: int
    padding_mode: str
    grad_checkpointing: bool = False
    model_name: str = ""
    model_args: dict[str, Any]

    arg_ranges: ClassVar[Mapping[str, tuple[int, int]]] = {"in_channels": (1, 1024), "num_classes": (1, 1024)}
    """Inclusive bounds of the size arguments (widths, depths, channels; each entry of a list of widths),
    which :func:`zoo.registry.build_model` checks before anything is built or allocated."""

    @classmethod
    def size_problem(cls, args: Mapping[str, Any]) -> str | None:
        """What makes ``args`` (each of the declared type and in :attr:`arg_ranges`) too large together,
        with the fix, or None; :func:`zoo.registry.build_model` refuses the model when there is one."""
        return None

    def __init__(self) -> None:
        super().__init__()
        self.model_args = {}

    # -- size contract -----------------------------------------------------------------------------
    @property
    def input_multiple(self) -> int:
        """Period of the accepted input lengths: valid sizes are ``min_input_size + k * input_multiple``."""
        raise NotImplementedError

    @property
    def min_input_size(self) -> int:
        """The smallest accepted input height/width."""
        raise NotImplementedError

    def _output_length(self, n: int) -> int | None:
        """Output length for input length ``n`` along one axis, or None where ``n`` is not accepted."""
        raise NotImplementedError

    @property
    def total_stride(self) -> int:
        """Product of the strides between the input and the deepest feature map (``2**depth`` for
        ``depth`` poolings). Sides on the size contract's grid that are also on a grid of this period
        pass every down-sampling without rounding, so one traced graph serves all of them: the sizes a
        dynamic-shape export (:mod:`zoo.export`) accepts."""
        raise NotImplementedError

    def size_rule(self) -> str:
        """The accepted sizes in words, e.g. ``"188 + 16k"``."""
        if self.input_multiple == 1:
            return f"any size >= {self.min_input_size}"
        return f"{self.min_input_size} + {self.input_multiple}k (k = 0, 1, 2, ...)"

    def is_valid_input_size(self, n: int) -> bool:
        return self._output_length(n) is not None

    def next_valid_input_size(self, n: int) -> int:
        """The smallest accepted length that is at least ``n``."""
        if n <= self.min_input_size:
            return self.min_input_size
        for d in range(self.input_multiple + 1):
            if self.is_valid_input_size(n + d):
                return n + d
        # the contract promised periodicity; say so rather than loop forever
        raise RuntimeError(f"{type(self).__name__}: no valid size found above {n}")

    def nearest_valid_input_size(self, n: int) -> int:
        """The accepted length closest to ``n``; on a tie the larger one (padding loses nothing)."""
        up = self.next_valid_input_size(n)
        if up == n or n <= self.min_input_size:
            return up
        down = next((n - d for d in range(up - n) if self.is_valid_input_size(n - d)), None)
        return down if down is not None and n - down < up - n else up

    def output_size(self, input_size: SizeT) -> SizeT:
        """Output spatial size for an input size (an int, or ``(H, W)``).

        Raises:
            InputSizeError: if the model does not accept that size, naming the nearest valid size.
        """
        if isinstance(input_size, int):
            return self._checked_lengths((input_size,))[0]
        h, w = input_size
        oh, ow = self._checked_lengths((h, w))
        return (oh, ow)

    def _checked_lengths(self, lengths: tuple[int, ...]) -> tuple[int, ...]:
        outs = [self._output_length(int(n)) for n in lengths]
        if all(o is not None for o in outs):
            return tuple(o for o in outs if o is not None)
        nearest = tuple(self.nearest_valid_input_size(int(n)) for n in lengths)
        near_out = tuple(self._output_length(n) for n in nearest)
        got = "x".join(str(n) for n in lengths)
        name = self.model_name or type(self).__name__
        fix = "Pad the image to that size (mirror padding keeps borders meaningful) or crop it."
        raise InputSizeError(
            f"{name}: input size {got} is not accepted; this model takes sizes {self.size_rule()} "
            f"per side ({self._size_reason()}). Nearest valid input: {'x'.join(map(str, nearest))} "
            f"(output {'x'.join(map(str, near_out))}). {fix}"
        )

    def _size_reason(self) -> str:
        return "set by its padding and down-sampling"

    def check_input(self, x: Tensor) -> None:
        """Fail early, and clearly, on a tensor this model cannot take."""
        if x.dim() != 4:
            raise ValueError(
                f"{self.model_name or type(self).__name__}: expected a (B, C, H, W) tensor, got shape "
                f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.model_name or type(self).__name__}: expected {self.in_channels} input channel(s), "
                f"got {x.shape[1]} (shape {tuple(x.shape)}); build the model with "
                f"in_channels={x.shape[1]} or convert the images"
            )
        h, w = x.shape[-2], x.shape[-1]
        if isinstance(h, int) and isinstance(w, int):
            self._checked_lengths((h, w))
            return
        # symbolic sizes (torch.export with dynamic shapes): int() would pin the graph to the example's
        # size, so the contract is stated to the tracer instead, and the exported graph checks it
        for n in (h, w):
            torch._check(n >= self.min_input_size)
            torch._check((n - self.min_input_size) % self.input_multiple == 0)

    # -- gradient checkpointing --------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations block by block in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def _maybe_checkpoint(self, segment: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint_segment(segment, fn, *args)
        return fn(*args)


def checkpoint_segment(segment: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` under activation checkpointing, with ``segment``'s norm statistics protected.

    Recomputation in the backward pass runs the segment forward a second time; BatchNorm layers in
    training mode would then update their running statistics twice per step. During the recompute
    they are frozen, so a checkpointed model ends a step in exactly the state of a plain one.
    Dropout masks are reproduced because the RNG state is restored for the recompute.
    """
    return checkpoint(
        fn,
        *args,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _frozen_running_stats(segment)),
    )


@contextlib.contextmanager
def _frozen_running_stats(segment: nn.Module) -> Iterator[None]:
    norms = [
        m
        for m in segment.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    saved = [
        (m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms
    ]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)

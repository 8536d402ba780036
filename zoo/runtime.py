"""Where and how a model computes: the device, the autocast dtype and the memory format.

One set of rules for training, evaluation, prediction and the benchmarks, so that a model is measured
the way it is trained. :func:`resolve_device` picks the device and prepares it; :class:`Precision`
holds the autocast dtype and the memory format and applies them to models, inputs and forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from zoo.errors import ConfigError

__all__ = ["AMP_CHOICES", "Precision", "resolve_amp", "resolve_channels_last", "resolve_device"]

AMP_CHOICES = ("auto", "bf16", "fp16", "none")


def resolve_device(name: str) -> torch.device:
    """The device ``name`` ("auto": CUDA when there is one) names, ready to compute on.

    On a CPU this also flushes denormal floats to zero for the process (``torch.set_flush_denormal``):
    gradients and activations that decay below 1e-38 otherwise take x86's microcode path, and a
    ``unet_bn`` training step on this project's 2-core Intel Xeon took 7.9 s instead of 0.82 s (bf16,
    width 32, 192x192, batch 4). Values that small change no result."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device='cpu' or 'auto'")
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 where the hardware supports it ("auto"), fp16 on CUDA only, or None."""
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp={amp!r} is not one of {', '.join(map(repr, AMP_CHOICES))}")
    if amp == "none":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp='fp16' needs a CUDA device (on CPU use 'bf16' or 'none')")
        return torch.float16
    if device.type == "cuda":
        if amp == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if amp == "bf16" or supported:
        return torch.bfloat16
    return None


def resolve_channels_last(requested: bool | None, amp: torch.dtype | None) -> bool:
    """Channels-last as requested, or (None) wherever autocast is on: oneDNN/cuDNN's fast reduced-precision
    convolutions want NHWC, and in fp32 eager it is not reliably faster."""
    return requested if requested is not None else amp is not None


@dataclass(frozen=True)
class Precision:
    """How a model computes: under autocast in ``autocast_dtype`` (None: in the weights' own dtype) and
    on channels-last (NHWC) tensors or not. The default is plain float32, contiguous."""

    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def resolve(cls, amp: str, device: torch.device, channels_last: bool | None = None) -> Precision:
        """The precision a config's ``amp`` and ``channels_last`` ask for on ``device``."""
        dtype = resolve_amp(amp, device)
        return cls(dtype, resolve_channels_last(channels_last, dtype))

    @property
    def dtype_name(self) -> str:
        """The compute dtype as runs record it: "bfloat16", "float16" or "float32"."""
        return str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "float32"

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    def autocast(self, device: torch.device | str, *, cache: bool = True) -> torch.autocast:
        """The context a forward pass runs in (a disabled autocast when there is no autocast dtype).
        ``cache=False`` for a CUDA graph capture, which must not keep autocast's cast-weight cache."""
        device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
        enabled = self.autocast_dtype is not None
        return torch.autocast(device_type, dtype=self.autocast_dtype, enabled=enabled, cache_enabled=cache)

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in this memory format (in place, as ``Module.to`` is)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def input(self, x: Tensor) -> Tensor:
        """A 4-d batch in this memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

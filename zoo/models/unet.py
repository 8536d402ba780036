"""The U-Net of Ronneberger, Fischer and Brox (2015) and the variants built from the same blocks.

One configurable class, :class:`UNet`, covers the paper's network (unpadded convolutions,
crop-and-concat skips), the padded BatchNorm U-Net most PyTorch projects use, bilinear up-sampling and
attention-gated skips (Oktay et al. 2018). The registered names at the end of this file are recipes
of this class.

Shape contract: ``(B, in_channels, H, W) -> (B, num_classes, H', W')`` logits with
``(H', W') = model.output_size((H, W))``; 572 -> 388 for the paper's recipe, ``H' = H`` when padded.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import ConfigError
from zoo.models.base import SegmentationModel
from zoo.registry import build_model, register_model

__all__ = [
    "AttentionGate",
    "ConvBlock",
    "UNet",
    "UpBlock",
    "attention_unet",
    "unet",
    "unet_bilinear",
    "unet_bn",
]

NORMS = ("batch", "instance", "group", "none")
UP_MODES = ("transpose", "bilinear")
PADDINGS = ("valid", "same")
INITS = ("paper", "torch")


def _choice(option: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{option}={value!r} is not one of {', '.join(map(repr, choices))}.{hint}")
    return str(value)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        # 8 channels per group where possible; GroupNorm needs groups to divide channels
        groups = math.gcd(channels, max(1, channels // 8))
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by normalisation (optional) and ReLU.

    Layout ``[conv, norm, relu, conv, norm, relu]`` (with norms as Identity when absent), so weights of
    the common PyTorch U-Net layout map index for index.
    """

    def __init__(
        self, in_ch: int, out_ch: int, *, mid_ch: int | None = None, padding: int, norm: str
    ) -> None:
        mid = mid_ch or out_ch
        bias = norm == "none"  # a bias before a normalisation layer is redundant
        super().__init__(
            nn.Conv2d(in_ch, mid, 3, padding=padding, bias=bias),
            _norm(norm, mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_ch, 3, padding=padding, bias=bias),
            _norm(norm, out_ch),
            nn.ReLU(inplace=True),
        )


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018, "Attention U-Net", arXiv:1804.03999).

    ``alpha = sigmoid(psi(relu(W_g g + W_x x)))``, output ``x * alpha``, with ``g`` the up-sampled decoder
    features and ``x`` the skip features at the same resolution: ``(B, C_x, H, W), (B, C_g, H, W) ->
    (B, C_x, H, W)``.
    """

    def __init__(self, skip_ch: int, gate_ch: int, inter_ch: int, *, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.w_x = nn.Sequential(nn.Conv2d(skip_ch, inter_ch, 1, bias=False), _norm(norm, inter_ch))
        self.w_g = nn.Sequential(nn.Conv2d(gate_ch, inter_ch, 1, bias=bias), _norm(norm, inter_ch))
        # a bias before BatchNorm is subtracted again with the batch mean: its gradient is zero (up to
        # rounding), so the one-channel BatchNorm's own shift stands in for it
        with_bn = norm == "batch"
        self.psi = nn.Sequential(
            nn.Conv2d(inter_ch, 1, 1, bias=not with_bn), _norm(norm, 1) if with_bn else nn.Identity()
        )

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        alpha = torch.sigmoid(self.psi(F.relu(self.w_x(x) + self.w_g(g))))
        return x * alpha


def _center_crop(x: Tensor, h: int, w: int) -> Tensor:
    top = (x.shape[-2] - h) // 2
    left = (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def _pad_to(x: Tensor, h: int, w: int) -> Tensor:
    dh, dw = h - x.shape[-2], w - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])


class UpBlock(nn.Module):
    """Up-sample by 2, join the skip (crop it, or pad the up-sampled map), optionally gate it, convolve."""

    def __init__(
        self,
        in_ch: int,
        skip_ch: int,
        out_ch: int,
        *,
        up_mode: str,
        padding: int,
        norm: str,
        attention: bool,
    ) -> None:
        super().__init__()
        self.valid = padding == 0
        if up_mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_ch, in_ch // 2, 2, stride=2)
            up_ch = in_ch // 2
            conv_in, mid = up_ch + skip_ch, None
        else:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            up_ch = in_ch
            conv_in, mid = up_ch + skip_ch, (up_ch + skip_ch) // 2
        self.gate = AttentionGate(skip_ch, up_ch, max(1, skip_ch // 2), norm=norm) if attention else None
        self.conv = ConvBlock(conv_in, out_ch, mid_ch=mid, padding=padding, norm=norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        h, w = x.shape[-2:]
        if self.valid:
            # the paper: the skip map is larger (its border was lost to unpadded convolutions); crop it
            skip = _center_crop(skip, h, w)
        else:
            # padded: an odd size was floored by pooling, so the up-sampled map is 1 short; pad it
            x = _pad_to(x, skip.shape[-2], skip.shape[-1])
        if self.gate is not None:
            skip = self.gate(skip, x)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(SegmentationModel):
    """Configurable U-Net (Ronneberger et al. 2015, "U-Net: Convolutional Networks for Biomedical Image
    Segmentation", MICCAI, arXiv:1505.04597).

    Args:
        in_channels: input image channels.
        num_classes: output channels (logits).
        base_channels: channels of the first level; level ``k`` has ``base_channels * 2**k`` (paper: 64).
        depth: number of 2x2 poolings (paper: 4).
        padding: "valid" (the paper: unpadded 3x3 convolutions, crop-and-concat; 572 -> 388) or "same".
        norm: "batch", "instance", "group" or "none".
        up_mode: "transpose" (2x2 transposed convolution halving channels, the paper) or "bilinear"
            (parameter-free up-sampling; the bottleneck is halved and each decoder block squeezes
            channels in its first convolution instead).
        attention: additive attention gates on the skips (Oktay et al. 2018).
        dropout: drop probability at the end of the contracting path (the two deepest levels, as in the
            authors' Caffe model); 0 disables it.
        init: "paper" (Gaussian, std sqrt(2/N), N the inputs of one output unit; biases 0) or "torch".
        grad_checkpointing: recompute each block's activations in the backward pass.

    Types and sizes are checked by :func:`zoo.registry.build_model` before anything is built: the
    ranges of :attr:`arg_ranges`, and a widest level of at most :attr:`MAX_WIDTH` channels.
    """

    arg_ranges: ClassVar[Mapping[str, tuple[int, int]]] = {
        **SegmentationModel.arg_ranges,
        "base_channels": (2, 256),
        "depth": (1, 6),
    }
    MAX_WIDTH: ClassVar[int] = 4096
    """Most channels of the widest level, ``base_channels * 2**depth`` (the paper's 1024 times four): at
    twice that, one 3x3 convolution alone holds 600M parameters (2.4 GB)."""

    @classmethod
    def size_problem(cls, args: Mapping[str, Any]) -> str | None:
        base, depth = args.get("base_channels", 64), args.get("depth", 4)
        if base * 2**depth <= cls.MAX_WIDTH:
            return None
        return (
            f"base_channels={base} with depth={depth} makes a widest level of {base * 2**depth} channels; "
            f"keep base_channels * 2**depth at most {cls.MAX_WIDTH} (base_channels <= "
            f"{cls.MAX_WIDTH // 2**depth} at depth {depth})"
        )

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        base_channels: int = 64,
        depth: int = 4,
        padding: str = "same",
        norm: str | None = "batch",
        up_mode: str = "transpose",
        attention: bool = False,
        dropout: float = 0.0,
        init: str = "torch",
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout={dropout} must be in [0, 1)")
        norm_kind = _choice("norm", norm or "none", NORMS)
        self.padding_mode = _choice("padding", padding, PADDINGS)
        up_kind = _choice("up_mode", up_mode, UP_MODES)
        _choice("init", init, INITS)
        self.in_channels, self.num_classes, self.depth = in_channels, num_classes, depth
        self.grad_checkpointing = grad_checkpointing
        pad = 0 if self.padding_mode == "valid" else 1

        widths = [base_channels * 2**k for k in range(depth + 1)]
        if up_kind == "bilinear":
            widths[-1] //= 2  # the up-sampling cannot halve channels, so the bottleneck does
        self.encoder = nn.ModuleList(
            ConvBlock(c_in, c_out, padding=pad, norm=norm_kind)
            for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        # dropout on the two deepest encoder outputs ("drop-out layers at the end of the contracting path")
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        blocks = []
        c_in = widths[-1]
        for k in reversed(range(depth)):
            skip = widths[k]
            # bilinear: the next up-sampling keeps channels, so this block halves them (not the last)
            c_out = skip // 2 if up_kind == "bilinear" and k > 0 else skip
            blocks.append(
                UpBlock(c_in, skip, c_out, up_mode=up_kind, padding=pad, norm=norm_kind, attention=attention)
            )
            c_in = c_out
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c_in, num_classes, 1)
        if init == "paper":
            self.apply(_paper_init)

    # -- size contract -----------------------------------------------------------------------------
    @property
    def input_multiple(self) -> int:
        return 2**self.depth if self.padding_mode == "valid" else 1

    @property
    def min_input_size(self) -> int:
        if self.padding_mode == "same":
            return 2**self.depth
        return next(n for n in range(1, 4096) if self._output_length(n) is not None)

    @property
    def total_stride(self) -> int:
        return 2**self.depth

    def _output_length(self, n: int) -> int | None:
        if self.padding_mode == "same":
            return n if n >= 2**self.depth else None
        # valid: each ConvBlock loses 4 pixels; each pooling needs an even length
        for _ in range(self.depth):
            n -= 4
            if n <= 0 or n % 2:
                return None
            n //= 2
        n -= 4  # bottleneck
        for _ in range(self.depth):
            n = 2 * n - 4
            if n <= 0:
                return None
        return n if n > 0 else None

    def _size_reason(self) -> str:
        if self.padding_mode == "valid":
            return (
                f"unpadded 3x3 convolutions lose 4 pixels per block and each of the {self.depth} poolings "
                "needs an even length"
            )
        return f"{self.depth} poolings need at least {2**self.depth} pixels"

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        skips = []
        for k, block in enumerate(self.encoder):
            if k > 0:
                x = self.pool(x)
            x = self._maybe_checkpoint(block, block, x)
            if k >= self.depth - 1:
                x = self.dropout(x)
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            x = self._maybe_checkpoint(block, block, x, skips.pop())
        return self.head(x)


def _paper_init(m: nn.Module) -> None:
    """Gaussian with std sqrt(2/N), N = inputs feeding one output unit (He et al. 2015, as the paper)."""
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        kh, kw = m.kernel_size
        sh, sw = m.stride
        fan_in = m.in_channels // m.groups * kh * kw
        if isinstance(m, nn.ConvTranspose2d):
            # each output pixel of a stride-s transposed convolution sees kh*kw/(sh*sw) kernel taps
            fan_in = max(1, fan_in // (sh * sw))
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# -- registered recipes ------------------------------------------------------------------------------
RONNEBERGER_2015 = "Ronneberger, Fischer, Brox 2015, U-Net (arXiv:1505.04597)"
OKTAY_2018 = "Oktay et al. 2018, Attention U-Net (arXiv:1804.03999)"
_TINY = {"base_channels": 8}


@register_model(family="unet", paper=RONNEBERGER_2015, reference_size=572, tiny=_TINY)
def unet(**kwargs: object) -> UNet:
    """The paper's U-Net: unpadded 3x3 convs + ReLU, crop-and-concat, 2x2 up-convs, dropout, paper init."""
    recipe = dict(padding="valid", norm="none", up_mode="transpose", dropout=0.5, init="paper")
    return build_model(UNet, "unet", recipe, kwargs)


@register_model(family="unet", paper=RONNEBERGER_2015, tiny=_TINY)
def unet_bn(**kwargs: object) -> UNet:
    """Padded 3x3 convs with BatchNorm and transposed-conv up-sampling: the common PyTorch U-Net."""
    recipe = dict(padding="same", norm="batch", up_mode="transpose")
    return build_model(UNet, "unet_bn", recipe, kwargs)


@register_model(family="unet", paper=RONNEBERGER_2015, tiny=_TINY)
def unet_bilinear(**kwargs: object) -> UNet:
    """Padded BatchNorm U-Net with bilinear up-sampling (no transposed convs; about half the parameters)."""
    recipe = dict(padding="same", norm="batch", up_mode="bilinear")
    return build_model(UNet, "unet_bilinear", recipe, kwargs)


@register_model(family="attention_unet", paper=OKTAY_2018, tiny=_TINY)
def attention_unet(**kwargs: object) -> UNet:
    """Padded BatchNorm U-Net whose skips pass through additive attention gates."""
    recipe = dict(padding="same", norm="batch", up_mode="transpose", attention=True)
    return build_model(UNet, "attention_unet", recipe, kwargs)

"""The paper's augmentation, on batched tensors, on whatever device the batch is on.

Ronneberger et al. 2015 (section 3.1): shift and rotation invariance, robustness to deformations and
gray-value variations; "random elastic deformations ... random displacement vectors on a coarse 3 by 3
grid ... sampled from a Gaussian distribution with 10 pixels standard deviation. Per-pixel
displacements are then computed using bicubic interpolation."

All geometric changes of one sample (flip, rotation, scale, shift, elastic field) are folded into one
sampling grid, drawn once and applied to the image (bilinear), the mask (nearest: classes stay exact
integers) and the optional loss-weight map (bilinear), so they stay aligned. Borders are filled by
reflection, as the paper's mirror padding.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.errors import ConfigError

__all__ = ["AugmentConfig", "augment_batch"]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random changes; each sample draws its own values.

    Attributes:
        elastic_sigma: standard deviation (pixels) of the coarse-grid displacements; 0 disables (paper: 10).
        elastic_grid: points per side of the coarse displacement grid (paper: 3).
        rotation: maximum rotation in degrees (uniform in [-rotation, rotation]).
        scale: maximum relative zoom (uniform in [1 - scale, 1 + scale]).
        shift: maximum shift as a fraction of the size.
        hflip, vflip: random horizontal / vertical flips.
        brightness, contrast, gamma: gray-value changes (additive, multiplicative around the mean, and
            a power law with exponent exp(U(-gamma, gamma))).
    """

    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    rotation: float = 180.0
    scale: float = 0.1
    shift: float = 0.05
    hflip: bool = True
    vflip: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.2

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentConfig:
        """From a run config's ``augment`` table, each key and value checked (``--set augment=...``).

        Raises:
            ConfigError: an unknown key (with the closest), a value of the wrong type, or a negative one.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"augment={data!r}: expected a table of AugmentConfig fields, e.g. "
                "--set 'augment={\"rotation\": 15}'"
            )
        known = {f.name: f for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"augment key {key!r} is unknown.{hint} Augment keys: {', '.join(known)}")
            kind = known[key].type
            if kind == "bool":
                ok = isinstance(value, bool)
            else:
                ok = isinstance(value, int if kind == "int" else int | float) and not isinstance(value, bool)
            if not ok:
                raise ConfigError(f"augment {key}={value!r}: expected a {kind}")
            if not isinstance(value, bool) and value < 0:
                raise ConfigError(f"augment {key}={value!r} must be at least 0 (0 turns it off)")
        return cls(**data)

    def as_params(self) -> dict[str, str]:
        return {f"aug_{k}": str(v) for k, v in asdict(self).items()}


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64) * (high - low) + low


def _rows(batch: int, part: tuple[int, int] | None) -> tuple[int, slice]:
    """How many samples to draw random numbers for, and which of them are this batch's."""
    if part is None:
        return batch, slice(0, batch)
    offset, total = part
    if offset < 0 or offset + batch > total:
        raise ValueError(f"part={part}: rows {offset}..{offset + batch - 1} do not lie in a batch of {total}")
    return total, slice(offset, offset + batch)


def sampling_grid(
    batch: int,
    height: int,
    width: int,
    config: AugmentConfig,
    generator: torch.Generator,
    device: torch.device,
    *,
    part: tuple[int, int] | None = None,
) -> Tensor:
    """One random sampling grid per sample, ``(B, H, W, 2)`` in normalised coordinates for grid_sample.

    Random numbers are drawn on the CPU from ``generator`` (a few per sample), so a seed gives the same
    augmentation on every device. ``part=(offset, total)``: the ``batch`` samples are rows ``offset``
    onwards of a batch of ``total``; numbers are drawn for all ``total`` and these rows' kept, so each
    sample is augmented as it would be in the whole batch (data-parallel ranks).
    """
    g = generator
    n_draw, rows = _rows(batch, part)
    angle = _uniform(n_draw, -config.rotation, config.rotation, g) * math.pi / 180
    zoom = _uniform(n_draw, 1 - config.scale, 1 + config.scale, g)
    sx = (
        torch.where(torch.rand(n_draw, generator=g) < 0.5, -1.0, 1.0).double()
        if config.hflip
        else torch.ones(n_draw).double()
    )
    sy = (
        torch.where(torch.rand(n_draw, generator=g) < 0.5, -1.0, 1.0).double()
        if config.vflip
        else torch.ones(n_draw).double()
    )
    shift = _uniform(2 * n_draw, -config.shift, config.shift, g).view(n_draw, 2) * 2  # normalised units
    angle, zoom, sx, sy, shift = angle[rows], zoom[rows], sx[rows], sy[rows], shift[rows]
    # the linear part acts in pixel space (so rotation does not shear non-square images):
    # A = D^-1 R Z F D with D = diag(W/2, H/2); output coordinates map to input coordinates
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = cos * sx / zoom
    theta[:, 0, 1] = -sin * sy / zoom * (height / width)
    theta[:, 1, 0] = sin * sx / zoom * (width / height)
    theta[:, 1, 1] = cos * sy / zoom
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.float(), [batch, 1, height, width], align_corners=False).to(device)
    if config.elastic_sigma > 0:
        n = config.elastic_grid
        coarse = torch.randn(n_draw, 2, n, n, generator=g)[rows] * config.elastic_sigma
        field = F.interpolate(coarse.to(device), size=(height, width), mode="bicubic", align_corners=True)
        # pixels -> normalised units (x along width, y along height)
        field = field * torch.tensor([2.0 / width, 2.0 / height], device=device).view(1, 2, 1, 1)
        grid = grid + field.permute(0, 2, 3, 1)
    return grid


def augment_batch(
    images: Tensor,
    masks: Tensor,
    weights: Tensor | None = None,
    *,
    config: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    part: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Augment a batch: images ``(B, C, H, W)`` float in [0, 1], masks ``(B, H, W)`` int64, optional
    weights ``(B, H, W)`` float. Returns tensors of the same shapes, dtypes and device.

    ``part=(offset, total)``: the batch is rows ``offset`` onwards of a global batch of ``total`` (one
    data-parallel rank's share); each sample gets exactly the augmentation it would get there.
    """
    cfg = config or AugmentConfig()
    gen = generator if generator is not None else torch.Generator().manual_seed(torch.seed())
    if images.dim() != 4 or masks.dim() != 3 or masks.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            "expected images (B, C, H, W) and masks (B, H, W) of the same B, H, W; got "
            f"{tuple(images.shape)} and {tuple(masks.shape)}"
        )
    if masks.dtype != torch.int64:
        raise TypeError(f"masks must be int64 class indices, got {masks.dtype}")
    b, _, h, w = images.shape
    grid = sampling_grid(b, h, w, cfg, gen, images.device, part=part).to(images.dtype)
    out = _resample(images, grid, "bilinear")
    # nearest sampling of the class indices: exact integers, no blending between classes
    out_masks = _resample(masks.unsqueeze(1).to(images.dtype), grid, "nearest").squeeze(1).round().long()
    out_weights = None
    if weights is not None:
        out_weights = _resample(weights.unsqueeze(1).to(images.dtype), grid, "bilinear").squeeze(1)
    out = _gray_values(out, cfg, gen, part)
    return out, out_masks, out_weights


def _resample(x: Tensor, grid: Tensor, mode: str) -> Tensor:
    # reflection at the borders: the paper's mirror padding
    return F.grid_sample(x, grid, mode=mode, padding_mode="reflection", align_corners=False)


def _gray_values(x: Tensor, cfg: AugmentConfig, gen: torch.Generator, part: tuple[int, int] | None) -> Tensor:
    n_draw, rows = _rows(x.shape[0], part)
    shape = (x.shape[0], 1, 1, 1)
    gamma = torch.exp(_uniform(n_draw, -cfg.gamma, cfg.gamma, gen))[rows].view(shape).to(x)
    contrast = _uniform(n_draw, 1 - cfg.contrast, 1 + cfg.contrast, gen)[rows].view(shape).to(x)
    bright = _uniform(n_draw, -cfg.brightness, cfg.brightness, gen)[rows].view(shape).to(x)
    x = x.clamp(0, 1).pow(gamma)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + bright).clamp_(0, 1)

"""Augmentation keeps image and mask aligned and masks integer; the weight map against brute force."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.data.augment import AugmentConfig, augment_batch, sampling_grid
from zoo.data.weightmap import unet_weight_map

GEOMETRY_ONLY = AugmentConfig(brightness=0.0, contrast=0.0, gamma=0.0)
NOTHING = AugmentConfig(
    elastic_sigma=0, rotation=0, scale=0, shift=0, hflip=False, vflip=False, brightness=0, contrast=0, gamma=0
)


def _blocks(b: int, h: int, w: int, classes: int = 3) -> torch.Tensor:
    """Masks of large random rectangles: any misalignment of image and mask shows along their edges."""
    gen = torch.Generator().manual_seed(1)
    masks = torch.zeros(b, h, w, dtype=torch.int64)
    for i in range(b):
        for _ in range(6):
            y0, x0 = torch.randint(0, h - 16, (2,), generator=gen).tolist()
            dy, dx = torch.randint(8, 24, (2,), generator=gen).tolist()
            masks[i, y0 : y0 + dy, x0 : x0 + dx] = int(torch.randint(1, classes, (1,), generator=gen))
    return masks


def test_image_and_mask_stay_aligned() -> None:
    masks = _blocks(8, 96, 128)
    images = (masks.float() / 2).unsqueeze(1)  # the image *is* the mask, as gray levels 0, 0.5, 1
    gen = torch.Generator().manual_seed(0)
    out_img, out_mask, _ = augment_batch(images, masks, config=GEOMETRY_ONLY, generator=gen)
    recovered = (out_img.squeeze(1) * 2).round().long()
    agree = (recovered == out_mask).float().mean().item()
    assert agree > 0.97, agree  # only pixels on the blurred (bilinear) edges may disagree
    # a control: the same check with independent draws for image and mask fails badly
    img2, _, _ = augment_batch(
        images, masks, config=GEOMETRY_ONLY, generator=torch.Generator().manual_seed(1)
    )
    assert ((img2.squeeze(1) * 2).round().long() == out_mask).float().mean().item() < 0.9


def test_masks_stay_integer_with_their_classes() -> None:
    masks = _blocks(4, 64, 64, classes=4)
    images = torch.rand(4, 3, 64, 64)
    out_img, out_mask, _ = augment_batch(images, masks, generator=torch.Generator().manual_seed(2))
    assert out_mask.dtype == torch.int64 and out_mask.shape == masks.shape
    assert set(out_mask.unique().tolist()) <= set(masks.unique().tolist())
    assert out_img.shape == images.shape and out_img.min() >= 0 and out_img.max() <= 1


def test_same_seed_same_augmentation_and_weights_follow() -> None:
    masks = _blocks(3, 64, 80)
    images = torch.rand(3, 1, 64, 80)
    weights = masks.float() + 1
    a = augment_batch(images, masks, weights, generator=torch.Generator().manual_seed(7))
    b = augment_batch(images, masks, weights, generator=torch.Generator().manual_seed(7))
    for x, y in zip(a, b, strict=True):
        assert x is not None and y is not None and torch.equal(x, y)
    assert a[2] is not None
    # the weight map moved with the mask: where the mask is background, the weight is ~1
    assert (a[2][a[1] == 0] - 1).abs().median() < 1e-4


def test_no_op_config_is_the_identity() -> None:
    masks = _blocks(2, 40, 56)
    images = torch.rand(2, 1, 40, 56)
    out_img, out_mask, _ = augment_batch(
        images, masks, config=NOTHING, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(out_mask, masks)
    torch.testing.assert_close(out_img, images, atol=1e-5, rtol=0)


def test_flips_alone_give_the_input_or_its_mirror() -> None:
    masks = _blocks(16, 32, 48)
    images = torch.rand(16, 1, 32, 48)
    cfg = replace(NOTHING, hflip=True)
    _, out, _ = augment_batch(images, masks, config=cfg, generator=torch.Generator().manual_seed(3))
    flipped = [bool(torch.equal(o, m.flip(-1))) for o, m in zip(out, masks, strict=True)]
    same = [bool(torch.equal(o, m)) for o, m in zip(out, masks, strict=True)]
    assert all(f or s for f, s in zip(flipped, same, strict=True)) and any(flipped) and any(same)


def test_elastic_displacements_have_the_papers_10_pixel_spread() -> None:
    cfg = AugmentConfig(
        elastic_sigma=10.0, elastic_grid=3, rotation=0, scale=0, shift=0, hflip=False, vflip=False
    )
    b, h, w = 400, 41, 61
    grid = sampling_grid(b, h, w, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    identity = F.affine_grid(torch.eye(2, 3).expand(b, 2, 3), [b, 1, h, w], align_corners=False)
    disp = (grid - identity) * torch.tensor([w / 2, h / 2])  # back to pixels
    nodes = disp[:, [0, h // 2, h - 1]][:, :, [0, w // 2, w - 1]]  # the 3x3 coarse-grid points
    assert nodes.std().item() == pytest.approx(10.0, rel=0.06)
    # and the field is smooth: neighbouring pixels move almost together
    assert (disp[:, 1:] - disp[:, :-1]).abs().mean() < 1.0


def test_rotation_keeps_a_square_a_square_in_a_wide_image() -> None:
    cfg = replace(NOTHING, rotation=90)
    masks = torch.zeros(32, 60, 120, dtype=torch.int64)
    masks[:, 20:40, 50:70] = 1  # a centred 20x20 square
    _, out, _ = augment_batch(
        torch.zeros(32, 1, 60, 120), masks, config=cfg, generator=torch.Generator().manual_seed(0)
    )
    # count near the centre only: farther out, the mirror padding folds the square back in
    area = out[:, :, 20:100].sum(dim=(1, 2)).float()
    # a rotation about the centre keeps the area (no shear from the non-square frame)
    assert ((area - 400).abs() / 400).max() < 0.12


def _brute_force_weight(mask: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """Eq. 2 of the paper by exhaustive distance computation, with the class-balancing term."""
    from scipy import ndimage

    labels, n = ndimage.label(mask == 0)
    ys, xs = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    dists = []
    for k in range(1, n + 1):
        py, px = np.nonzero(labels == k)
        d = np.sqrt((ys[..., None] - py) ** 2 + (xs[..., None] - px) ** 2).min(-1)
        dists.append(d)
    d = np.sort(np.stack(dists), axis=0)
    border = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    border[mask == 0] = 0
    classes, counts = np.unique(mask, return_counts=True)
    wc = np.choose(mask, mask.size / (len(classes) * counts))
    return wc + border


def test_weight_map_matches_a_brute_force_oracle() -> None:
    mask = np.ones((40, 50), dtype=np.int64)  # 1 = membrane; 0 = cells
    mask[3:18, 4:22] = 0
    mask[3:18, 24:45] = 0  # 2 px gap to the first cell
    mask[22:37, 6:40] = 0
    got = unet_weight_map(mask, object_class=0, w0=10, sigma=5)
    want = _brute_force_weight(mask, 10, 5)
    # objects farther than 4 sigma are left out: the documented bound on the difference is w0 * exp(-8)
    np.testing.assert_allclose(got, want, rtol=0, atol=10 * math.exp(-8))
    # between the two touching cells: d1 + d2 = 2 + ... the weight peaks at about w_c + 10 * exp(-9/50)
    gap = got[10, 22:24]
    assert gap.min() > 8 + want[mask == 1].min() - 1
    assert math.isclose(float(got[mask == 0].mean()), float(want[mask == 0].mean()), rel_tol=1e-6)

"""Each metric against an independent implementation, and the edge cases of the definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import adapted_rand_error as skimage_are
from torchmetrics.functional.segmentation import dice_score, mean_iou

from zoo.metrics import (
    MetricAccumulator,
    adapted_rand_error,
    dice_iou_per_image,
    pixel_error_per_image,
    rand_error_cells,
)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_dice_and_iou_match_torchmetrics_per_image(num_classes: int) -> None:
    gen = torch.Generator().manual_seed(num_classes)
    pred = torch.randint(0, num_classes, (6, 33, 47), generator=gen)
    truth = torch.randint(0, num_classes, (6, 33, 47), generator=gen)
    dice, iou = dice_iou_per_image(pred, truth, num_classes)
    ref_dice = dice_score(
        pred, truth, num_classes=num_classes, include_background=False, average="macro", input_format="index"
    )
    ref_iou = mean_iou(
        pred, truth, num_classes=num_classes, include_background=False, per_class=False, input_format="index"
    )
    torch.testing.assert_close(dice.float(), ref_dice.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(iou.float(), ref_iou.float(), rtol=1e-5, atol=1e-6)


def test_edge_cases_of_empty_masks() -> None:
    empty = torch.zeros(1, 8, 8, dtype=torch.long)
    full = torch.ones(1, 8, 8, dtype=torch.long)
    assert (
        dice_iou_per_image(empty, empty, 2) == (torch.tensor([1.0], dtype=torch.float64),) * 2
    )  # both empty
    d, i = dice_iou_per_image(full, empty, 2)  # prediction where there is nothing
    assert d.item() == 0 and i.item() == 0
    d, i = dice_iou_per_image(empty, full, 2)  # nothing predicted where there is something
    assert d.item() == 0 and i.item() == 0
    half = full.clone()
    half[..., :4] = 0
    d, i = dice_iou_per_image(half, full, 2)
    assert d.item() == pytest.approx(2 * 32 / (32 + 64)) and i.item() == pytest.approx(0.5)


def test_unlabelled_pixels_count_nowhere() -> None:
    truth = torch.tensor([[[1, 1, -1, -1]]])
    pred = torch.tensor([[[1, 1, 0, 1]]])
    d, _ = dice_iou_per_image(pred, truth, 2)
    assert d.item() == 1.0
    assert pixel_error_per_image(pred, truth).item() == 0.0


def test_pixel_error_is_one_minus_accuracy() -> None:
    gen = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 2, (3, 20, 20), generator=gen)
    truth = torch.randint(0, 2, (3, 20, 20), generator=gen)
    expected = 1 - (pred == truth).float().mean(dim=(1, 2)).double()
    torch.testing.assert_close(pixel_error_per_image(pred, truth), expected)


@pytest.mark.parametrize("seed", range(4))
def test_adapted_rand_error_matches_skimage(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 7, (40, 50))  # 0 = unlabelled, ignored
    pred = rng.integers(0, 9, (40, 50))
    assert adapted_rand_error(truth, pred) == pytest.approx(skimage_are(truth, pred)[0], abs=1e-12)
    assert adapted_rand_error(truth, truth) == pytest.approx(0.0, abs=1e-12)


def test_rand_error_on_cells_of_a_real_style_mask(em_twin) -> None:  # type: ignore[no-untyped-def]
    from scipy import ndimage

    from zoo.data import ISBI2012Dataset

    mask = ISBI2012Dataset(em_twin).arrays(0)[1]  # 1 = membrane
    truth_cells, _ = ndimage.label(mask != 1)
    broken = mask.copy()
    broken[:, 60:62] = 1  # a false membrane splits every cell it crosses
    assert rand_error_cells(mask, mask) == pytest.approx(0.0, abs=1e-12)
    err = rand_error_cells(broken, mask)
    assert err == pytest.approx(skimage_are(truth_cells, ndimage.label(broken != 1)[0])[0], abs=1e-12)
    assert err > 0.01


def test_accumulator_averages_over_images_not_batches() -> None:
    gen = torch.Generator().manual_seed(3)
    pred = torch.randint(0, 2, (5, 16, 16), generator=gen)
    truth = torch.randint(0, 2, (5, 16, 16), generator=gen)
    truth[4] = 0
    pred[4] = 0  # the last, lone image: a perfect 1 that a per-batch mean would over-weight
    acc = MetricAccumulator(2)
    for start in range(0, 5, 2):
        acc.update(pred[start : start + 2], truth[start : start + 2])
    per_image, _ = dice_iou_per_image(pred, truth, 2)
    assert acc.compute()["dice"] == pytest.approx(per_image.mean().item())
    assert len(acc.dice) == 5

"""Each metric against an independent implementation, and the edge cases of the definitions."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import torch
from skimage.metrics import adapted_rand_error as skimage_are
from torchmetrics.functional.segmentation import dice_score, mean_iou

from zoo.metrics import (
    ISBI_THRESHOLDS,
    IsbiImageStats,
    MetricAccumulator,
    adapted_rand_error,
    dice_iou_per_image,
    isbi_challenge_scores,
    isbi_image_stats,
    misclassified_per_image,
    rand_error_cells,
    thin_boundaries,
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
    assert misclassified_per_image(pred, truth).item() == 0.0


def test_misclassified_is_one_minus_accuracy() -> None:
    gen = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 2, (3, 20, 20), generator=gen)
    truth = torch.randint(0, 2, (3, 20, 20), generator=gen)
    expected = 1 - (pred == truth).float().mean(dim=(1, 2)).double()
    torch.testing.assert_close(misclassified_per_image(pred, truth), expected)


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


# -- ISBI 2012 as the challenge scored it ------------------------------------------------------------
# Truth maps are class indices (0 cell, 1 membrane); proposals are cell probabilities, cell where > t.


def _flood_by_queue(cells: np.ndarray) -> np.ndarray:
    """The challenge script's border thinning done the plain way, one pixel at a time: the classic
    watershed by flooding (Soille and Vincent 1990) of the two-level image cells = 0, membrane = 1,
    pixels taken columns outer, rows inner, neighbours left, up, right, down (4-connected), as
    trainableSegmentation.utils.WatershedTransform2D runs it. Dams are 0."""
    h, w = cells.shape
    init, mask, queued, dam = -1, -2, -3, 0
    lab = np.full((h, w), init)
    scan = [(x, y) for x in range(w) for y in range(h)]
    levels = [[p for p in scan if cells[p[1], p[0]]], [p for p in scan if not cells[p[1], p[0]]]]

    def around(x: int, y: int) -> list[tuple[int, int]]:
        steps = ((x - 1, y), (x, y - 1), (x + 1, y), (x, y + 1))
        return [(u, v) for u, v in steps if 0 <= u < w and 0 <= v < h]

    basins, via_dam = 0, False
    for pixels in [lv for lv in levels if lv]:
        fifo: deque[tuple[int, int]] = deque()
        for x, y in pixels:
            lab[y, x] = mask
            if any(lab[v, u] >= dam for u, v in around(x, y)):
                lab[y, x] = queued
                fifo.append((x, y))
        while fifo:
            x, y = fifo.popleft()
            for u, v in around(x, y):
                if lab[v, u] > 0:
                    if lab[y, x] == queued or (lab[y, x] == dam and via_dam):
                        lab[y, x] = lab[v, u]
                    elif lab[y, x] > 0 and lab[y, x] != lab[v, u]:
                        lab[y, x], via_dam = dam, False
                elif lab[v, u] == dam:
                    if lab[y, x] == queued:
                        lab[y, x], via_dam = dam, True
                elif lab[v, u] == mask:
                    lab[v, u] = queued
                    fifo.append((u, v))
        for x, y in pixels:  # what the flood did not reach starts new basins
            if lab[y, x] == mask:
                basins += 1
                lab[y, x] = basins
                fifo.append((x, y))
                while fifo:
                    px, py = fifo.popleft()
                    for u, v in around(px, py):
                        if lab[v, u] == mask:
                            lab[v, u] = basins
                            fifo.append((u, v))
    lab[lab == init] = 0
    return lab


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal label images up to the numbering of the positive labels (0 must match exactly)."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = set(zip(a[a > 0].tolist(), b[b > 0].tolist(), strict=True))
    return len(pairs) == len({p for p, _ in pairs}) == len({q for _, q in pairs})


def test_isbi_thresholds_are_the_scripts_loop() -> None:
    # `for (double th = 0.0; th <= 1.0; th += 0.1)`: 11 float sums, the last just below 1
    assert len(ISBI_THRESHOLDS) == 11 and ISBI_THRESHOLDS[0] == 0.0
    assert ISBI_THRESHOLDS[3] == 0.1 + 0.1 + 0.1 and 0.9 < ISBI_THRESHOLDS[-1] < 1.0


def test_thinning_keeps_the_nearer_cell_and_puts_one_dam_between() -> None:
    # cells in columns 0 and 4, membrane 1..3: the first layer (columns 1 and 3) takes its cell's label,
    # column 2 meets both fronts and becomes the dam
    cells = np.zeros((4, 5), bool)
    cells[:, [0, 4]] = True
    out = thin_boundaries(cells)
    left, right = out[0, 0], out[0, 4]
    assert left != right and left > 0 and right > 0
    np.testing.assert_array_equal(out[:, :2], left)
    np.testing.assert_array_equal(out[:, 3:], right)
    np.testing.assert_array_equal(out[:, 2], 0)
    # a two-pixel membrane: the script's scan reaches column 1 first, so column 2 is the dam
    cells = np.zeros((3, 4), bool)
    cells[:, [0, 3]] = True
    out = thin_boundaries(cells)
    np.testing.assert_array_equal(out[:, 1], out[0, 0])
    np.testing.assert_array_equal(out[:, 2], 0)
    assert (thin_boundaries(np.zeros((3, 3), bool)) == 1).all()  # no cell: one plateau, one basin


@pytest.mark.parametrize("seed", range(3))
def test_thinning_equals_the_scripts_queue_flood(seed: int) -> None:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 16, 2))
        cells = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        assert _same_partition(thin_boundaries(cells), _flood_by_queue(cells)), cells.astype(int)
    field_ = ndimage.gaussian_filter(rng.random((48, 56)), 2.0)
    for t in np.quantile(field_, [0.3, 0.5, 0.7, 0.9]):  # smooth shapes: thick membranes, long dams
        cells = field_ > t
        assert _same_partition(thin_boundaries(cells), _flood_by_queue(cells))


def test_pixel_error_is_one_minus_the_best_f_score_of_the_cell_pixels() -> None:
    truth = np.array(
        [
            [0, 0, 1, 0],
            [0, 0, 1, 0],
            [1, 1, 1, 1],
            [0, 0, 1, 0],
        ]
    )  # 9 cell pixels, 7 membrane
    prob = np.where(truth == 0, 0.95, 0.05)
    prob[3, 3] = 0.35  # a doubtful cell pixel
    prob[2, 0] = 0.55  # a membrane pixel that looks like cell
    prob[0, 2] = 0.25
    # F = 2TP / (2TP + FP + FN) of the cell pixels, cell where prob > t:
    #   t = 0.0:       all 16 are cell:          TP 9, FP 7, FN 0 -> 18/25
    #   t = 0.1, 0.2:  + 0.25 and 0.55 only:     TP 9, FP 2, FN 0 -> 18/20
    #   t = 0.3:       + 0.55 only:              TP 9, FP 1, FN 0 -> 18/19  (the best)
    #   t = 0.4, 0.5:  0.35 lost:                TP 8, FP 1, FN 1 -> 16/18
    #   t = 0.6 - 0.9:                           TP 8, FP 0, FN 1 -> 16/17
    #   t = 0.99..:    nothing is cell:          precision 1, recall 0 -> 0
    stats = isbi_image_stats(prob, truth)
    expected_tp = [9, 9, 9, 9, 8, 8, 8, 8, 8, 8, 0]
    np.testing.assert_array_equal(stats.pixel_tp, expected_tp)
    np.testing.assert_array_equal(stats.pixel_fp, [7, 2, 2, 1, 1, 1, 0, 0, 0, 0, 0])
    scores = isbi_challenge_scores([stats])
    assert scores["pixel_error"] == pytest.approx(1 - 18 / 19, abs=1e-12)


def test_rand_and_information_scores_by_hand_before_and_after_thinning() -> None:
    # truth: cell A = columns 0-2 (12 px), membrane column 3, cell B = column 4 (4 px); n = 16
    truth = np.zeros((4, 5), int)
    truth[:, 3] = 1
    # the proposal sees cells only in columns 0 and 4 (the same at every threshold)
    prob = np.zeros((4, 5))
    prob[:, [0, 4]] = 1.0
    stats = isbi_image_stats(prob, truth)
    # not thinned: segments L = column 0, R = column 4; columns 1-2 of A are proposal membrane inside a
    # truth cell: 8 one-pixel segments. n_ij: (A, L) 4, (B, R) 4, n_0 = 8.
    #   ab = 4^2 + 4^2 + 8 = 40,  a = 12^2 + 4^2 = 160,  b = 4^2 + 4^2 + 8 = 40
    #   F = 2 ab / (a + b) = 80 / 200 = 0.4
    np.testing.assert_array_equal(stats.rand_ab, 40)
    np.testing.assert_array_equal(stats.rand_a, 160)
    np.testing.assert_array_equal(stats.rand_b, 40)
    # thinned: column 1 joins L, column 3 joins R, column 2 (inside A) is the dam: 4 one-pixel segments.
    #   ab = 8^2 + 4^2 + 4 = 84,  a = 160,  b = 8^2 + 4^2 + 4 = 84  ->  V_Rand = 168 / 244
    #   H(T) = H(12/16, 4/16) = 2 ln 2 - 0.75 ln 3; H(S) = H(8/16, 4/16, 4 x 1/16) = 2 ln 2; every
    #   segment lies in one truth cell, so H(S, T) = H(S) and I = H(T): V_Info = 2 H(T) / (H(T) + H(S))
    h_t = 2 * math.log(2) - 0.75 * math.log(3)
    h_s = 2 * math.log(2)
    np.testing.assert_allclose(stats.vrand, 168 / 244, rtol=1e-12)
    np.testing.assert_allclose(stats.vinfo, 2 * h_t / (h_t + h_s), rtol=1e-12)
    scores = isbi_challenge_scores([stats])
    assert scores["rand_error"] == pytest.approx(0.6, abs=1e-12)
    assert scores["vrand"] == pytest.approx(168 / 244, abs=1e-12)


def _singletons(labels: np.ndarray) -> np.ndarray:
    """Label 0 (the proposal's membrane) as one-pixel labels, the script's reading of it."""
    out = labels.astype(np.int64).copy()
    zeros = np.flatnonzero(out == 0)
    out.flat[zeros] = out.max() + 1 + np.arange(zeros.size)
    return out


def _squares(labels: np.ndarray) -> int:
    return int(sum(c * c for c in np.unique(labels, return_counts=True)[1].tolist()))


@pytest.mark.parametrize("seed", range(3))
def test_rand_and_information_sums_agree_with_skimage(seed: int) -> None:
    from scipy import ndimage, stats
    from skimage.metrics import variation_of_information

    rng = np.random.default_rng(seed)
    prob = ndimage.gaussian_filter(rng.random((64, 64)), 1.5)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    truth = (ndimage.gaussian_filter(rng.random((64, 64)), 1.5) > 0.5).astype(int)  # 1 = membrane
    got = isbi_image_stats(prob, truth)
    truth_cells = ndimage.label(truth == 0)[0]
    fg = truth_cells > 0
    t_fg, n = truth_cells[fg], int(fg.sum())
    a = _squares(t_fg)
    h_truth = stats.entropy(np.unique(t_fg, return_counts=True)[1], base=2)  # skimage counts in bits
    for k, t in enumerate(ISBI_THRESHOLDS):
        cells = prob > t
        # the sums over ordered pairs with self-pairs: ab = sum n_ij^2, b = sum b_j^2 with the proposal's
        # membrane as one-pixel segments; skimage drops the n self-pairs: F = 2 (ab - n) / (a + b - 2n)
        plain = _singletons(ndimage.label(cells)[0])[fg]
        thinned = _singletons(thin_boundaries(cells))[fg]
        for seg, ab, b in ((plain, got.rand_ab[k], got.rand_b[k]), (thinned, None, None)):
            pair_sq = _squares(t_fg * (int(seg.max()) + 1) + seg)
            seg_sq = _squares(seg)
            if ab is not None:
                assert (ab, got.rand_a[k], b) == (pair_sq, a, seg_sq)
            if seg_sq > n:  # some segment has two pixels, so skimage's precision is defined
                sk = 1 - skimage_are(t_fg, seg)[0]
                assert sk == pytest.approx(2 * (pair_sq - n) / (a + seg_sq - 2 * n), rel=1e-9, abs=1e-12)
        assert got.vrand[k] == pytest.approx(2 * pair_sq / (a + seg_sq), rel=1e-12)
        # V_Info = 2 I / (H(S) + H(T)) = 1 - VI / (H(S) + H(T)), VI = H(S|T) + H(T|S) from skimage
        h = h_truth + stats.entropy(np.unique(thinned, return_counts=True)[1], base=2)
        vi = float(np.sum(variation_of_information(t_fg, thinned)))
        assert got.vinfo[k] == pytest.approx(1 - vi / h, rel=1e-9, abs=1e-12)


def test_a_perfect_probability_map_scores_perfectly(em_twin) -> None:  # type: ignore[no-untyped-def]
    from zoo.data import ISBI2012Dataset

    masks = [ISBI2012Dataset(em_twin).arrays(i)[1] for i in range(3)]
    hard = [isbi_image_stats((m == 0).astype(np.float32), m) for m in masks]
    soft = [isbi_image_stats(np.where(m == 0, 0.8, 0.3), m) for m in masks]  # right for 0.3 <= t < 0.8
    for stats in (hard, soft):
        scores = isbi_challenge_scores(stats)
        assert scores["pixel_error"] == pytest.approx(0.0, abs=1e-12)
        assert scores["rand_error"] == pytest.approx(0.0, abs=1e-12)
        assert scores["vrand"] == pytest.approx(1.0, abs=1e-12)
        assert scores["vinfo"] == pytest.approx(1.0, abs=1e-12)
    assert soft[0].vrand[0] < 1 and soft[0].pixel_fp[0] > 0  # at t = 0 everything is cell: wrong


def test_one_threshold_serves_all_images_and_counts_pool_as_the_script_pools_them() -> None:
    def image(**columns: list[float]) -> IsbiImageStats:
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
        return IsbiImageStats(thresholds=(0.25, 0.75), **arrays)  # type: ignore[arg-type]

    # image 1 is best at the first threshold, image 2 at the second
    one = image(
        pixel_tp=[90, 10], pixel_fp=[10, 0], pixel_fn=[0, 80], rand_ab=[10, 1], rand_a=[10, 10],
        rand_b=[10, 1], vrand=[1.0, 0.0], vinfo=[0.9, 0.1],
    )  # fmt: skip
    two = image(
        pixel_tp=[0, 10], pixel_fp=[100, 0], pixel_fn=[10, 0], rand_ab=[1, 100], rand_a=[100, 100],
        rand_b=[1000, 100], vrand=[0.0, 0.8], vinfo=[0.2, 0.6],
    )  # fmt: skip
    scores = isbi_challenge_scores([one, two])
    # pixels pooled: t1: TP 90, FP 110, FN 10 -> 180/300; t2: TP 20, FP 0, FN 80 -> 40/120
    assert scores["pixel_error"] == pytest.approx(1 - 180 / 300)
    # Rand pairs pooled: t1: ab 11, a 110, b 1010 -> 22/1120; t2: ab 101, a 110, b 101 -> 202/211
    assert scores["rand_error"] == pytest.approx(1 - 202 / 211)
    # V scores averaged per threshold, then the best threshold: not the mean of each image's best
    assert scores["vrand"] == pytest.approx(0.5) and scores["vinfo"] == pytest.approx(0.55)
    with pytest.raises(ValueError, match="different thresholds"):
        isbi_challenge_scores([one, IsbiImageStats((0.5,), *[np.zeros(1)] * 8)])


def test_accumulator_scores_isbi_from_probabilities() -> None:
    truth = torch.zeros(2, 4, 5, dtype=torch.long)
    truth[:, :, 3] = 1
    logits = torch.full((2, 2, 4, 5), -100.0)
    logits[:, 0, :, [0, 4]] = 100.0  # cell where the proposal above sees it, certain (probabilities 0, 1)
    logits[:, 1, :, 1:4] = 100.0
    probs = logits.softmax(1)
    acc = MetricAccumulator(2, isbi=True)
    with pytest.raises(ValueError, match=r"probs=logits.softmax\(1\)"):
        acc.update(logits.argmax(1), truth)
    acc.update(logits.argmax(1), truth, probs=probs)
    out = acc.compute()
    assert set(out) == {
        "dice", "iou", "misclassified", "pixel_error", "rand_error", "vrand", "vinfo", "rand_error_argmax"
    }  # fmt: skip
    assert out["rand_error"] == pytest.approx(0.6) and out["vrand"] == pytest.approx(168 / 244)
    # the argmax's figures: 8 of 20 pixels wrong; its cells against the truth's, skimage's way
    assert out["misclassified"] == pytest.approx(8 / 20)
    pred_cells = (logits.argmax(1)[0] == 0).numpy().astype(int) * [[1, 0, 0, 0, 2]]
    truth_cells = (truth[0] == 0).numpy().astype(int) * [[1, 1, 1, 0, 2]]
    assert out["rand_error_argmax"] == pytest.approx(skimage_are(truth_cells, pred_cells)[0])
    with pytest.raises(ValueError, match="two classes"):
        MetricAccumulator(3, isbi=True)

"""Segmentation quality metrics: one definition each, used by the harness, reports and weights.

Conventions (stated in every report):
- Dice and IoU are computed **per image** over the foreground classes (class 1 for binary tasks; the
  macro mean over classes 1..K-1 otherwise) and then averaged over images. An image whose prediction
  and truth are both empty for a class scores 1 for that class.
- Per class, when there are more than two classes: ``dice_<name>`` and ``iou_<name>`` for each
  foreground class, computed per image and averaged over images the same way (both empty scores 1);
  an image's macro figure is the mean of its per-class figures. :func:`class_metric_keys` names them.
- ``misclassified`` is ``1 - pixel accuracy`` of the argmax per image, averaged over images.
- ``rand_error_argmax`` is the adapted Rand error of the argmax's cells: ``1 - F-score`` of the Rand
  index over pixel pairs, restricted to pixels that the truth labels as a cell (the definition of
  ``skimage.metrics.adapted_rand_error``), on the connected components of the non-membrane class in
  truth and prediction (:func:`rand_error_cells`); per image, averaged over images.
- ISBI 2012 as the challenge scored it, from the cell probability map (:func:`isbi_image_stats`,
  :func:`isbi_challenge_scores`): ``pixel_error`` and ``rand_error`` (the 2012 leaderboard's figures,
  errors) and ``vrand`` and ``vinfo`` (the later V_Rand and V_Info after border thinning, scores in
  [0, 1], 1 perfect). Like the challenge's script, and unlike the figures above, these pick **one**
  threshold for all the evaluated images (the best), pool or average over images as the script does,
  and are not per-image means.
- Pixels labelled ``ignore_index`` (-1, unlabelled) count nowhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from zoo.errors import ConfigError

__all__ = [
    "ISBI_THRESHOLDS",
    "PAPER_FIGURES",
    "PER_CLASS_METRICS",
    "IsbiImageStats",
    "MetricAccumulator",
    "adapted_rand_error",
    "class_key_names",
    "class_metric_keys",
    "confusion_per_image",
    "dice_iou_per_class",
    "dice_iou_per_image",
    "isbi_challenge_scores",
    "isbi_image_stats",
    "misclassified_per_image",
    "rand_error_cells",
    "split_class_key",
    "thin_boundaries",
]

REDUCTION = (
    "per-image, then mean over images (foreground classes, macro; per class the same way); both-empty "
    "scores 1; the ISBI challenge figures (pixel_error, rand_error, vrand, vinfo) as the challenge's "
    "script computes them: one best threshold of the cell probability for all images"
)

PAPER_FIGURES: dict[str, dict[str, float]] = {
    "isbi2012": {"pixel_error": 0.0611, "rand_error": 0.0382, "warping_error": 0.000353},
}
"""Published figures to read results beside, by dataset: the U-Net paper's Table 1 (Ronneberger et al.
2015), scored by the ISBI 2012 challenge's server on its test volume (this project scores its own
validation split: comparable definitions, not the same images)."""

# ISBI 2012 label convention of this codebase: class 0 cell interior (255 in the label files), class 1
# membrane (0 in the files)
CELL_CLASS = 0
BOUNDARY_CLASS = 1


def _script_thresholds(start: float = 0.0, stop: float = 1.0, step: float = 0.1) -> tuple[float, ...]:
    # the script's loop `for (double th = start; th <= stop; th += step)`, summed in float64 as Java does:
    # 11 values whose last is 0.9999999999999999, so pixels of cell probability exactly 1 still count there
    out, th = [], start
    while th <= stop:
        out.append(th)
        th += step
    return tuple(out)


ISBI_THRESHOLDS = _script_thresholds()
"""Thresholds of the cell probability (a pixel is a cell where ``prob > t``): those of the official
script's calls ``getMaximalVRandAfterThinning(0.0, 1.0, 0.1, true)``, ``getMaximalVInfoAfterThinning(0.0,
1.0, 0.1)`` and ``getPixelErrorMaximalFScore(0.0, 1.0, 0.1)``: 0.0, 0.1, ..., 0.9 and 0.9999999999999999.
The U-Net paper speaks of 10 levels; the script's loop visits these 11."""


def confusion_per_image(pred: Tensor, truth: Tensor, num_classes: int, ignore_index: int = -1) -> Tensor:
    """Confusion matrices ``(B, K, K)`` (rows truth, columns prediction) of class-index maps ``(B, H, W)``."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and truth {tuple(truth.shape)} differ in shape")
    b = pred.shape[0]
    valid = truth != ignore_index
    index = truth.clamp(min=0) * num_classes + pred
    index = index + (torch.arange(b, device=pred.device) * num_classes * num_classes).view(
        b, *[1] * (pred.dim() - 1)
    )
    counts = torch.bincount(index[valid], minlength=b * num_classes * num_classes)
    return counts.view(b, num_classes, num_classes)


def dice_iou_per_class(
    pred: Tensor, truth: Tensor, num_classes: int, ignore_index: int = -1
) -> tuple[Tensor, Tensor]:
    """Dice and IoU ``(B, K)`` of every class (background included) in every image; a class absent from
    both an image's prediction and its truth scores 1 there."""
    cm = confusion_per_image(pred, truth, num_classes, ignore_index).double()
    tp = torch.diagonal(cm, dim1=1, dim2=2)
    fp = cm.sum(1) - tp
    fn = cm.sum(2) - tp
    denom_dice = 2 * tp + fp + fn
    denom_iou = tp + fp + fn
    dice = torch.where(denom_dice > 0, 2 * tp / denom_dice.clamp(min=1e-12), torch.ones_like(tp))
    iou = torch.where(denom_iou > 0, tp / denom_iou.clamp(min=1e-12), torch.ones_like(tp))
    return dice, iou


def dice_iou_per_image(
    pred: Tensor, truth: Tensor, num_classes: int, ignore_index: int = -1
) -> tuple[Tensor, Tensor]:
    """Dice and IoU per image ``(B,)``, macro over the foreground classes 1..K-1."""
    dice, iou = dice_iou_per_class(pred, truth, num_classes, ignore_index)
    return _macro(dice), _macro(iou)


def _macro(per_class: Tensor) -> Tensor:
    """The macro figure ``(B,)`` of per-class figures ``(B, K)``: the mean over the foreground classes."""
    return per_class[:, 1:].mean(1)


PER_CLASS_METRICS = ("dice", "iou")
"""The figures reported per foreground class when a task has more than two classes."""

_UNSAFE = re.compile(r"[^a-z0-9]+")


def class_key_names(class_names: Sequence[str]) -> tuple[str, ...]:
    """The key suffix of each foreground class ``1 .. K-1`` of ``class_names`` (index = class): the name
    lower-cased, each run of characters other than ``a-z``, ``0-9`` turned into one ``_``, ``_`` stripped
    from both ends; ``class<k>`` when nothing is left (``"Disc"`` -> ``disc``, ``"left lung"`` ->
    ``left_lung``, ``"?"`` at index 3 -> ``class3``).

    Raises:
        ValueError: a name that is not a string, or two classes whose suffixes are the same (their
            figures would overwrite each other).
    """
    suffixes: dict[str, int] = {}
    out = []
    for k, name in enumerate(class_names):
        if not isinstance(name, str):
            raise ConfigError(f"class name {name!r} (class {k}) is not a string; name each class with text")
        if k == 0:  # the background has no per-class figures: its name names no key
            continue
        suffix = _UNSAFE.sub("_", name.lower()).strip("_") or f"class{k}"
        if suffix in suffixes:
            j = suffixes[suffix]
            raise ConfigError(
                f"class names {class_names[j]!r} (class {j}) and {name!r} (class {k}) both give the metric "
                f"key suffix {suffix!r}; rename one of them (keys keep a-z, 0-9 and '_' of the lower-cased "
                "name, and 'class<k>' when nothing is left)"
            )
        suffixes[suffix] = k
        out.append(suffix)
    return tuple(out)


def class_metric_keys(
    class_names: Sequence[str], *, metrics: Sequence[str] = PER_CLASS_METRICS
) -> tuple[str, ...]:
    """The per-class metric keys of a task with these classes (index = class): ``<metric>_<suffix>`` for
    each of ``metrics``, then each foreground class in class order (suffixes: :func:`class_key_names`),
    e.g. ``dice_disc, dice_square, iou_disc, iou_square``. Binary tasks have none: their one foreground
    class is the macro figure already.

    Raises:
        ValueError: a metric without per-class figures; class names as :func:`class_key_names` refuses.
    """
    unknown = [m for m in metrics if m not in PER_CLASS_METRICS]
    if unknown:
        raise ValueError(f"no per-class figures of {unknown}; choose among {list(PER_CLASS_METRICS)}")
    suffixes = class_key_names(class_names)
    if len(class_names) <= 2:
        return ()
    return tuple(f"{m}_{s}" for m in metrics for s in suffixes)


_CLASS_KEY = re.compile(rf"({'|'.join(PER_CLASS_METRICS)})_([a-z0-9]+(?:_[a-z0-9]+)*)")


def split_class_key(key: str) -> tuple[str, str] | None:
    """``(metric, class suffix)`` of a key that :func:`class_metric_keys` can name (``"dice_disc"`` ->
    ``("dice", "disc")``), else None: for reading records whose class names are not at hand."""
    found = _CLASS_KEY.fullmatch(key)
    return None if found is None else (found.group(1), found.group(2))


def misclassified_per_image(pred: Tensor, truth: Tensor, ignore_index: int = -1) -> Tensor:
    """``1 - accuracy`` per image ``(B,)`` over labelled pixels (the ``misclassified`` figure)."""
    valid = truth != ignore_index
    wrong = ((pred != truth) & valid).flatten(1).sum(1).double()
    return wrong / valid.flatten(1).sum(1).clamp(min=1).double()


def adapted_rand_error(truth_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """Adapted Rand error between two label images; truth label 0 is unlabelled and ignored.

    With ``n_ij`` the pixel counts of (truth region i, predicted region j) over pixels with truth > 0,
    ``a_i = sum_j n_ij``, ``b_j = sum_i n_ij``: precision ``= (sum n_ij^2 - N) / (sum b_j^2 - N)``,
    recall ``= (sum n_ij^2 - N) / (sum a_i^2 - N)``, error ``= 1 - 2PR / (P + R)``. Predicted label 0
    is a region like any other here.
    """
    t = truth_labels.ravel().astype(np.int64)
    p = pred_labels.ravel().astype(np.int64)
    keep = t > 0
    t, p = t[keep], p[keep]
    n = t.size
    if n == 0:
        return 0.0
    _, t_idx = np.unique(t, return_inverse=True)
    _, p_idx = np.unique(p, return_inverse=True)
    n_ij = _pair_counts(t_idx, p_idx).astype(np.float64)
    a = np.bincount(t_idx).astype(np.float64)
    b = np.bincount(p_idx).astype(np.float64)
    sum_ij = float(n_ij @ n_ij) - n
    sum_a = float(a @ a) - n
    sum_b = float(b @ b) - n
    if sum_ij == 0:  # only when every region is a single pixel: nothing agrees
        return 1.0
    precision, recall = sum_ij / sum_b, sum_ij / sum_a
    return 1.0 - 2 * precision * recall / (precision + recall)


def _pair_counts(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The pixel count of every (t, p) label pair that occurs, for 1-D non-negative label arrays."""
    if t.size == 0:
        return np.zeros(0, np.int64)
    width = int(p.max()) + 1
    key = t.astype(np.int64) * width + p
    if (int(t.max()) + 1) * width <= 1 << 20:  # a dense count is faster while the table is small
        counts = np.bincount(key)
        return counts[counts > 0]
    return np.unique(key, return_counts=True)[1]


def rand_error_cells(pred: np.ndarray, truth: np.ndarray, *, boundary_class: int = BOUNDARY_CLASS) -> float:
    """Adapted Rand error of the cell regions (the ``rand_error_argmax`` figure): connected components
    (4-connected) of everything that is not ``boundary_class``, in the prediction (class indices, e.g.
    the argmax) and in truth (ISBI: the membrane separates the cells)."""
    truth_cells, _ = ndimage.label(truth != boundary_class)
    pred_cells, _ = ndimage.label(pred != boundary_class)
    return adapted_rand_error(truth_cells, pred_cells)


# -- ISBI 2012 as the challenge scored it (sources and definitions: isbi_image_stats) -------------------


def thin_boundaries(cells: np.ndarray, seeds: np.ndarray | None = None) -> np.ndarray:
    """Segments of a binarised proposal ``(H, W)`` (True = cell) after the challenge's border thinning.

    The script (``RandError.getForegroundRestrictedRandAfterThinningStatsN2``) floods the inverted binary
    proposal with ``trainableSegmentation.utils.WatershedTransform2D`` (the classic watershed by flooding,
    Soille and Vincent 1990; 4-connected): every 4-connected cell component is a basin, and the membrane
    pixels are assigned in a first-in first-out flood from the cells, in the script's scan order (columns
    outer, rows inner; neighbours left, up, right, down). A membrane pixel takes the label of the already
    flooded pixels next to it when they agree, and becomes a dam (0) when they carry two labels or only
    dams. This reproduces that flood exactly (checked against a plain queue implementation in the tests),
    one breadth-first layer at a time. Without any cell pixel the lone plateau is one basin (all 1).

    Args:
        cells: the binarised proposal.
        seeds: ``ndimage.label(cells)[0]`` when the caller has it already.

    Returns:
        int32 labels ``(H, W)``: the cells' component labels (``ndimage.label`` numbering) grown over the
        membrane, 0 on the one-pixel dams between them.
    """
    if cells.ndim != 2:
        raise ValueError(f"thin_boundaries expects one (H, W) image, got shape {cells.shape}")
    h, w = cells.shape
    if not cells.any():
        return np.ones((h, w), np.int32)
    if seeds is None:
        seeds = ndimage.label(cells)[0]
    # the image inside a frame of pixels that are no basin (label 0) and never queued (order -1), so
    # that a pixel's neighbours lie at fixed offsets of its flat index
    width = w + 2
    if (h + 2) * width >= _NOT_QUEUED:
        raise ValueError(f"an image of {h}x{w} pixels is too large for the ISBI figures (int32 indices)")
    labels = np.zeros((h + 2, width), np.int32)
    labels[1:-1, 1:-1] = np.where(cells, seeds, _UNSET)
    labels = labels.ravel()
    order = np.full((h + 2, width), -1, np.int32)  # position in the flood's queue; cells -1
    order[1:-1, 1:-1][~cells] = _NOT_QUEUED
    order = order.ravel()
    offsets = np.array([[-1], [-width], [1], [width]], np.int32)  # the script's order: left, up, right, down
    owner = np.empty(order.size, np.int32)  # scratch for removing duplicates
    # the first layer, membrane next to a cell, in the script's scan order (x outer, y inner)
    touching = ndimage.binary_dilation(cells) & ~cells  # the default structure is the 4-neighbourhood
    x, y = np.divmod(np.flatnonzero(touching.T).astype(np.int32), np.int32(h))
    layer = (y + 1) * np.int32(width) + x + 1
    start = 0
    while layer.size:
        order[layer] = np.arange(start, start + layer.size, dtype=np.int32)
        around = layer + offsets
        around_order = order[around]
        _flood_layer(layer, around, around_order - np.int32(start), labels)
        # the next layer: the membrane not yet queued next to this one, queued as the script's FIFO
        # queues it: by the position of its first queued neighbour in this layer, then by direction
        reached = around[around_order == _NOT_QUEUED]
        ticket = np.arange(reached.size, dtype=np.int32)
        owner[reached] = ticket
        reached = reached[owner[reached] == ticket]  # each pixel once, whichever copy won
        position = order[reached + offsets] - np.int32(start)
        in_layer = position.view(np.uint32) < np.uint32(layer.size)
        key = np.where(in_layer, position * 4 + _SEEN_FROM, _NOT_QUEUED).min(0)
        slots = np.full(4 * layer.size, -1, np.int32)
        slots[key] = reached  # keys are distinct: one (neighbour, direction) reaches one pixel
        start += layer.size
        layer = slots[slots >= 0]
    return labels.reshape(h + 2, width)[1:-1, 1:-1].copy()


_UNSET = np.int32(-1)
_NOT_QUEUED = np.iinfo(np.int32).max
_NO_LABEL = np.iinfo(np.int32).max  # neutral element of the minimum over labels
# a pixel's neighbour in direction k (left, up, right, down) reaches it in direction (k + 2) % 4
_SEEN_FROM = np.array([[2], [3], [0], [1]], np.int32)


def _flood_layer(layer: np.ndarray, around: np.ndarray, position: np.ndarray, labels: np.ndarray) -> None:
    """Label one breadth-first layer of the flood (``layer`` in queue order; ``around`` its ``(4, k)``
    neighbours, ``position`` theirs in the queue relative to the layer's first pixel) in ``labels``.

    A pixel sees the neighbours flooded before it: those of earlier layers (final already) and those of
    its own layer queued before it. The latter can wait on each other, so the layer is resolved in
    rounds; a pixel is settled as soon as no pending neighbour can change its outcome, and the first
    unsettled pixel in the queue always can be, so every round settles at least one."""
    # this and later layers are still unset (-1): only cells and earlier layers count here
    settled = np.maximum(labels[around], 0)
    hi = settled.max(0)
    lo = np.where(settled > 0, settled, hi).min(0)  # the least label, 0 without any
    dam = lo < hi  # two labels
    out = np.where(dam, 0, lo)  # final unless a neighbour queued before in this layer objects
    same = position.view(np.uint32) < np.arange(layer.size, dtype=np.uint32)
    todo = np.flatnonzero(~dam & same.any(0))
    out[todo] = _UNSET
    pos = np.where(same[:, todo], position[:, todo], -1)
    own = lo[todo]
    while todo.size:
        value = np.where(pos >= 0, out[pos], 0)
        pending = value == _UNSET
        least = np.minimum(np.where(own > 0, own, _NO_LABEL), np.where(value > 0, value, _NO_LABEL).min(0))
        most = np.maximum(own, value.max(0))
        two = most > least
        # a pending neighbour whose one label from earlier layers is this one can only end with it or
        # as a dam: harmless
        harmless = (most > 0) & (~pending | (lo[np.where(pending, pos, 0)] == least)).all(0)
        done = two | ~pending.any(0) | harmless
        out[todo[done]] = np.where(two | (most <= 0), 0, least)[done]
        keep = ~done
        todo, pos, own = todo[keep], pos[:, keep], own[keep]
    labels[layer] = out


@dataclass(frozen=True)
class IsbiImageStats:
    """One image's challenge counts at each of ``thresholds`` (arrays of shape ``(T,)``).

    ``pixel_*``: cell pixels of truth and binarised proposal (true/false positives, false negatives).
    ``rand_*``: foreground-restricted Rand sums of the proposal's cells (not thinned) against the truth's,
    over ordered pixel pairs within the truth's cells: ``rand_ab = sum_ij n_ij^2 + n_0`` (pairs in one
    truth cell and one proposal segment, a proposal membrane pixel pairing only with itself), ``rand_a =
    sum_i a_i^2`` (pairs within a truth cell), ``rand_b = sum_j b_j^2 + n_0`` (within a proposal
    segment). ``vrand``, ``vinfo``: this image's V_Rand and V_Info F-scores after border thinning."""

    thresholds: tuple[float, ...]
    pixel_tp: np.ndarray
    pixel_fp: np.ndarray
    pixel_fn: np.ndarray
    rand_ab: np.ndarray
    rand_a: np.ndarray
    rand_b: np.ndarray
    vrand: np.ndarray
    vinfo: np.ndarray


def _xlogx(counts: np.ndarray) -> float:
    """``sum c log c`` over the counts (0 log 0 = 0)."""
    c = counts[counts > 0].astype(np.float64)
    return float(c @ np.log(c))


@dataclass(frozen=True)
class _TruthCells:
    """The truth's side of the Rand and information sums, the same at every threshold."""

    labels: np.ndarray  # cell label of each truth-cell pixel, 1-D
    sum_a: int  # sum of squared cell sizes
    alog_a: float  # sum of a log a over the cell sizes

    @classmethod
    def of(cls, labels: np.ndarray) -> _TruthCells:
        a = np.bincount(labels) if labels.size else np.zeros(1, np.int64)
        return cls(labels, int(a @ a), _xlogx(a))


def _rand_and_info(truth: _TruthCells, segments: np.ndarray) -> tuple[int, int, int, float]:
    """Foreground-restricted Rand sums ``(ab, a, b)`` and the information-theoretic F-score of
    ``segments`` (the proposal's labels at the truth-cell pixels; 0: membrane, one-pixel segments)."""
    n = truth.labels.size
    if n == 0:
        return 0, 0, 0, 1.0
    inside = segments > 0
    labels, segments = truth.labels[inside], segments[inside]
    n0 = n - segments.size
    b = np.bincount(segments)
    n_ij = _pair_counts(labels, segments)
    ab = int(n_ij @ n_ij) + n0
    sum_b = int(b @ b) + n0
    # entropies from counts, H = log n - sum c log c / n; a one-pixel segment adds 1 log 1 = 0
    log_n = np.log(n)
    h_truth = log_n - truth.alog_a / n
    h_seg = log_n - _xlogx(b) / n
    h_joint = log_n - _xlogx(n_ij) / n
    entropy = h_truth + h_seg
    if entropy <= 1e-12:  # one truth cell, one segment: the same partition (the script would say 0)
        return ab, truth.sum_a, sum_b, 1.0
    mutual = min(max(entropy - h_joint, 0.0), min(h_truth, h_seg))
    return ab, truth.sum_a, sum_b, 2 * mutual / entropy


def isbi_image_stats(
    cell_prob: np.ndarray,
    truth: np.ndarray,
    *,
    boundary_class: int = BOUNDARY_CLASS,
    ignore_index: int = -1,
    thresholds: Sequence[float] = ISBI_THRESHOLDS,
) -> IsbiImageStats:
    """The challenge's counts for one image at every threshold (see :class:`IsbiImageStats`).

    What the challenge computes, read in its own evaluation code: Trainable Weka Segmentation
    (github.com/fiji/Trainable_Segmentation, package ``trainableSegmentation.metrics``, by I.
    Arganda-Carreras), as the official Fiji scripts call it ("Segmentation evaluation after border
    thinning - Script" on the ImageJ wiki, linked from http://brainiac2.mit.edu/isbi_challenge/evaluation;
    Arganda-Carreras et al. 2015, "Crowdsourcing the creation of image segmentation algorithms for
    connectomics", Front. Neuroanat. 9:142). Per slice, the label image is binarised (white, cell, is the
    positive class) and the proposal binarised at each threshold (``prob > t`` is cell); the cells of both
    are their 4-connected components. The Rand and information scores keep only the pixels the truth
    marks as cell (its membrane is pruned out). The pixels the *proposal* marks as membrane (its label 0)
    inside the truth's cells are not one region: each is its own one-pixel segment (the ``sum(p_i0)/n``
    terms of ``RandError.getForegroundRestrictedRandIndexStatsN2`` and
    ``VariationOfInformation.foregroundRestrictedFscore``), so a thick proposed membrane counts as a split
    of every pixel in it, unless border thinning (:func:`thin_boundaries`, for V_Rand and V_Info) gives
    those pixels to the cells first. Sums run over ordered pixel pairs including each pixel with itself
    (the script's "N^2 normalisation"), unlike ``skimage.metrics.adapted_rand_error``, which drops the
    self-pairs and keeps a predicted label 0 as one region.

    Args:
        cell_prob: ``(H, W)`` probability that a pixel is cell interior (ISBI: ``softmax(logits)[0]``),
            the challenge's white-is-cell submission map; a pixel is cell where ``cell_prob > t``.
        truth: ``(H, W)`` class indices; cell = neither ``boundary_class`` nor ``ignore_index``.
            Unlabelled pixels count nowhere in the pixel counts and are not cell for the Rand figures.
    """
    prob = np.asarray(cell_prob, dtype=np.float64)
    truth = np.asarray(truth)
    if prob.shape != truth.shape or prob.ndim != 2:
        raise ValueError(f"cell_prob {prob.shape} and truth {truth.shape}: expected two (H, W) arrays")
    valid = (truth != ignore_index).ravel()
    truth_cell = truth != boundary_class
    truth_cell &= truth != ignore_index
    truth_cells, _ = ndimage.label(truth_cell)
    fg = truth_cells.ravel() > 0
    truth_fg = _TruthCells.of(truth_cells.ravel()[fg])
    n_truth_cell = truth_fg.labels.size
    cols: dict[str, list[float]] = {k: [] for k in ("tp", "fp", "fn", "ab", "a", "b", "vrand", "vinfo")}
    for t in thresholds:
        cells = prob > t
        flat = cells.ravel()
        tp = int((flat & fg).sum())
        cols["tp"].append(tp)
        cols["fp"].append(int((flat & valid).sum()) - tp)
        cols["fn"].append(n_truth_cell - tp)
        segments, _ = ndimage.label(cells)
        ab, a, b, _ = _rand_and_info(truth_fg, segments.ravel()[fg])
        cols["ab"].append(ab)
        cols["a"].append(a)
        cols["b"].append(b)
        thinned = thin_boundaries(cells, segments).ravel()[fg]
        thin_ab, thin_a, thin_b, vinfo = _rand_and_info(truth_fg, thinned)
        cols["vrand"].append(_f_score(thin_ab, thin_b - thin_ab, thin_a - thin_ab))
        cols["vinfo"].append(vinfo)
    arr = {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}
    return IsbiImageStats(
        thresholds=tuple(thresholds),
        pixel_tp=arr["tp"],
        pixel_fp=arr["fp"],
        pixel_fn=arr["fn"],
        rand_ab=arr["ab"],
        rand_a=arr["a"],
        rand_b=arr["b"],
        vrand=arr["vrand"],
        vinfo=arr["vinfo"],
    )


def _f_score(tp: float, fp: float, fn: float) -> float:
    """F-score as the script's ``ClassificationStatistics`` has it: precision 1 when nothing is predicted
    positive, recall 1 when nothing is positive; 0 when both are 0."""
    precision = tp / (tp + fp) if tp + fp > 0 else 1.0
    recall = tp / (tp + fn) if tp + fn > 0 else 1.0
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def isbi_challenge_scores(stats: Sequence[IsbiImageStats]) -> dict[str, float]:
    """The challenge's figures over a stack of images, each maximised over the shared thresholds.

    - ``pixel_error``: ``1 - max_t F`` of the cell pixels, true/false positives and negatives summed over
      the images (``PixelError.getPixelErrorMaximalFScore``).
    - ``rand_error``: ``1 - max_t F`` of the foreground-restricted Rand index of the (unthinned) cells,
      pair counts summed over the images (``RandError.getForegroundRestrictedRandIndexMaximalFScore``);
      the 2012 leaderboard's Rand error.
    - ``vrand``: ``max_t`` of the mean over images of V_Rand after thinning, the harmonic mean of Rand
      split and merge scores (``getMaximalVRandAfterThinning(..., perSliceAverage=true)``).
    - ``vinfo``: ``max_t`` of the mean over images of V_Info after thinning, ``2 I(S;T) / (H(S) + H(T))``
      (``getMaximalVInfoAfterThinning``).

    An image without truth cells has no pairs and scores 1 in the Rand and information figures; one whose
    truth cells and thinned proposal are both a single region scores V_Info 1 (the script: 0, as it
    divides by H(S) = 0). The script's loops keep the first best threshold; the maxima are the same.
    """
    if not stats:
        raise ValueError("no images were scored")
    thresholds = {s.thresholds for s in stats}
    if len(thresholds) != 1:
        raise ValueError(f"the images were scored at different thresholds: {sorted(thresholds)}")

    def total(key: str) -> np.ndarray:
        return np.sum([getattr(s, key) for s in stats], axis=0)

    tp, fp, fn = total("pixel_tp"), total("pixel_fp"), total("pixel_fn")
    ab, a, b = total("rand_ab"), total("rand_a"), total("rand_b")
    pixel_f = [_f_score(*v) for v in zip(tp, fp, fn, strict=True)]
    rand_f = [_f_score(x, y - x, z - x) for x, y, z in zip(ab, b, a, strict=True)]
    return {
        "pixel_error": 1.0 - float(max(pixel_f)),
        "rand_error": 1.0 - float(max(rand_f)),
        "vrand": float(total("vrand").max()) / len(stats),
        "vinfo": float(total("vinfo").max()) / len(stats),
    }


@dataclass
class MetricAccumulator:
    """Collects per-image scores batch by batch; the mean is over all images, none dropped.

    With more than two classes it also reports each foreground class's Dice and IoU under the keys of
    :func:`class_metric_keys` (``dice_<name>``, ``iou_<name>``), named after ``class_names`` (index =
    class; ``class<k>`` without them).

    With ``isbi`` (two classes, 0 cell, 1 membrane) it also keeps each image's challenge counts and
    reports ``pixel_error``, ``rand_error``, ``vrand``, ``vinfo`` (:func:`isbi_challenge_scores`) and
    ``rand_error_argmax``; :meth:`update` then needs the softmax probabilities."""

    num_classes: int
    isbi: bool = False
    class_names: Sequence[str] | None = field(default=None, kw_only=True)
    dice: list[float] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    # per image, the foreground classes' figures in class order (kept only with more than two classes)
    class_dice: list[list[float]] = field(default_factory=list)
    class_iou: list[list[float]] = field(default_factory=list)
    misclassified: list[float] = field(default_factory=list)
    rand_error_argmax: list[float] = field(default_factory=list)
    isbi_stats: list[IsbiImageStats] = field(default_factory=list)
    _class_dice_keys: tuple[str, ...] = field(init=False, repr=False, default=())
    _class_iou_keys: tuple[str, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        if self.isbi and self.num_classes != 2:
            raise ValueError(
                "the ISBI figures need two classes (0 cell, 1 membrane), got "
                f"num_classes={self.num_classes}; pass isbi=False for other datasets"
            )
        if self.class_names is None:
            self.class_names = tuple(f"class{k}" for k in range(self.num_classes))
        elif len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names={tuple(self.class_names)} names {len(self.class_names)} classes, but "
                f"num_classes={self.num_classes}; give one name per class, background (class 0) first"
            )
        self.class_names = tuple(self.class_names)
        # checked now: a clash of names fails before any image is predicted, not at compute()
        self._class_dice_keys = class_metric_keys(self.class_names, metrics=("dice",))
        self._class_iou_keys = class_metric_keys(self.class_names, metrics=("iou",))

    def update(self, pred: Tensor, truth: Tensor, *, probs: Tensor | None = None) -> None:
        """Add a batch of class-index predictions and truths ``(B, H, W)``; with ``isbi``, also the
        class probabilities ``probs`` ``(B, K, H, W)`` (``logits.softmax(1)``) of the same images."""
        pred, truth = pred.detach().cpu(), truth.detach().cpu()
        d, i = dice_iou_per_class(pred, truth, self.num_classes)
        # the macro figure of each image from its per-class figures: one confusion matrix for both
        self.dice += _macro(d).tolist()
        self.iou += _macro(i).tolist()
        if self._class_dice_keys:
            self.class_dice += d[:, 1:].tolist()
            self.class_iou += i[:, 1:].tolist()
        self.misclassified += misclassified_per_image(pred, truth).tolist()
        if not self.isbi:
            return
        if probs is None or probs.shape[0] != pred.shape[0] or probs.shape[2:] != pred.shape[1:]:
            got = None if probs is None else tuple(probs.shape)
            raise ValueError(
                f"isbi=True needs probs (B, K, H, W) for the {tuple(pred.shape)} predictions, got {got}: "
                "pass probs=logits.softmax(1)"
            )
        cell = probs.detach()[:, CELL_CLASS].float().cpu().numpy()
        for p, t, c in zip(pred.numpy(), truth.numpy(), cell, strict=True):
            self.rand_error_argmax.append(rand_error_cells(p, t))
            self.isbi_stats.append(isbi_image_stats(c, t))

    def compute(self) -> dict[str, float]:
        if not self.dice:
            raise ValueError("no images were scored")
        out = {
            "dice": float(np.mean(self.dice)),
            "iou": float(np.mean(self.iou)),
            "misclassified": float(np.mean(self.misclassified)),
        }
        if self._class_dice_keys:
            for keys, scores in (
                (self._class_dice_keys, self.class_dice),
                (self._class_iou_keys, self.class_iou),
            ):
                out.update(zip(keys, np.mean(scores, axis=0).tolist(), strict=True))
        if self.isbi:
            out.update(isbi_challenge_scores(self.isbi_stats))
            out["rand_error_argmax"] = float(np.mean(self.rand_error_argmax))
        return out

"""Segmentation quality metrics: one definition each, used by the harness, reports and weights.

Conventions (stated in every report):
- Dice and IoU are computed **per image** over the foreground classes (class 1 for binary tasks; the
  macro mean over classes 1..K-1 otherwise) and then averaged over images. An image whose prediction
  and truth are both empty for a class scores 1 for that class.
- Pixel error is ``1 - pixel accuracy`` per image, averaged over images.
- Rand error is the ISBI 2012 challenge's adapted Rand error, ``1 - F-score`` of the Rand index over
  pixel pairs, restricted to pixels that the truth labels as belonging to a region (the definition of
  ``skimage.metrics.adapted_rand_error``), computed on cell regions: the connected components of the
  non-membrane class in truth and prediction.
- Pixels labelled ``ignore_index`` (-1, unlabelled) count nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

__all__ = [
    "MetricAccumulator",
    "adapted_rand_error",
    "confusion_per_image",
    "dice_iou_per_image",
    "pixel_error_per_image",
    "rand_error_cells",
]

REDUCTION = "per-image, then mean over images (foreground classes, macro); both-empty scores 1"


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


def dice_iou_per_image(
    pred: Tensor, truth: Tensor, num_classes: int, ignore_index: int = -1
) -> tuple[Tensor, Tensor]:
    """Dice and IoU per image ``(B,)``, macro over the foreground classes 1..K-1."""
    cm = confusion_per_image(pred, truth, num_classes, ignore_index).double()
    tp = torch.diagonal(cm, dim1=1, dim2=2)
    fp = cm.sum(1) - tp
    fn = cm.sum(2) - tp
    denom_dice = 2 * tp + fp + fn
    denom_iou = tp + fp + fn
    dice = torch.where(denom_dice > 0, 2 * tp / denom_dice.clamp(min=1e-12), torch.ones_like(tp))
    iou = torch.where(denom_iou > 0, tp / denom_iou.clamp(min=1e-12), torch.ones_like(tp))
    return dice[:, 1:].mean(1), iou[:, 1:].mean(1)


def pixel_error_per_image(pred: Tensor, truth: Tensor, ignore_index: int = -1) -> Tensor:
    """``1 - accuracy`` per image ``(B,)`` over labelled pixels."""
    valid = truth != ignore_index
    wrong = ((pred != truth) & valid).flatten(1).sum(1).double()
    return wrong / valid.flatten(1).sum(1).clamp(min=1).double()


def adapted_rand_error(truth_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """Adapted Rand error between two label images; truth label 0 is unlabelled and ignored.

    With ``n_ij`` the pixel counts of (truth region i, predicted region j) over pixels with truth > 0,
    ``a_i = sum_j n_ij``, ``b_j = sum_i n_ij``: precision ``= (sum n_ij^2 - N) / (sum b_j^2 - N)``,
    recall ``= (sum n_ij^2 - N) / (sum a_i^2 - N)``, error ``= 1 - 2PR / (P + R)``.
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
    pairs = t_idx.astype(np.int64) * (int(p_idx.max()) + 1) + p_idx
    n_ij = np.bincount(pairs).astype(np.float64)
    a = np.bincount(t_idx).astype(np.float64)
    b = np.bincount(p_idx).astype(np.float64)
    sum_ij = float(n_ij @ n_ij) - n
    sum_a = float(a @ a) - n
    sum_b = float(b @ b) - n
    if sum_ij == 0:  # only when every region is a single pixel: nothing agrees
        return 1.0
    precision, recall = sum_ij / sum_b, sum_ij / sum_a
    return 1.0 - 2 * precision * recall / (precision + recall)


def rand_error_cells(pred: np.ndarray, truth: np.ndarray, *, boundary_class: int = 1) -> float:
    """Adapted Rand error of the cell regions: connected components (4-connected) of everything that is
    not ``boundary_class``, in prediction and in truth (ISBI: the membrane separates the cells)."""
    truth_cells, _ = ndimage.label(truth != boundary_class)
    pred_cells, _ = ndimage.label(pred != boundary_class)
    return adapted_rand_error(truth_cells, pred_cells)


@dataclass
class MetricAccumulator:
    """Collects per-image scores batch by batch; the mean is over all images, none dropped."""

    num_classes: int
    rand: bool = False
    dice: list[float] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    pixel_error: list[float] = field(default_factory=list)
    rand_error: list[float] = field(default_factory=list)

    def update(self, pred: Tensor, truth: Tensor) -> None:
        """Add a batch of class-index predictions and truths ``(B, H, W)``."""
        pred, truth = pred.detach().cpu(), truth.detach().cpu()
        d, i = dice_iou_per_image(pred, truth, self.num_classes)
        self.dice += d.tolist()
        self.iou += i.tolist()
        self.pixel_error += pixel_error_per_image(pred, truth).tolist()
        if self.rand:
            self.rand_error += [
                rand_error_cells(p.numpy(), t.numpy()) for p, t in zip(pred, truth, strict=True)
            ]

    def compute(self) -> dict[str, float]:
        if not self.dice:
            raise ValueError("no images were scored")
        out = {
            "dice": float(np.mean(self.dice)),
            "iou": float(np.mean(self.iou)),
            "pixel_error": float(np.mean(self.pixel_error)),
        }
        if self.rand:
            out["rand_error"] = float(np.mean(self.rand_error))
        return out

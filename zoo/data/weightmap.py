"""The paper's loss-weight map for separating touching objects (Ronneberger et al. 2015, eq. 2).

``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))``

with ``w_c`` balancing the class frequencies, and ``d1``, ``d2`` the distances to the border of the
nearest and the second-nearest object (for ISBI the objects are the cells, and the thin membrane
between two touching cells gets the large weight). The paper uses ``w0 = 10`` and ``sigma = 5`` px.

The border term is applied to the pixels between objects (the separating class), as in the paper's
figure 3d. Distances are computed in a window of ``4 * sigma`` around each object; a farther object
would add less than ``w0 * exp(-8)`` (0.003 for w0 = 10), so it is left out.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["unet_weight_map"]


def unet_weight_map(
    mask: np.ndarray, *, object_class: int = 0, w0: float = 10.0, sigma: float = 5.0, balance: bool = True
) -> np.ndarray:
    """Weight map ``(H, W)`` float32 for a mask of class indices ``(H, W)``.

    Args:
        mask: class indices; pixels equal to ``object_class`` form the objects (connected components).
        object_class: the class whose connected components are the objects (ISBI: 0, the cells).
        w0, sigma: the border term's height and width (paper: 10, 5).
        balance: add ``w_c``, inverse class frequencies normalised to mean 1; else ``w_c = 1``.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    objects, _ = ndimage.label(mask == object_class)
    h, w = mask.shape
    d1 = np.full((h, w), np.inf)
    d2 = np.full((h, w), np.inf)
    margin = math.ceil(4 * sigma)
    for k, sl in enumerate(ndimage.find_objects(objects), start=1):
        if sl is None:
            continue
        y0, y1 = max(sl[0].start - margin, 0), min(sl[0].stop + margin, h)
        x0, x1 = max(sl[1].start - margin, 0), min(sl[1].stop + margin, w)
        window = objects[y0:y1, x0:x1] == k
        dist = ndimage.distance_transform_edt(~window)
        a, b = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]
        np.minimum(b, np.maximum(a, dist), out=b)
        np.minimum(a, dist, out=a)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))  # inf distances give 0
    border[mask == object_class] = 0.0
    if balance:
        classes, counts = np.unique(mask, return_counts=True)
        per_class = mask.size / (len(classes) * counts)  # mean weight over the image is 1
        wc = per_class[np.searchsorted(classes, mask)]
    else:
        wc = np.ones((h, w))
    return (wc + border).astype(np.float32)

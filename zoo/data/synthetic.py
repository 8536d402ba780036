"""Synthetic twins of the real datasets, written in the real on-disk formats.

They let the same loaders, harness and tests run on a machine without the real data. Both are
deterministic by seed and deliberately not trivial: EM slices carry dark organelles that are not
membrane, membranes that fade, blur and noise; car scenes include pale cars on pale studio backgrounds
and a floor shadow that is not car.

- :func:`write_em_twin`: ISBI 2012 PNG layout (``train/image``, ``train/label`` with 0 = membrane,
  255 = cell; ``test/``), consecutive slices drawn from one slowly changing volume.
- :func:`write_car_twin`: Carvana Kaggle layout (``train/<car>_<NN>.jpg``, ``train_masks/<car>_<NN>_mask.gif``
  with values {0, 1}), 16 views per car.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import cKDTree

from zoo.data.folder import FolderSpec, PairingRule
from zoo.data.io import write_image

__all__ = ["Car", "car_scene", "em_volume", "write_car_twin", "write_em_twin", "write_shapes_twin"]


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth random field scaled to [-1, 1]."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return f / (np.abs(f).max() + 1e-12)


# -- EM-like -----------------------------------------------------------------------------------------
def em_volume(n_slices: int, *, size: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stack of EM-like slices and their labels: ``(N, size, size)`` uint8 each; labels 0 = membrane,
    255 = cell interior (the ISBI convention). Consecutive slices are neighbours in one volume."""
    rng = np.random.default_rng(seed)
    # structures keep their size in pixels at any slice size (a smaller slice is a smaller field of view)
    density = (size / 512) ** 2
    n_cells = int(rng.integers(70, 120) * density) + 3
    seeds = rng.uniform(0, size, (n_cells, 2))
    warp_y = _smooth_field(rng, (size, size), 22)
    warp_x = _smooth_field(rng, (size, size), 22)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    images, labels = [], []
    for _ in range(n_slices):
        # the volume changes slowly from slice to slice: cells drift, the warp evolves
        seeds = np.clip(seeds + rng.normal(0, 2.5, seeds.shape), 0, size - 1)
        warp_y = 0.85 * warp_y + 0.15 * _smooth_field(rng, (size, size), 22)
        warp_x = 0.85 * warp_x + 0.15 * _smooth_field(rng, (size, size), 22)
        image, label = _em_slice(rng, seeds, yy + 30 * warp_y, xx + 30 * warp_x, size)
        images.append(image)
        labels.append(label)
    return np.stack(images), np.stack(labels)


def _em_slice(
    rng: np.random.Generator, seeds: np.ndarray, wy: np.ndarray, wx: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    density = (size / 512) ** 2
    _, cell = cKDTree(seeds).query(np.stack([wy.ravel(), wx.ravel()], 1))
    cell = cell.reshape(size, size)
    edge = np.zeros((size, size), dtype=bool)
    edge[:-1, :] |= cell[:-1, :] != cell[1:, :]
    edge[:, :-1] |= cell[:, :-1] != cell[:, 1:]
    dist = ndimage.distance_transform_edt(~edge)
    thickness = 1.2 + 1.3 * (_smooth_field(rng, (size, size), 25) + 1)
    membrane = dist < thickness

    # cell interiors: a gray level per cell plus fine texture
    levels = rng.uniform(0.58, 0.75, size=int(seeds.shape[0]))
    texture = np.zeros((size, size))
    for amplitude, sigma in ((0.5, 1.0), (1.2, 3.0), (2.0, 8.0)):  # grain, blobs, shading
        texture += amplitude * ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    img = levels[cell] + 0.05 * texture / texture.std()
    # membranes are dark, but their contrast fades in places (as in real sections)
    contrast = np.clip(0.75 + 0.5 * _smooth_field(rng, (size, size), 30), 0.25, 1.0)
    img = np.where(membrane, img - contrast * (img - rng.uniform(0.12, 0.25)), img)
    # organelles: dark blobs inside cells that are not membrane; the hard negatives
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(40, 70) * density) + 2):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(2.5, 14, 2)
        shade = int(rng.integers(150, 230))
        if rng.random() < 0.35:  # vesicle: a dark ring
            draw.ellipse([cx - rx, cy - rx, cx + rx, cy + rx], outline=shade, width=1)
        else:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=shade)
    blobs = np.asarray(canvas, dtype=np.float64) / 255.0
    blobs[membrane] = 0.0  # the label decides: a blob on a membrane is still membrane
    img = img * (1 - 0.75 * blobs)
    img = ndimage.gaussian_filter(img, rng.uniform(0.8, 1.4))
    img = img + rng.normal(0, rng.uniform(0.03, 0.06), img.shape)
    image = np.clip(img * 255, 0, 255).round().astype(np.uint8)
    label = np.where(membrane, 0, 255).astype(np.uint8)
    return image, label


def write_em_twin(out: str | Path, *, count: int = 30, seed: int = 0, size: int = 512) -> Path:
    """Write an ISBI-2012-layout twin: ``count`` labelled training slices and ``count`` test slices."""
    root = Path(out)
    images, labels = em_volume(2 * count, size=size, seed=seed)
    for i in range(count):
        write_image(root / "train" / "image" / f"{i}.png", images[i])
        write_image(root / "train" / "label" / f"{i}.png", labels[i])
        write_image(root / "test" / f"{i}.png", images[count + i])
    return root


# -- car-like ----------------------------------------------------------------------------------------
_PAINTS = [
    (235, 235, 238), (200, 202, 206), (150, 152, 158), (25, 25, 30), (160, 20, 25),
    (20, 50, 140), (30, 90, 60), (230, 200, 60), (120, 70, 40), (245, 245, 245),
]  # fmt: skip


@dataclass(frozen=True)
class Car:
    """One car's look, shared by its 16 views (sizes are fractions of the image)."""

    length: float
    floor: float
    body: float
    cabin: float
    paint: int
    tint: tuple[float, ...]


def car_scene(
    rng: np.random.Generator, angle: int, car: Car, *, height: int = 320, width: int = 480
) -> tuple[np.ndarray, np.ndarray]:
    """One studio photo of a car from view ``angle`` (1..16): RGB uint8 ``(H, W, 3)`` and mask {0, 1}."""
    h, w = height, width
    theta = 2 * math.pi * (angle - 1) / 16
    side = abs(math.sin(theta))  # 1 = side view (long), 0 = front/back view (short)
    length = w * car.length * (0.45 + 0.55 * side)
    cx = w / 2 + rng.normal(0, 0.02 * w)
    floor_y = h * car.floor
    body_h = h * car.body
    cabin_h = h * car.cabin
    x0, x1 = cx - length / 2, cx + length / 2
    wheel_r = body_h * 0.55
    y_body_bottom = floor_y - wheel_r * 0.6
    y_body_top = y_body_bottom - body_h
    lean = (1 if math.cos(theta) >= 0 else -1) * length * 0.12 * side  # cabin sits off-centre from the side

    mask_im = Image.new("L", (w, h), 0)
    md = ImageDraw.Draw(mask_im)
    md.rounded_rectangle([x0, y_body_top, x1, y_body_bottom], radius=body_h * 0.35, fill=1)
    cab_w0 = length * (0.62 - 0.1 * side)
    cab_w1 = cab_w0 * 0.62
    cabin = [
        (cx + lean - cab_w0 / 2, y_body_top + 2),
        (cx + lean + cab_w0 / 2, y_body_top + 2),
        (cx + lean + cab_w1 / 2, y_body_top - cabin_h),
        (cx + lean - cab_w1 / 2, y_body_top - cabin_h),
    ]
    md.polygon(cabin, fill=1)
    wheel_xs = (
        [x0 + length * 0.2, x1 - length * 0.2] if side > 0.3 else [x0 + length * 0.15, x1 - length * 0.15]
    )
    for wx in wheel_xs:
        md.ellipse([wx - wheel_r, floor_y - 2 * wheel_r, wx + wheel_r, floor_y], fill=1)
    mask = np.asarray(mask_im, dtype=np.uint8)

    # studio: a bright gradient backdrop, a slightly darker floor, a soft shadow under the car
    ys = np.linspace(0, 1, h)[:, None, None]
    tint = np.array(car.tint)[None, None, :]
    backdrop = (0.93 - 0.08 * ys) * tint
    floor = ys * h >= floor_y - 0.02 * h
    img = np.where(floor, backdrop * 0.9, backdrop) * np.ones((h, w, 3))
    shadow = np.zeros((h, w))
    sy, sx = np.mgrid[0:h, 0:w]
    shadow[((sx - cx) / (length * 0.62)) ** 2 + ((sy - floor_y) / (0.05 * h)) ** 2 < 1] = 1.0
    shadow = ndimage.gaussian_filter(shadow, 0.02 * w)
    img = img * (1 - 0.55 * shadow[..., None])

    paint = np.array(_PAINTS[car.paint]) / 255.0
    shade = 0.85 + 0.25 * (1 - (sy - y_body_top) / max(body_h + cabin_h, 1))  # lit from above
    body_rgb = np.clip(paint[None, None, :] * shade[..., None], 0, 1)
    img = np.where(mask[..., None] == 1, body_rgb, img)
    # windows (dark glass) and wheels (tyre, rim) are part of the car
    win_im = Image.new("L", (w, h), 0)
    wd = ImageDraw.Draw(win_im)
    inset = 0.18
    wd.polygon(
        [
            (cabin[0][0] + cab_w0 * inset / 2, cabin[0][1] - 3),
            (cabin[1][0] - cab_w0 * inset / 2, cabin[1][1] - 3),
            (cabin[2][0] - cab_w1 * inset / 2, cabin[2][1] + cabin_h * 0.15),
            (cabin[3][0] + cab_w1 * inset / 2, cabin[3][1] + cabin_h * 0.15),
        ],
        fill=1,
    )
    for wx in wheel_xs:
        wd.ellipse([wx - wheel_r, floor_y - 2 * wheel_r, wx + wheel_r, floor_y], fill=2)
        wd.ellipse(
            [wx - wheel_r * 0.5, floor_y - wheel_r * 1.5, wx + wheel_r * 0.5, floor_y - wheel_r * 0.5], fill=3
        )
    parts = np.asarray(win_im)
    img = np.where((parts == 1)[..., None], np.array([0.18, 0.22, 0.28]) + 0.1 * shade[..., None] * 0.3, img)
    img = np.where((parts == 2)[..., None], np.array([0.07, 0.07, 0.08]), img)
    img = np.where((parts == 3)[..., None], np.array([0.6, 0.6, 0.62]), img)
    # a faint mirror image of the car on the glossy floor: looks like car, is not car
    fy = int(floor_y)
    depth = min(h - fy, fy)
    if depth > 0:
        mirrored = img[fy - depth : fy][::-1]
        car_above = mask[fy - depth : fy][::-1, :, None].astype(bool)
        img[fy : fy + depth] = np.where(
            car_above, 0.8 * img[fy : fy + depth] + 0.2 * mirrored, img[fy : fy + depth]
        )
    img[max(fy - 1, 0) : fy + 1] *= 0.93  # where wall meets floor
    img = ndimage.gaussian_filter(img, (0.8, 0.8, 0))
    img = img + rng.normal(0, 0.015, img.shape)
    return np.clip(img * 255, 0, 255).round().astype(np.uint8), mask


def write_car_twin(
    out: str | Path, *, count: int = 96, seed: int = 0, height: int = 320, width: int = 480
) -> Path:
    """Write a Carvana-layout twin of ``count`` images: cars of 16 views each (the last may have fewer)."""
    root = Path(out)
    rng = np.random.default_rng(seed)
    n_cars = math.ceil(count / 16)
    written = 0
    for _ in range(n_cars):
        car_id = "".join(rng.choice(list("0123456789abcdef"), 12))
        car = Car(
            length=rng.uniform(0.72, 0.9),
            floor=rng.uniform(0.8, 0.88),
            body=rng.uniform(0.2, 0.26),
            cabin=rng.uniform(0.13, 0.18),
            paint=int(rng.integers(len(_PAINTS))),
            tint=tuple(rng.uniform(0.94, 1.0, 3).tolist()),
        )
        for angle in range(1, 17):
            if written == count:
                break
            image, mask = car_scene(rng, angle, car, height=height, width=width)
            name = f"{car_id}_{angle:02d}"
            write_image(root / "train" / f"{name}.jpg", image, quality=90)
            write_image(root / "train_masks" / f"{name}_mask.gif", mask, palette_mask=True)
            written += 1
    return root


# -- multi-class shapes: a user's folder dataset -----------------------------------------------------------
_SHAPE_CLASSES = (("background", 0), ("disc", 1), ("square", 2), ("triangle", 3))


def write_shapes_twin(out: str | Path, *, count: int = 12, size: int = 96, seed: int = 0) -> Path:
    """Write a 4-class folder dataset and its ``dataset.toml``; return the TOML's path.

    ``images/shape_NNN.png`` are RGB: discs, squares and triangles on a textured background;
    ``masks/shape_NNN_mask.png`` are 8-bit with 0 = background, 1 = disc, 2 = square, 3 = triangle
    (a later shape covers an earlier one in both). Each kind has its own hue, jittered, so a model
    learns something in seconds; the outline still matters where hues come close.
    """
    root = Path(out)
    rng = np.random.default_rng(seed)
    hues = np.array([[0.85, 0.3, 0.25], [0.25, 0.7, 0.3], [0.3, 0.35, 0.85]])  # disc, square, triangle
    for i in range(count):
        background = 0.45 + 0.12 * _smooth_field(rng, (size, size), size / 12)[..., None]
        img = background * rng.uniform(0.8, 1.0, 3)
        mask_im = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask_im)
        for _ in range(int(rng.integers(2, 5))):
            kind = int(rng.integers(1, 4))
            r = rng.uniform(0.08, 0.18) * size
            cx, cy = rng.uniform(r, size - r, 2)
            if kind == 1:
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=kind)
            elif kind == 2:
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=kind)
            else:
                draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=kind)
        mask = np.asarray(mask_im)
        colours = np.clip(hues + rng.normal(0, 0.06, hues.shape), 0, 1)
        img = np.where(mask[..., None] > 0, colours[np.maximum(mask, 1) - 1], img)
        img = img + rng.normal(0, 0.03, img.shape)
        write_image(
            root / "images" / f"shape_{i:03d}.png", np.clip(img * 255, 0, 255).round().astype(np.uint8)
        )
        write_image(root / "masks" / f"shape_{i:03d}_mask.png", mask)
    spec = FolderSpec(
        name="shapes",
        images=root / "images",
        masks=root / "masks",
        classes=_SHAPE_CLASSES,
        pairing=PairingRule("suffix", suffix="_mask"),
        channels=3,
    )
    toml = root / "dataset.toml"
    toml.write_text(spec.to_toml(relative_to=root))
    return toml

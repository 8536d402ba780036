"""Reading and writing images, masks and multi-page TIFF stacks, with errors that name the file.

Pillow does the decoding (it ships with torchvision); every failure becomes a :class:`DataError` that
says which file, what is wrong with it, and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageSequence

__all__ = [
    "DataError",
    "ImageInfo",
    "SixteenBit",
    "image_info",
    "read_image",
    "read_stack",
    "write_image",
    "write_stack",
]


class DataError(ValueError):
    """A data file or folder that cannot be used as it is; the message names the file and the fix."""


SixteenBit = Literal["reject", "scale", "keep"]
"""What :func:`read_image` does with 16-bit gray pixels: refuse them, scale them to 8 bits, or keep them."""

# Pillow's modes for 16-bit gray (TIFF, PNG) and the 32-bit integer mode some 16-bit files decode to
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says, read without decoding the pixels."""

    mode: str
    width: int
    height: int
    pages: int


def image_info(path: str | Path) -> ImageInfo:
    """Pillow mode, size and page count (> 1 for a multi-page TIFF) of an image file, decoding no pixels.

    Raises:
        DataError: missing or unreadable file.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found; check the path")
    try:
        with Image.open(p) as im:
            return ImageInfo(im.mode, im.width, im.height, int(getattr(im, "n_frames", 1)))
    except Exception as err:  # Pillow signals corrupt files with many types (OSError, KeyError, TypeError...)
        raise DataError(
            f"{p}: cannot read the image header ({err}); the file is corrupted: replace it"
        ) from err


def read_image(
    path: str | Path, *, mode: str | None = None, page: int = 0, sixteen_bit: SixteenBit = "reject"
) -> np.ndarray:
    """Decode one image to a uint8 array, ``(H, W)`` for gray or palette, ``(H, W, 3)`` for colour.

    Args:
        path: PNG, JPEG, GIF, BMP or TIFF.
        mode: convert to this Pillow mode ("L", "RGB"); None keeps gray/palette as indices, colour as RGB.
        page: the page of a multi-page TIFF (0: the first, or only, one).
        sixteen_bit: 16-bit gray pixels (Pillow modes I;16 and I) are "reject"ed with a DataError (so they
            are never clipped unnoticed), "scale"d to 8 bits by the full 16-bit range (v * 255 / 65535,
            rounded) before ``mode`` applies, as images want, or kept exact as uint16 ("keep", with
            ``mode=None``), as masks want: their values are class labels.

    Raises:
        DataError: missing, unreadable, truncated or corrupted file; a missing page; 16-bit pixels when
            refused, or values beyond 16 bits.
    """
    p = Path(path)
    if sixteen_bit == "keep" and mode is not None:
        raise ValueError(f"sixteen_bit='keep' returns the file's values: use mode=None, not {mode!r}")
    if not p.is_file():
        raise DataError(f"{p}: file not found; check the path or re-download the dataset")
    try:
        with Image.open(p) as opened:
            pages = int(getattr(opened, "n_frames", 1))
            if not 0 <= page < pages:
                raise DataError(f"{p}: has {pages} page(s), so no page {page}")
            if page:
                opened.seek(page)
            opened.load()  # force the full decode now: truncation shows here, not later
            im: Image.Image = opened
            if im.mode in _WIDE_MODES:
                if sixteen_bit == "reject":
                    raise DataError(
                        f"{p}: 16-bit pixels (mode {im.mode}) where 8-bit ones are expected; convert the "
                        "file to 8-bit"
                    )
                wide = _sixteen_bits(p, np.array(im))
                if sixteen_bit == "keep":
                    return wide
                # rounded v * 255 / 65535, in integers: exact, and 65535 maps to 255
                im = Image.fromarray(((wide.astype(np.uint32) * 510 + 65535) // 131070).astype(np.uint8))
            if mode is not None:
                im = im.convert(mode)
            elif im.mode not in ("L", "P", "RGB", "1"):
                im = im.convert("RGB")
            arr = np.array(im)  # a writable copy (torch.from_numpy needs one)
    except DataError:
        raise
    except Exception as err:  # Pillow signals corrupt files with many types (OSError, KeyError, TypeError...)
        raise DataError(
            f"{p}: cannot decode image ({err}); the file is corrupted or truncated: replace it with a good "
            "copy (re-download or re-extract the dataset)"
        ) from err
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype != np.uint8:
        raise DataError(f"{p}: expected 8-bit pixels, got {arr.dtype}; convert the image to 8-bit")
    return arr


def _sixteen_bits(path: Path, values: np.ndarray) -> np.ndarray:
    """``values`` as uint16, or a DataError when a 32-bit integer file holds values beyond 16 bits."""
    if values.dtype != np.uint16 and values.size and (values.min() < 0 or values.max() > 65535):
        raise DataError(
            f"{path}: pixel values span {values.min()}..{values.max()}, beyond 16 bits; save the file as "
            "8- or 16-bit"
        )
    return values.astype(np.uint16)


def read_stack(path: str | Path) -> np.ndarray:
    """Decode a multi-page TIFF (e.g. the ISBI challenge's ``train-volume.tif``) to ``(N, H, W)`` uint8.

    Raises:
        DataError: missing, unreadable or truncated file, or pages of different sizes.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found; check the path or re-download the dataset")
    pages: list[np.ndarray] = []
    try:
        with Image.open(p) as im:
            for page in ImageSequence.Iterator(im):
                page.load()
                pages.append(np.asarray(page.convert("L") if page.mode not in ("L", "P") else page).copy())
    except Exception as err:  # Pillow signals corrupt files with many types (OSError, KeyError, TypeError...)
        raise DataError(
            f"{p}: cannot decode TIFF stack after {len(pages)} page(s) ({err}); the file is corrupted or "
            "truncated: replace it with a good copy"
        ) from err
    if not pages:
        raise DataError(f"{p}: the TIFF stack has no pages")
    shapes = {a.shape for a in pages}
    if len(shapes) > 1:
        raise DataError(f"{p}: pages differ in size {sorted(shapes)}; a stack needs equal-sized slices")
    return np.stack(pages)


def write_image(
    path: str | Path, array: np.ndarray, *, palette_mask: bool = False, quality: int = 95
) -> None:
    """Write a uint8 array; the format follows the suffix. ``palette_mask`` writes a palette GIF/PNG
    whose pixel values are the array's values (Carvana's mask format)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if palette_mask:
        a = np.ascontiguousarray(array, dtype=np.uint8)
        im = Image.frombytes("P", (a.shape[1], a.shape[0]), a.tobytes())
        # identity palette: index i is gray i, so reading the indices gives the values back
        im.putpalette([v for i in range(256) for v in (i, i, i)])
        im.save(p, optimize=False)  # an optimised palette would renumber the indices, i.e. the classes
        return
    im = Image.fromarray(array)
    if p.suffix.lower() in (".jpg", ".jpeg"):
        im.save(p, quality=quality)
    else:
        im.save(p)


def write_stack(path: str | Path, slices: Sequence[np.ndarray] | np.ndarray) -> None:
    """Write 2-D uint8 slices as one multi-page TIFF (the ISBI challenge's distribution format)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(np.asarray(s, dtype=np.uint8)) for s in slices]
    if not images:
        raise ValueError("write_stack needs at least one slice")
    images[0].save(p, save_all=True, append_images=images[1:], compression="raw")

"""Reading and writing images, masks and multi-page TIFF stacks, with errors that name the file.

Pillow does the decoding (it ships with torchvision); every failure becomes a :class:`DataError` that
says which file, what is wrong with it, and what to do. Two failures Pillow lets through are caught here:

- A PNG whose compressed data ends (cleanly) before the rows its header promises: Pillow fills the missing
  rows with zeros and says nothing; :func:`read_image` counts the rows and refuses the file as truncated.
- A file whose header promises a huge image (a "decompression bomb": a few bytes that decode to
  gigabytes): refused before any pixel is decoded when it has more than :func:`max_pixels` pixels
  (``16384 x 16384`` unless the environment variable ``UNET_ZOO_MAX_PIXELS`` raises it). This limit
  replaces Pillow's own (``Image.MAX_IMAGE_PIXELS``, 89 Mpx), which is raised to it where it is lower.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageSequence

from zoo.errors import ConfigError, ZooError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "WIDE_MODES",
    "DataError",
    "ImageInfo",
    "SixteenBit",
    "image_info",
    "max_pixels",
    "read_image",
    "read_pages",
    "read_stack",
    "write_image",
    "write_stack",
]


class DataError(ZooError, ValueError):
    """A data file or folder that cannot be used as it is; the message names the file and the fix."""


SixteenBit = Literal["reject", "scale", "keep"]
"""What :func:`read_image` does with 16-bit gray pixels: refuse them, scale them to 8 bits, or keep them."""

MAX_PIXELS_ENV = "UNET_ZOO_MAX_PIXELS"
"""The environment variable that raises (or lowers) :func:`max_pixels`."""

DEFAULT_MAX_PIXELS = 16384 * 16384
"""The most pixels (width x height) an image may have unless ``UNET_ZOO_MAX_PIXELS`` says otherwise: about
268 Mpx, 0.8 GB as RGB bytes (a whole-slide scan needs more: raise it for files you trust)."""

WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
"""Pillow's modes for 16-bit gray (TIFF, PNG) and the 32-bit integer mode some 16-bit files decode to."""


def max_pixels() -> int:
    """The pixel limit of one image (page): ``UNET_ZOO_MAX_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        ConfigError: ``UNET_ZOO_MAX_PIXELS`` is not a positive whole number.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(
            f"{MAX_PIXELS_ENV}={text!r} is not a positive whole number of pixels; set it to e.g. "
            f"{DEFAULT_MAX_PIXELS} (the default), or unset it"
        )
    return value


def _too_large(path: Path, width: int, height: int, limit: int) -> DataError:
    return DataError(
        f"{path}: {width}x{height} = {width * height:,} pixels is above the limit of {limit:,} that "
        "guards against decompression bombs (a small file that decodes to "
        f"gigabytes); if you trust the file, raise the limit: {MAX_PIXELS_ENV}={width * height} (an "
        "environment variable)"
    )


@contextlib.contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` under this module's pixel limit, checked on the header before any pixel is decoded.

    Raises:
        DataError: an image above the limit; other errors are Pillow's, for the caller to word.
    """
    limit = max_pixels()
    guard = Image.MAX_IMAGE_PIXELS
    if guard is not None and guard < limit:
        # Pillow warns above its limit and refuses above twice it, in open() and again while decoding
        # some formats; ours is the one the user sets, so Pillow's is raised to it (only ever raised:
        # threads that do this at once agree)
        Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():  # Pillow's warning above its limit: refused below, or allowed
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except Image.DecompressionBombError as err:
        raise DataError(
            f"{path}: the image is above the pixel limit ({err}); if you trust the file, raise the limit "
            f"with the environment variable {MAX_PIXELS_ENV} (now {limit})"
        ) from err
    with opened as im:
        if im.width * im.height > limit:
            raise _too_large(path, im.width, im.height, limit)
        yield im


def _unreadable(path: Path, err: Exception) -> DataError | None:
    """The error for a file the operating system will not let us read, or for one cut short; None for
    anything else (the caller words it as corruption)."""
    if isinstance(err, PermissionError):
        return DataError(f"{path}: permission denied ({err.strerror}); make the file readable (chmod a+r)")
    if "truncated" in str(err):
        return _truncated(path, f"Pillow says {err!s}")
    return None


def _truncated(path: Path, detail: str) -> DataError:
    return DataError(
        f"{path}: truncated: {detail}; the file was cut short (an interrupted copy, download or export): "
        "re-export or re-download it"
    )


# PNG colour type -> samples per pixel (gray, RGB, palette, gray + alpha, RGBA)
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 interlacing: (first row, first column, row step, column step) of each of the 7 passes
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))


def _check_png_rows(path: Path) -> None:
    """Refuse a PNG whose image data holds fewer rows than its header promises.

    Pillow stops quietly where the compressed stream ends and leaves the missing rows black, so the rows
    are counted here: the decompressed length of the IDAT chunks against the header's (a filter byte
    plus the packed pixels per row, per interlacing pass).
    """
    data = path.read_bytes()
    pos, chunks, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IHDR":
            header = data[pos + 8 : pos + 8 + 13]
        elif kind == b"IDAT":
            chunks.append(memoryview(data)[pos + 8 : pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or len(header) < 13:
        return  # Pillow decoded it: nothing here to count against
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    bits = depth * _PNG_SAMPLES.get(colour, 1)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    row_lengths = []
    for row0, col0, row_step, col_step in passes:
        rows, cols = -(-(height - row0) // row_step), -(-(width - col0) // col_step)
        if rows > 0 and cols > 0:
            row_lengths.append((rows, 1 + (cols * bits + 7) // 8))
    expected = sum(rows * n for rows, n in row_lengths)
    inflate, got = zlib.decompressobj(), 0
    try:
        for chunk in chunks:
            pending = bytes(chunk)
            while pending and got < expected:
                got += len(inflate.decompress(pending, 1 << 20))  # bounded: never the whole image at once
                pending = inflate.unconsumed_tail
            if got >= expected or inflate.eof:
                break
    except zlib.error as err:
        raise DataError(f"{path}: corrupted PNG data ({err}); replace it with a good copy") from err
    if got < expected:
        if not interlace:
            held = got // row_lengths[0][1]
            detail = f"its header promises {height} rows of {width} pixels, the file holds {held}"
        else:
            detail = f"the file holds {100 * got // expected}% of the {width}x{height} (interlaced) image"
        raise _truncated(path, detail)


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
        DataError: missing or unreadable file, or one above the pixel limit (:func:`max_pixels`).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found; check the path")
    try:
        with _open(p) as im:
            return ImageInfo(im.mode, im.width, im.height, int(getattr(im, "n_frames", 1)))
    except ZooError:
        raise
    except Exception as err:  # Pillow signals corrupt files with many types (OSError, KeyError, TypeError...)
        if (said := _unreadable(p, err)) is not None:
            raise said from err
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
        DataError: missing, unreadable, truncated or corrupted file; a missing page; an image above the
            pixel limit (:func:`max_pixels`); 16-bit pixels when refused, or values beyond 16 bits.
    """
    p = Path(path)
    if sixteen_bit == "keep" and mode is not None:
        raise ValueError(f"sixteen_bit='keep' returns the file's values: use mode=None, not {mode!r}")
    if not p.is_file():
        raise DataError(f"{p}: file not found; check the path or re-download the dataset")
    try:
        with _open(p) as opened:
            pages = int(getattr(opened, "n_frames", 1))
            if not 0 <= page < pages:
                raise DataError(f"{p}: has {pages} page(s), so no page {page}")
            if page:
                opened.seek(page)
            opened.load()  # force the full decode now: truncation shows here, not later
            if opened.format == "PNG" and page == 0:
                _check_png_rows(p)
            return _page_array(p, opened, mode, sixteen_bit)
    except ZooError:
        raise
    except Exception as err:  # Pillow signals corrupt files with many types (OSError, KeyError, TypeError...)
        if (said := _unreadable(p, err)) is not None:
            raise said from err
        raise DataError(
            f"{p}: cannot decode image ({err}); the file is corrupted or truncated: replace it with a good "
            "copy (re-download or re-extract the dataset)"
        ) from err


def read_pages(path: str | Path, *, mode: str, sixteen_bit: SixteenBit = "scale") -> np.ndarray:
    """Every page of a multi-page TIFF (one for other files), each decoded as :func:`read_image` decodes
    that page with ``mode``: ``(N, H, W)`` uint8 for ``mode="L"``, ``(N, H, W, 3)`` for ``"RGB"``. One
    decoding for every reader of images: an RGB TIFF is an RGB image to predict and to the data loader
    alike, and the pages of a gray stack are gray images (copied to three channels for ``"RGB"``, as a
    gray PNG is).

    Raises:
        DataError: as :func:`read_image`; pages of different sizes.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found; check the path or re-download the dataset")
    pages: list[np.ndarray] = []
    try:
        with _open(p) as opened:
            for page in ImageSequence.Iterator(opened):
                page.load()
                if opened.format == "PNG" and not pages:
                    _check_png_rows(p)
                pages.append(_page_array(p, page, mode, sixteen_bit))
    except ZooError:
        raise
    except Exception as err:  # Pillow signals corrupt files with many types (OSError, KeyError, TypeError...)
        if (said := _unreadable(p, err)) is not None:
            raise said from err
        raise DataError(
            f"{p}: cannot decode page {len(pages)} ({err}); the file is corrupted or truncated: replace it "
            "with a good copy"
        ) from err
    shapes = {a.shape for a in pages}
    if len(shapes) > 1:
        raise DataError(f"{p}: pages differ in size {sorted(shapes)}; a stack needs equal-sized pages")
    return np.stack(pages)


def _page_array(path: Path, im: Image.Image, mode: str | None, sixteen_bit: SixteenBit) -> np.ndarray:
    """A decoded page as :func:`read_image` returns it: the one place that decides its mode and depth."""
    if im.mode in WIDE_MODES:
        if sixteen_bit == "reject":
            raise DataError(
                f"{path}: 16-bit pixels (mode {im.mode}) where 8-bit ones are expected; convert the file "
                "to 8-bit"
            )
        wide = _sixteen_bits(path, np.array(im))
        if sixteen_bit == "keep":
            return wide
        im = Image.fromarray(_eight_bits(wide))
    if mode is not None:
        im = im.convert(mode)
    elif im.mode not in ("L", "P", "RGB", "1"):
        im = im.convert("RGB")
    arr = np.array(im)  # a writable copy (torch.from_numpy needs one)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: expected 8-bit pixels, got {arr.dtype}; convert the image to 8-bit")
    return arr


def _sixteen_bits(path: Path, values: np.ndarray) -> np.ndarray:
    """``values`` as uint16, or a DataError when a 32-bit integer file holds values beyond 16 bits."""
    if values.dtype != np.uint16 and values.size and (values.min() < 0 or values.max() > 65535):
        raise DataError(
            f"{path}: pixel values span {values.min()}..{values.max()}, beyond 16 bits; save the file as "
            "8- or 16-bit"
        )
    return values.astype(np.uint16)


def _eight_bits(wide: np.ndarray) -> np.ndarray:
    """16-bit values scaled by the full range: rounded v * 255 / 65535, in integers (exact; 65535 -> 255,
    and a value saved as v * 257 from 8 bits gets v back)."""
    return ((wide.astype(np.uint32) * 510 + 65535) // 131070).astype(np.uint8)


def read_stack(path: str | Path) -> np.ndarray:
    """Decode a multi-page TIFF (e.g. the ISBI challenge's ``train-volume.tif``) to ``(N, H, W)`` uint8;
    16-bit pages are scaled by the full 16-bit range, as :func:`read_image` with ``sixteen_bit="scale"``.

    Raises:
        DataError: missing, unreadable or truncated file, pages of different sizes, or a page above the
            pixel limit (:func:`max_pixels`).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found; check the path or re-download the dataset")
    pages: list[np.ndarray] = []
    try:
        with _open(p) as im:
            for page in ImageSequence.Iterator(im):
                page.load()
                if page.mode in WIDE_MODES:  # Pillow's convert("L") would clip them at 255
                    pages.append(_eight_bits(_sixteen_bits(p, np.array(page))))
                else:
                    pages.append(
                        np.asarray(page.convert("L") if page.mode not in ("L", "P") else page).copy()
                    )
    except ZooError:
        raise
    except Exception as err:  # Pillow signals corrupt files with many types (OSError, KeyError, TypeError...)
        if (said := _unreadable(p, err)) is not None:
            raise said from err
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

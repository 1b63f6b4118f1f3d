"""Image files as uint8 arrays: the one decoding and resizing rule of training, caching, retrieval and the
search page.

Every image is a single-page PNG, TIFF or JPEG (:data:`IMAGE_FORMATS`), 8 or 16 bits. Training reads it
whole and resizes it exactly (:func:`read_image`); the search page may let the decoder shrink a large
upload by whole factors first (``decode_image(min_size=…)``) and bound its decoded size
(``max_bytes``). Decoding never makes a full-size float copy: 16-bit levels become 8-bit ones in
integer arithmetic, a strip of rows at a time.

Imports nothing of rockir_jax but this, so worker processes that decode images start quickly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_FORMATS = ("PNG", "TIFF", "JPEG")
"""Pillow formats accepted everywhere (a JPEG with extra pictures opens as Pillow's MPO: its first,
main picture is used). Training folders find images by the matching suffixes,
``rockir_jax.data.layout.IMAGE_SUFFIXES``."""
FORMATS_TEXT = "PNG, TIFF or JPEG"
REDUCING_GAP = 3
"""``decode_image(min_size=s)`` shrinks by whole factors while both sides stay at least this many times
``s``: the exact resize that follows then differs from resizing the full image by a grey level or so
(Pillow's ``reducing_gap``, whose documentation calls 3 indistinguishable from fair resampling)."""

# Pillow modes read_image understands; 16-bit PNGs open as "I;16" (or "I" in older Pillow).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")
# Reduced as decoded; Pillow's reduce refuses "1", "P" and "I;16", and would weigh colours by alpha.
_REDUCIBLE_MODES = ("L", "RGB", "I")
_STRIP_PIXELS = 1 << 18
"""Pixels converted at a time from 16 to 8 bits: the integer temporaries stay about a megabyte."""


class UnusableImage(ValueError):
    """A readable image this package refuses: too many pixels, several pages or an unsupported mode."""


class ImageTooLarge(UnusableImage):
    """An image whose decoded pixels would take more bytes than the caller allows."""


def decoded_bytes(image: Image.Image) -> int:
    """Bytes Pillow holds for ``image`` once decoded: 1 a pixel for "1", "L" and "P", 2 for 16-bit
    greyscale, 4 for the rest (Pillow stores RGB in 4 bytes a pixel)."""
    per_pixel = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    return image.width * image.height * per_pixel


def _sixteen_to_eight(levels: np.ndarray) -> np.ndarray:
    """``round(x * 255 / 65535)`` of levels clipped to 0…65535, exactly, in integers: as x * 255 / 65535
    is x / 257 and never half-way between integers, it is ``(x + 128) // 257``."""
    if levels.dtype == np.uint16:
        wide = np.add(levels, 128, dtype=np.uint32)
    else:  # 32-bit "I" images
        wide = np.clip(levels, 0, 65535).astype(np.uint32)
        wide += 128
    wide //= 257
    return wide.astype(np.uint8)


def _to_uint8_array(image: Image.Image) -> np.ndarray:
    """Pixels as uint8 ``(H, W)`` or ``(H, W, 3)``; alpha dropped, palette expanded.

    16-bit greyscale is scaled by its dtype range, ``round(x * 255 / 65535)``, not by the image's
    own min/max, so grey levels stay comparable across images.
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        width, height = image.size
        pixels = np.empty((height, width), np.uint8)
        rows = max(1, _STRIP_PIXELS // max(1, width))
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            pixels[top:bottom] = _sixteen_to_eight(np.asarray(image.crop((0, top, width, bottom))))
        return pixels
    if mode in ("L", "RGB"):
        return np.asarray(image, np.uint8)
    if mode == "1":
        return np.asarray(image.convert("L"), np.uint8)
    if mode == "LA":
        return np.asarray(image, np.uint8)[..., 0]
    if mode in _EIGHT_BIT_MODES:  # P, PA, RGBA
        return np.asarray(image.convert("RGB"), np.uint8)
    raise UnusableImage(f"unsupported image mode {mode!r}")


def _check(image: Image.Image, max_pixels: int | None, max_bytes: int | None) -> None:
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise UnusableImage(
            f"{width}×{height} = {width * height:,} pixels, more than the {max_pixels:,} allowed"
        )
    if image.format == "TIFF" and getattr(image, "is_animated", False):
        raise UnusableImage("a multi-page TIFF (a stack of slices): give one slice per file")
    if max_bytes is not None and decoded_bytes(image) > max_bytes:
        raise ImageTooLarge(
            f"{width}×{height} {image.mode} image is {decoded_bytes(image):,} bytes decoded, more than "
            f"the {max_bytes:,} allowed"
        )


def _factors(size: tuple[int, int], min_size: int) -> tuple[int, int]:
    """Whole reduction factors of (width, height) that keep each side ``REDUCING_GAP × min_size``."""
    width, height = size
    return max(1, width // (REDUCING_GAP * min_size)), max(1, height // (REDUCING_GAP * min_size))


def _shrink(image: Image.Image, min_size: int) -> Image.Image:
    """``image`` reduced by whole factors (a box average, :func:`_factors`); as it is when no factor is
    above 1 or Pillow cannot reduce its mode."""
    factors = _factors(image.size, min_size)
    if factors == (1, 1) or image.mode not in _REDUCIBLE_MODES:
        return image
    return image.reduce(factors)


def _decode(
    image: Image.Image, max_pixels: int | None, max_bytes: int | None, min_size: int | None
) -> np.ndarray:
    if min_size is not None and image.format in ("JPEG", "MPO"):
        # JPEG decodes at 1/2, 1/4 or 1/8 scale (in the DCT): the full image never exists.
        target = REDUCING_GAP * min_size
        image.draft(None, (target, target))
    _check(image, max_pixels, max_bytes)
    image.load()  # decodes every byte: a truncated file fails here, not in a later step
    if min_size is None:
        return _to_uint8_array(image)
    shrunk = _shrink(image, min_size)
    if shrunk is not image:
        image.close()  # the full-size pixels go now, not when the caller's file closes
    pixels = _to_uint8_array(shrunk)
    factors = _factors((pixels.shape[1], pixels.shape[0]), min_size)
    if factors == (1, 1):
        return pixels
    # Modes Pillow cannot reduce as decoded (16-bit, palette) are reduced once they are 8-bit.
    return np.asarray(Image.fromarray(pixels).reduce(factors))


def decode_image(
    source: str | os.PathLike | BinaryIO,
    max_pixels: int | None = None,
    *,
    max_bytes: int | None = None,
    min_size: int | None = None,
) -> np.ndarray:
    """Decodes an image file (a path or a binary file object) to uint8 ``(H, W)`` or ``(H, W, 3)``.

    Accepts single-page PNG, TIFF and JPEG files (:data:`IMAGE_FORMATS`) of 8/16-bit greyscale, RGB,
    RGBA (alpha dropped) and palette images (see :func:`_to_uint8_array`).

    Args:
        source: the file.
        max_pixels: an image whose header declares more pixels is refused before anything is decoded
            (a small file can declare a huge image: a decompression bomb).
        max_bytes: an image whose decoded pixels would take more bytes (:func:`decoded_bytes`, after
            any JPEG downscaling) is refused before it is decoded.
        min_size: the side the caller resizes to (the largest, if several): the decoder may then shrink
            the image by whole factors (JPEG's DCT scaling, a box reduce) while both sides stay at least
            :data:`REDUCING_GAP` times it. Without it the pixels are the file's, exactly.

    Raises:
        UnusableImage: (a ValueError) too many pixels, several pages or an unsupported mode;
            :class:`ImageTooLarge` over ``max_bytes``.
        OSError: not a PNG, TIFF or JPEG image (``PIL.UnidentifiedImageError``), or a truncated or
            corrupt one; ``FileNotFoundError`` and the like for a path that cannot be opened.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:  # errors of the path itself stay what they are
            return decode_image(file, max_pixels, max_bytes=max_bytes, min_size=min_size)
    try:
        with Image.open(source, formats=IMAGE_FORMATS) as image:
            return _decode(image, max_pixels, max_bytes, min_size)
    except UnusableImage:
        raise
    except UnidentifiedImageError:
        raise UnidentifiedImageError(f"not a {FORMATS_TEXT} image") from None
    except Image.DecompressionBombError as err:  # Pillow's own limit, when max_pixels is None
        raise UnusableImage(str(err)) from None
    except Exception as err:  # any other decoder failure: the data ends early or is damaged
        raise OSError(f"truncated or corrupt image ({type(err).__name__}: {err})") from err


def resize_image(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """Decoded pixels (:func:`decode_image`) as uint8 ``(image_size, image_size, 3)``.

    Pillow's bilinear filter widens its kernel by the scale factor when shrinking (area-like
    antialiasing; the same resize the original's torchvision ``Resize`` applied to PIL images).
    Greyscale is replicated to 3 channels.
    """
    if pixels.shape[:2] != (image_size, image_size):
        mode = "L" if pixels.ndim == 2 else "RGB"
        resized = Image.fromarray(pixels, mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return pixels


def read_image(source: str | Path | BinaryIO, image_size: int) -> np.ndarray:
    """Reads an image file (a path or a binary file object) as uint8 ``(image_size, image_size, 3)``:
    :func:`decode_image` (any size, 8 or 16 bits, exactly) then :func:`resize_image`."""
    return resize_image(decode_image(source), image_size)


def check_image(path: Path) -> str | None:
    """Decodes the whole file (:func:`decode_image`); returns a problem description or None if it is a
    usable image."""
    try:
        decode_image(path)
    except Exception as e:  # any decoder failure is the same user-facing problem
        return f"{path}: unreadable or truncated image ({type(e).__name__}: {e})"
    return None


def read_images(paths: Sequence[str | Path], image_size: int) -> list[np.ndarray]:
    """:func:`read_image` of each path, in order (one task of an image-decoding worker process)."""
    return [read_image(path, image_size) for path in paths]

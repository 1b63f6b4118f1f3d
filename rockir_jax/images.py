"""Image files as uint8 arrays: the one decoding and resizing rule of training, caching and retrieval.

Imports nothing of rockir_jax but this, so worker processes that decode images start quickly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

# Pillow modes read_image understands; 16-bit PNGs open as "I;16" (or "I" in older Pillow).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")


def _to_uint8_array(image: Image.Image) -> np.ndarray:
    """Pixels as uint8 ``(H, W)`` or ``(H, W, 3)``; alpha dropped, palette expanded.

    16-bit greyscale is scaled by its dtype range, ``round(x * 255 / 65535)``, not by the image's
    own min/max, so grey levels stay comparable across images.
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        pixels = np.clip(np.asarray(image, np.float64), 0, 65535)
        return np.round(pixels * (255.0 / 65535.0)).astype(np.uint8)
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"), np.uint8)
    if mode == "LA":
        return np.asarray(image, np.uint8)[..., 0]
    if mode in _EIGHT_BIT_MODES:  # P, PA, RGB, RGBA
        return np.asarray(image.convert("RGB"), np.uint8)
    raise ValueError(f"unsupported image mode {mode!r}")


def decode_image(source: str | Path | BinaryIO, max_pixels: int | None = None) -> np.ndarray:
    """Decodes an image file (a path or a binary file object) to uint8 ``(H, W)`` or ``(H, W, 3)``.

    Accepts 8/16-bit greyscale, RGB, RGBA (alpha dropped) and palette images (see
    :func:`_to_uint8_array`). With ``max_pixels``, an image whose header declares more pixels is refused
    before anything is decoded (a small file can declare a huge image: a decompression bomb).

    Raises:
        ValueError: the image has more than ``max_pixels`` pixels or an unsupported mode.
        OSError: not an image, or a truncated or corrupt one (Pillow's errors).
    """
    with Image.open(source) as image:
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise ValueError(
                f"{image.width}×{image.height} = {image.width * image.height:,} pixels, more than the "
                f"{max_pixels:,} allowed"
            )
        return _to_uint8_array(image)


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
    :func:`decode_image` (any size, 8 or 16 bits) then :func:`resize_image`."""
    return resize_image(decode_image(source), image_size)


def check_image(path: Path) -> str | None:
    """Decodes the whole file; returns a problem description or None if it is a usable image."""
    try:
        with Image.open(path) as image:
            image.load()  # decodes every byte: catches truncated files, not only bad headers
            _to_uint8_array(image)
    except Exception as e:  # any decoder failure is the same user-facing problem
        return f"{path}: unreadable or truncated image ({type(e).__name__}: {e})"
    return None


def read_images(paths: Sequence[str | Path], image_size: int) -> list[np.ndarray]:
    """:func:`read_image` of each path, in order (one task of an image-decoding worker process)."""
    return [read_image(path, image_size) for path in paths]

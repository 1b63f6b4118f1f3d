"""Which slices to cut from a volume, and how they become 8-bit training images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from rockir_jax.volumes.readers import Volume


def even_positions(depth: int, n_slices: int) -> list[int]:
    """Evenly spaced slice indices, away from the faces so slices are not boundary-affected."""
    margin = max(1, depth // (2 * n_slices))
    return [round(float(z)) for z in np.linspace(margin, depth - 1 - margin, n_slices)]


@dataclass(frozen=True)
class SlicePlan:
    """Slices to cut: ``(axis, index)`` pairs in file order (``<sample>_slice0.png`` is the first)."""

    cuts: tuple[tuple[int, int], ...]

    @property
    def axes(self) -> tuple[int, ...]:
        """The axes slices are cut normal to, in order of first use."""
        return tuple(dict.fromkeys(axis for axis, _ in self.cuts))


def plan_slices(
    shape: Sequence[int], n_slices: int, axes: Sequence[int] = (0,), random: np.random.Generator | None = None
) -> SlicePlan:
    """``n_slices`` slices shared round-robin between ``axes``: evenly spaced, or drawn with ``random``.

    Random positions are drawn without replacement from the same interior range the even ones span.
    """
    if n_slices < 1:
        raise ValueError(f"need at least one slice, got {n_slices}")
    cuts = []
    for i, axis in enumerate(axes):
        count = n_slices // len(axes) + (i < n_slices % len(axes))
        if count == 0:
            continue
        depth = shape[axis]
        margin = max(1, depth // (2 * count))
        if depth - 2 * margin < count:
            raise ValueError(f"{count} slices do not fit along axis {axis} of length {depth}")
        if random is None:
            positions = even_positions(depth, count)
        else:
            positions = sorted(
                int(p) for p in random.choice(np.arange(margin, depth - margin), count, replace=False)
            )
        cuts += [(axis, p) for p in positions]
    return SlicePlan(tuple(cuts))


def read_slices(
    volume: Volume, plan: SlicePlan, progress: Callable[[int], None] = lambda n: None
) -> list[np.ndarray]:
    """The planned 2-D slices, in plan order.

    Axis-0 slices are single plane reads; slices along axes 1 and 2 are gathered in one chunked
    pass over the volume, so nothing larger than a chunk is in memory. ``progress`` is called with
    the number of planes read.
    """
    slices: dict[int, np.ndarray] = {}
    across = [i for i, (axis, _) in enumerate(plan.cuts) if axis != 0]
    for i, (axis, index) in enumerate(plan.cuts):
        if axis == 0:
            slices[i] = volume.read(index, index + 1)[0]
            progress(1)
    if across:
        parts: dict[int, list[np.ndarray]] = {i: [] for i in across}
        for _, block in volume.chunks():
            for i in across:
                axis, index = plan.cuts[i]
                parts[i].append(np.take(block, index, axis=axis))
            progress(len(block))
        slices.update({i: np.concatenate(parts[i]) for i in across})
    return [slices[i] for i in range(len(plan.cuts))]


def voxel_sample(volume: Volume, max_voxels: int = 1 << 24) -> np.ndarray:
    """About ``max_voxels`` voxels spread over the volume, for intensity statistics.

    Whole planes at evenly spaced depths, strided within the plane when planes are large: every
    voxel of a small volume, a regular subsample of a large one.
    """
    z, y, x = volume.shape
    n_planes = min(z, max(1, max_voxels // (y * x)), 64) if y * x <= max_voxels else 16
    stride = max(1, int(np.sqrt(y * x * n_planes / max_voxels)))
    depths = np.unique(np.linspace(0, z - 1, n_planes).round().astype(int)) if n_planes < z else range(z)
    return np.concatenate([volume.read(d, d + 1)[0, ::stride, ::stride].ravel() for d in depths])


@dataclass(frozen=True)
class IntensityWindow:
    """Grey values mapped to 0 and 255: the ``percentiles`` of a volume's voxels, clipped outside."""

    low: float
    high: float
    percentiles: tuple[float, float]

    @classmethod
    def of(cls, values: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> IntensityWindow:
        """The window of ``values``; the full range when the percentiles coincide (e.g. binary data)."""
        low, high = (float(v) for v in np.percentile(values, percentiles))
        if high <= low:
            low, high = float(values.min()), float(values.max())
        if high <= low:
            raise ValueError(f"constant intensity {low:g}: nothing to see in its slices")
        return cls(low, high, (float(percentiles[0]), float(percentiles[1])))

    def to_unit(self, image: np.ndarray) -> np.ndarray:
        """``image`` scaled to float [0, 255] through the window, clipped."""
        scaled = (np.asarray(image, np.float64) - self.low) * (255.0 / (self.high - self.low))
        return np.clip(scaled, 0.0, 255.0)


def to_training_image(image: np.ndarray, window: IntensityWindow, image_size: int | None) -> np.ndarray:
    """A slice as the 8-bit square image training reads: centred square crop, window, resize.

    Resizing uses Pillow's Lanczos filter on the float image (area-like antialiasing when shrinking).
    """
    height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    grey = window.to_unit(image[top : top + side, left : left + side])
    if image_size is not None and image_size != side:
        resized = Image.fromarray(grey.astype(np.float32), mode="F").resize(
            (image_size, image_size), Image.Resampling.LANCZOS
        )
        grey = np.asarray(resized, dtype=np.float64)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def pixel_size_um(voxel_size_um: float, slice_shape: Sequence[int], image_size: int | None) -> float:
    """The training image's pixel edge: the voxel edge times the crop side over the image side."""
    side = min(slice_shape)
    return voxel_size_um * side / (image_size or side)

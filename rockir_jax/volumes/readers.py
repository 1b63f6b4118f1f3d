"""Opening 3-D volumes without loading them: raw binaries, ``.npy``, TIFF stacks, HDF5 and NetCDF.

Every reader returns a :class:`Volume` whose planes along axis 0 are read on demand, so a volume larger
than memory is read a few planes at a time. A raw volume's shape and dtype come from a sidecar
``<stem>.json`` or a default :class:`RawSpec`. Every problem, a hostile header included, is a
:class:`VolumeError` naming the file. Readers, sidecar and header checks: docs/internals.md.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RAW_SUFFIXES = (".raw", ".bin", ".vol")
TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nc")
VOLUME_SUFFIXES = (*RAW_SUFFIXES, ".npy", *TIFF_SUFFIXES, *HDF5_SUFFIXES)
MAX_PLANE_BYTES = 1 << 30
"""Largest plane (Y × X × bytes a voxel) a volume may have: planes are read whole, and a header can
claim any shape (a 16k × 16k plane of 32-bit voxels is the most that fits)."""
GREY_KINDS = "biuf"
"""numpy dtype kinds of grey levels: bool, signed and unsigned integers, floats."""


class VolumeError(ValueError):
    """A volume cannot be used; the message names its file and the problem."""


@dataclass(frozen=True)
class RawSpec:
    """Shape ``(Z, Y, X)`` and numpy dtype of a headerless raw volume."""

    shape: tuple[int, int, int]
    dtype: str

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"a raw volume's shape is three positive sizes Z,Y,X, got {self.shape}")
        try:
            np.dtype(self.dtype)
        except TypeError as err:
            raise ValueError(f"unknown dtype {self.dtype!r} ({err})") from None


@dataclass
class Volume:
    """An opened volume: ``shape`` ``(Z, Y, X)``, ``dtype`` and plane reads along axis 0.

    ``read(start, stop)`` returns planes ``start:stop`` as an array; ``close`` releases the file.
    ``voxel_size_um`` is set when the file's sidecar gives one.
    """

    path: Path
    name: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    _read: Callable[[int, int], np.ndarray]
    _close: Callable[[], None] = lambda: None
    voxel_size_um: float | None = None
    description: dict[str, Any] = field(default_factory=dict)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Planes ``start:stop`` along axis 0, read from the file now."""
        try:
            planes = np.asarray(self._read(start, stop))
        except VolumeError:
            raise
        except Exception as err:  # any decoder or I/O failure is the same user-facing problem
            raise VolumeError(f"{self.path}: unreadable ({type(err).__name__}: {err})") from err
        expected = (stop - start, *self.shape[1:])
        if planes.shape != expected:
            raise VolumeError(f"{self.path}: planes {start}:{stop} have shape {planes.shape}, not {expected}")
        return planes

    def chunks(self, max_bytes: int = 256 << 20) -> Iterator[tuple[int, np.ndarray]]:
        """``(first plane, planes)`` blocks covering the volume, each at most about ``max_bytes``."""
        plane_bytes = self.shape[1] * self.shape[2] * self.dtype.itemsize
        step = max(1, max_bytes // plane_bytes)
        for start in range(0, self.shape[0], step):
            yield start, self.read(start, min(start + step, self.shape[0]))

    def close(self) -> None:
        """Releases the file."""
        self._close()

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _natural_key(path: Path) -> list[Any]:
    """``slice_2`` before ``slice_10``: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _tiffs_in(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=_natural_key)


def find_volumes(inputs: Sequence[Path]) -> list[Path]:
    """The volumes named by ``inputs``: files, or folders scanned one level deep.

    In a folder, every file with a volume suffix is a volume and every sub-folder holding TIFF
    files is one volume of 2-D slices. Sidecar ``.json`` files and other files are not volumes.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise FileNotFoundError(f"{item}: no such volume file or folder")
        if item.is_file():
            found.append(item)
            continue
        for entry in sorted(item.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and _tiffs_in(entry):
                found.append(entry)
            elif entry.is_file() and entry.suffix.lower() in VOLUME_SUFFIXES:
                found.append(entry)
    return found


def sample_name(path: Path) -> str:
    """A volume's sample name: its file stem, or the folder's name for a folder of 2-D TIFFs."""
    return path.name if path.is_dir() else path.stem


def _sidecar(path: Path) -> dict[str, Any]:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return {}
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise VolumeError(f"{sidecar}: not a readable JSON sidecar ({err})") from None
    if not isinstance(record, dict):
        raise VolumeError(f'{sidecar}: expected a JSON object like {{"shape": [Z, Y, X], "dtype": "uint8"}}')
    return record


def _check_3d(path: Path, shape: Sequence[int], what: str = "") -> tuple[int, int, int]:
    if len(shape) != 3:
        hint = "; a folder of 2-D TIFFs is one volume: pass the folder" if len(shape) == 2 else ""
        raise VolumeError(f"{path}: {what}shape {tuple(shape)} is not a 3-D volume{hint}")
    if min(shape) < 2:
        raise VolumeError(f"{path}: {what}shape {tuple(shape)} is too thin for a volume")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _check_grey(path: Path, dtype: np.dtype) -> None:
    if dtype.kind not in GREY_KINDS or dtype.shape != ():
        raise VolumeError(f"{path}: dtype {dtype.str} is not a grey-level volume (integers or floats)")


def _check_planes(volume: Volume) -> None:
    """Refuses a volume of other than grey levels or with planes over :data:`MAX_PLANE_BYTES`."""
    _check_grey(volume.path, volume.dtype)
    _, y, x = volume.shape
    plane = y * x * volume.dtype.itemsize
    if plane > MAX_PLANE_BYTES:
        raise VolumeError(
            f"{volume.path}: a plane of {y}×{x} {volume.dtype.name} is {plane:,} bytes, more than the "
            f"{MAX_PLANE_BYTES:,} a reader holds at once"
        )


def _voxel_size(path: Path, value: Any) -> float:
    size = value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(size) and size > 0):
        raise VolumeError(
            f"{path.with_suffix('.json')}: voxel_size_um must be a positive number, got {value!r}"
        )
    return float(size)


def _open_raw(path: Path, default: RawSpec | None, sidecar: dict[str, Any]) -> Volume:
    if "shape" in sidecar or "dtype" in sidecar:
        try:
            spec = RawSpec(tuple(int(s) for s in sidecar["shape"]), str(sidecar["dtype"]))  # type: ignore[arg-type]
        except Exception as err:  # missing keys, no list, no numbers, inf, an unknown dtype
            raise VolumeError(
                f'{path.with_suffix(".json")}: needs "shape": [Z, Y, X] and "dtype" ({err})'
            ) from None
    elif default is not None:
        spec = default
    else:
        raise VolumeError(
            f"{path}: a raw volume needs its shape and dtype: --shape Z,Y,X --dtype uint8, "
            f"or a sidecar {path.with_suffix('.json').name} holding "
            '{"shape": [Z, Y, X], "dtype": "uint8"}'
        )
    dtype = np.dtype(spec.dtype)
    _check_grey(path, dtype)
    expected = math.prod(spec.shape) * dtype.itemsize  # Python integers: no overflow
    size = path.stat().st_size
    if size != expected:
        z, y, x = spec.shape
        raise VolumeError(
            f"{path}: {size} bytes, but shape {z}x{y}x{x} of {dtype.name} needs {expected} bytes; "
            "check the shape and dtype"
        )
    shape = _check_3d(path, spec.shape)
    array = np.memmap(path, dtype=dtype, mode="r", shape=shape)
    return Volume(
        path, sample_name(path), shape, dtype, lambda a, b: array[a:b], description={"format": "raw"}
    )


def _open_npy(path: Path) -> Volume:
    try:
        array = np.load(path, mmap_mode="r")
    except Exception as err:  # numpy raises several types for a damaged header
        raise VolumeError(f"{path}: not a readable .npy file ({type(err).__name__}: {err})") from None
    if not isinstance(array, np.ndarray):  # np.load opens zip archives (.npz) whatever their name
        getattr(array, "close", lambda: None)()
        raise VolumeError(f"{path}: not a readable .npy file (a {type(array).__name__}, not one array)")
    shape = _check_3d(path, array.shape)
    return Volume(path, path.stem, shape, array.dtype, lambda a, b: array[a:b], description={"format": "npy"})


def _open_tiff_file(path: Path) -> Volume:
    import tifffile

    tif = None
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        shape = tuple(series.shape)
        dtype = np.dtype(series.dtype)
        one_page_a_plane = len(series.pages) == shape[0] if shape else False
    except Exception as err:  # tifffile raises TiffFileError, struct and value errors on bad files
        if tif is not None:
            tif.close()
        raise VolumeError(f"{path}: not a readable TIFF ({type(err).__name__}: {err})") from None
    try:
        shape = _check_3d(path, shape)
    except VolumeError:
        tif.close()
        raise
    try:
        # uncompressed, contiguous stacks map straight from disk
        array = tifffile.memmap(path, mode="r")
        if array.shape != shape:
            raise ValueError(f"memory map of shape {array.shape}")
        read: Callable[[int, int], np.ndarray] = lambda a, b: array[a:b]
    except Exception:  # compressed or scattered pages: read page by page
        if one_page_a_plane:
            read = lambda a, b: tif.asarray(key=range(a, b), series=0).reshape(b - a, *shape[1:])
        else:  # pages that are not planes: the whole series, read once, when first asked
            whole: list[np.ndarray] = []

            def read(a: int, b: int) -> np.ndarray:
                if math.prod(shape) * dtype.itemsize > MAX_PLANE_BYTES:
                    raise VolumeError(
                        f"{path}: its pages are not planes, so it is read whole, and it is larger than "
                        f"{MAX_PLANE_BYTES:,} bytes; save it as one page a plane"
                    )
                if not whole:
                    whole.append(series.asarray())
                return whole[0][a:b]

    return Volume(path, path.stem, shape, dtype, read, tif.close, description={"format": "tiff"})


def _open_tiff_folder(folder: Path) -> Volume:
    import tifffile

    files = _tiffs_in(folder)
    shapes = {}
    for path in files:
        try:
            with tifffile.TiffFile(path) as tif:
                shapes[path] = (tuple(tif.series[0].shape), np.dtype(tif.series[0].dtype))
        except Exception as err:  # as in _open_tiff_file
            raise VolumeError(f"{path}: not a readable TIFF ({type(err).__name__}: {err})") from None
    first_shape, dtype = shapes[files[0]]
    for path, (shape, file_dtype) in shapes.items():
        if len(shape) != 2:
            raise VolumeError(f"{path}: shape {shape}; a folder volume needs one 2-D image per file")
        if shape != first_shape or file_dtype != dtype:
            raise VolumeError(f"{path}: {shape} {file_dtype}, unlike {files[0].name}'s {first_shape} {dtype}")
    shape = _check_3d(folder, (len(files), *first_shape), "stack ")
    read = lambda a, b: np.stack([tifffile.imread(p) for p in files[a:b]])
    return Volume(folder, folder.name, shape, dtype, read, description={"format": "tiff folder"})


def _pick_dataset(path: Path, arrays: dict[str, tuple[int, ...]], dataset: str | None) -> str:
    if dataset is not None:
        if dataset not in arrays:
            listed = ", ".join(f"{k} {v}" for k, v in arrays.items()) or "none"
            raise VolumeError(f"{path}: no dataset {dataset!r} (found: {listed})")
        return dataset
    volumes = [name for name, shape in arrays.items() if len(shape) == 3]
    if len(volumes) != 1:
        listed = ", ".join(f"{k} {v}" for k, v in arrays.items()) or "none"
        raise VolumeError(f"{path}: {len(volumes)} 3-D datasets, name one with --dataset (found: {listed})")
    return volumes[0]


def _array_volume(
    path: Path,
    handle: Any,
    dataset: str | None,
    what: tuple[str, str],
    arrays: Callable[[], dict[str, tuple[int, ...]]],
    array: Callable[[str], Any],
) -> Volume:
    """The HDF5 and NetCDF readers' shared sequence on an opened file ``handle``: list its ``arrays()``,
    pick ``dataset`` (or the only 3-D one), check its shape and build the Volume reading ``array(name)``;
    the file is closed on any failure. ``what`` is (format, the word for an array in messages)."""
    fmt, kind = what
    try:
        name = _pick_dataset(path, arrays(), dataset)
        data = array(name)
        shape = _check_3d(path, data.shape, f"{kind} {name!r} ")
        dtype = np.dtype(data.dtype)
    except VolumeError:
        handle.close()
        raise
    except Exception as err:  # a damaged file fails while its structure is walked
        handle.close()
        raise VolumeError(f"{path}: not a readable {fmt} file ({type(err).__name__}: {err})") from None
    return Volume(
        path, path.stem, shape, dtype, lambda a, b: data[a:b], handle.close,
        description={"format": fmt, "dataset": name},
    )  # fmt: skip


def _open_hdf5(path: Path, dataset: str | None) -> Volume:
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except Exception as err:  # OSError, or worse for a damaged superblock
        if path.suffix.lower() == ".nc":
            return _open_netcdf3(path, dataset)
        raise VolumeError(f"{path}: not a readable HDF5 file ({err})") from None

    def arrays() -> dict[str, tuple[int, ...]]:
        found: dict[str, tuple[int, ...]] = {}
        h5.visititems(
            lambda name, obj: found.update({name: obj.shape}) if isinstance(obj, h5py.Dataset) else None
        )
        return found

    return _array_volume(path, h5, dataset, ("hdf5", "dataset"), arrays, lambda name: h5[name])


def _open_netcdf3(path: Path, dataset: str | None) -> Volume:
    from scipy.io import netcdf_file

    try:
        nc = netcdf_file(path, "r", mmap=True)
    except Exception as err:  # scipy raises TypeError/ValueError on non-NetCDF files
        raise VolumeError(f"{path}: neither NetCDF-4 (HDF5) nor classic NetCDF ({err})") from None
    arrays = lambda: {name: tuple(var.shape) for name, var in nc.variables.items()}
    return _array_volume(
        path, nc, dataset, ("netcdf", "variable"), arrays, lambda name: nc.variables[name].data
    )


def open_volume(path: str | Path, raw: RawSpec | None = None, dataset: str | None = None) -> Volume:
    """Opens the volume at ``path`` (see the module docstring for the formats).

    ``raw`` is the shape and dtype of raw files without a sidecar; ``dataset`` names the array of
    an HDF5 or NetCDF file when it holds more than one 3-D array.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such volume")
    if path.is_dir():
        if not _tiffs_in(path):
            raise VolumeError(f"{path}: folder holds no TIFF slices")
        volume = _open_tiff_folder(path)
        sidecar: dict[str, Any] = {}
    else:
        suffix = path.suffix.lower()
        sidecar = _sidecar(path)
        if suffix in RAW_SUFFIXES:
            volume = _open_raw(path, raw, sidecar)
        elif suffix == ".npy":
            volume = _open_npy(path)
        elif suffix in TIFF_SUFFIXES:
            volume = _open_tiff_file(path)
        elif suffix in HDF5_SUFFIXES:
            volume = _open_hdf5(path, dataset)
        else:
            raise VolumeError(f"{path}: unknown volume format (accepted: {', '.join(VOLUME_SUFFIXES)})")
    try:
        _check_planes(volume)
        if "voxel_size_um" in sidecar:
            volume.voxel_size_um = _voxel_size(path, sidecar["voxel_size_um"])
    except VolumeError:
        volume.close()
        raise
    return volume

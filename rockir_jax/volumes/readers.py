"""Opening 3-D volumes without loading them: raw binaries, ``.npy``, TIFF stacks, HDF5 and NetCDF.

Every reader returns a :class:`Volume` whose planes along axis 0 are read on demand: raw and
``.npy`` files through numpy memory maps, HDF5/NetCDF-4 through h5py's chunked reads, classic NetCDF
through scipy's memory map, TIFF stacks a page (or a file) at a time. A volume larger than memory
is therefore read a few planes at a time.

The sample name of a volume is its file stem (a folder's name for a folder of 2-D TIFFs). A raw
volume's shape ``(Z, Y, X)`` and dtype come from a sidecar ``<stem>.json`` holding
``{"shape": [Z, Y, X], "dtype": "uint8"}`` (optionally ``"voxel_size_um"``), or from a default
:class:`RawSpec`; the sidecar wins. Dtypes are numpy's names, so ``">u2"`` reads big-endian 16-bit.

Problems are :class:`VolumeError` (a ValueError) naming the file and what is wrong.
"""

from __future__ import annotations

import json
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
    except (OSError, ValueError) as err:
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


def _open_raw(path: Path, default: RawSpec | None, sidecar: dict[str, Any]) -> Volume:
    if "shape" in sidecar or "dtype" in sidecar:
        try:
            spec = RawSpec(tuple(int(s) for s in sidecar["shape"]), str(sidecar["dtype"]))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as err:
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
    expected = int(np.prod(spec.shape)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        z, y, x = spec.shape
        raise VolumeError(
            f"{path}: {size} bytes, but shape {z}x{y}x{x} of {dtype.name} needs {expected} bytes; "
            "check the shape and dtype"
        )
    array = np.memmap(path, dtype=dtype, mode="r", shape=spec.shape)
    shape = _check_3d(path, spec.shape)
    return Volume(
        path, sample_name(path), shape, dtype, lambda a, b: array[a:b], description={"format": "raw"}
    )


def _open_npy(path: Path) -> Volume:
    try:
        array = np.load(path, mmap_mode="r")
    except Exception as err:  # numpy raises several types for a damaged header
        raise VolumeError(f"{path}: not a readable .npy file ({type(err).__name__}: {err})") from None
    shape = _check_3d(path, array.shape)
    return Volume(path, path.stem, shape, array.dtype, lambda a, b: array[a:b], description={"format": "npy"})


def _open_tiff_file(path: Path) -> Volume:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        shape = tuple(series.shape)
        dtype = np.dtype(series.dtype)
    except Exception as err:  # tifffile raises TiffFileError, struct and value errors on bad files
        raise VolumeError(f"{path}: not a readable TIFF ({type(err).__name__}: {err})") from None
    try:
        shape = _check_3d(path, shape)
    except VolumeError:
        tif.close()
        raise
    try:
        # uncompressed, contiguous stacks map straight from disk
        array = tifffile.memmap(path, mode="r")
        read: Callable[[int, int], np.ndarray] = lambda a, b: array[a:b]
    except Exception:  # compressed or scattered pages: read page by page
        if len(series.pages) == shape[0]:
            read = lambda a, b: tif.asarray(key=range(a, b), series=0).reshape(b - a, *shape[1:])
        else:
            whole = series.asarray()
            read = lambda a, b: whole[a:b]
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


def _open_hdf5(path: Path, dataset: str | None) -> Volume:
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        if path.suffix.lower() == ".nc":
            return _open_netcdf3(path, dataset)
        raise VolumeError(f"{path}: not a readable HDF5 file ({err})") from None
    arrays: dict[str, tuple[int, ...]] = {}
    h5.visititems(
        lambda name, obj: arrays.update({name: obj.shape}) if isinstance(obj, h5py.Dataset) else None
    )
    try:
        name = _pick_dataset(path, arrays, dataset)
        data = h5[name]
        shape = _check_3d(path, data.shape, f"dataset {name!r} ")
    except VolumeError:
        h5.close()
        raise
    return Volume(
        path, path.stem, shape, np.dtype(data.dtype), lambda a, b: data[a:b], h5.close,
        description={"format": "hdf5", "dataset": name},
    )  # fmt: skip


def _open_netcdf3(path: Path, dataset: str | None) -> Volume:
    from scipy.io import netcdf_file

    try:
        nc = netcdf_file(path, "r", mmap=True)
    except Exception as err:  # scipy raises TypeError/ValueError on non-NetCDF files
        raise VolumeError(f"{path}: neither NetCDF-4 (HDF5) nor classic NetCDF ({err})") from None
    arrays = {name: tuple(var.shape) for name, var in nc.variables.items()}
    try:
        name = _pick_dataset(path, arrays, dataset)
        data = nc.variables[name].data
        shape = _check_3d(path, data.shape, f"variable {name!r} ")
    except VolumeError:
        nc.close()
        raise
    return Volume(
        path, path.stem, shape, np.dtype(data.dtype), lambda a, b: data[a:b], nc.close,
        description={"format": "netcdf", "dataset": name},
    )  # fmt: skip


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
    if "voxel_size_um" in sidecar:
        volume.voxel_size_um = float(sidecar["voxel_size_um"])
    return volume

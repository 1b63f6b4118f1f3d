"""A saved retrieval index: embeddings and per-image metadata, so a query need not re-embed.

An index is a directory holding ``arrays.npz`` (no pickling) and ``index.json`` (format, model identity,
shape, checksum); :func:`load_index` checks them all and names the offending file. Saving is atomic, so an
interrupted save never leaves a directory that loads as a different index. What the files hold:
docs/internals.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from rockir_jax.jsonio import json_text, read_versioned

FORMAT = "rockir_jax.retrieval_index"
VERSION = 1
ARRAYS_FILE = "arrays.npz"
META_FILE = "index.json"

_STRINGS = ("paths", "samples", "reservoirs")
_OPTIONAL = (
    "predicted_targets",
    "predicted_porosity",
    "predicted_permeability",
    "true_porosity",
    "true_permeability",
)


@dataclasses.dataclass
class RetrievalIndex:
    """Embeddings of N database images and what is known about each.

    Attributes:
        embeddings: (N, D) float32 search vectors.
        paths: (N,) image paths.
        samples: (N,) sample names (the "same sample" relevance level).
        reservoirs: (N,) reservoir names (the "same reservoir" relevance level).
        model: identity of the model and config that made the embeddings (JSON-serialisable), e.g.
            ``{"model": "dsnn", "backbone": "resnet18", "checkpoint": ..., "step": ...}``.
        predicted_targets: (N, 2) raw regression outputs ``[porosity, log10(k / Pixelsize²) / 5]``.
        predicted_porosity: (N,) predicted porosity.
        predicted_permeability: (N,) predicted permeability in physical units (x Pixelsize²).
        true_porosity: (N,) known porosity, NaN where unknown.
        true_permeability: (N,) known permeability in physical units, NaN where unknown.

    The prediction and truth arrays are optional (None): a vanilla backbone predicts nothing and a
    database may have no metadata.
    """

    embeddings: np.ndarray
    paths: np.ndarray
    samples: np.ndarray
    reservoirs: np.ndarray
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    predicted_targets: np.ndarray | None = None
    predicted_porosity: np.ndarray | None = None
    predicted_permeability: np.ndarray | None = None
    true_porosity: np.ndarray | None = None
    true_permeability: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        if self.embeddings.ndim != 2:
            raise ValueError(f"embeddings must be (N, D), got shape {self.embeddings.shape}")
        n = len(self.embeddings)
        for name in _STRINGS:
            value = np.asarray(getattr(self, name), dtype=str)
            if value.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {value.shape}")
            setattr(self, name, value)
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is None:
                continue
            value = np.asarray(value, dtype=np.float32)
            expected = (n, 2) if name == "predicted_targets" else (n,)
            if value.shape != expected:
                raise ValueError(f"{name} must have shape {expected}, got {value.shape}")
            setattr(self, name, value)
        self.model = dict(self.model)

    def __len__(self) -> int:
        return len(self.embeddings)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_index(path: str | os.PathLike, index: RetrievalIndex) -> Path:
    """Write ``index`` to the directory ``path`` (created if missing; an old index is replaced).

    Returns:
        The directory.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"embeddings": index.embeddings} | {name: getattr(index, name) for name in _STRINGS}
    present = [name for name in _OPTIONAL if getattr(index, name) is not None]
    arrays |= {name: getattr(index, name) for name in present}
    arrays_path = directory / ARRAYS_FILE
    _atomic_write(arrays_path, lambda f: np.savez(f, **arrays))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "n": len(index),
        "dim": int(index.embeddings.shape[1]),
        "optional_arrays": present,
        "model": index.model,
        "arrays_sha256": _sha256(arrays_path),
    }
    text = json_text(meta)
    _atomic_write(directory / META_FILE, lambda f: f.write(text.encode()))
    return directory


def load_index(path: str | os.PathLike) -> RetrievalIndex:
    """Read an index written by :func:`save_index`.

    Raises:
        FileNotFoundError: the directory or one of its files is missing.
        ValueError: a file is corrupt, of another format or version, or inconsistent with the other.
    """
    directory = Path(path)
    meta_path, arrays_path = directory / META_FILE, directory / ARRAYS_FILE
    for required in (meta_path, arrays_path):
        if not required.is_file():
            raise FileNotFoundError(f"retrieval index file missing: {required}")
    meta = read_versioned(meta_path, FORMAT, VERSION)
    if _sha256(arrays_path) != meta.get("arrays_sha256"):
        raise ValueError(f"corrupt retrieval index arrays {arrays_path}: checksum mismatch")
    names = ["embeddings", *_STRINGS, *meta["optional_arrays"]]
    try:
        with np.load(arrays_path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in names}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"corrupt retrieval index arrays {arrays_path}: {e}") from e
    index = RetrievalIndex(model=meta["model"], **arrays)
    if index.embeddings.shape != (meta["n"], meta["dim"]):
        raise ValueError(
            f"{arrays_path}: embeddings {index.embeddings.shape} but {meta_path} says "
            f"({meta['n']}, {meta['dim']})"
        )
    return index

"""Saving and loading a retrieval index, and its errors on missing or corrupt files."""

import json

import numpy as np
import pytest

from rockir_jax.retrieval import RetrievalIndex, load_index, save_index
from rockir_jax.retrieval.index import ARRAYS_FILE, META_FILE


def _index(with_predictions=True):
    rng = np.random.default_rng(0)
    n = 5
    extra = {}
    if with_predictions:
        extra = {
            "predicted_targets": rng.normal(size=(n, 2)),
            "predicted_porosity": rng.uniform(0, 0.3, size=n),
            "predicted_permeability": rng.uniform(1e-14, 1e-12, size=n),
            "true_porosity": [0.1, np.nan, 0.2, 0.25, 0.3],
            "true_permeability": [1e-13, np.nan, 2e-13, 3e-13, 4e-13],
        }
    return RetrievalIndex(
        embeddings=rng.normal(size=(n, 8)),
        paths=[f"db/E00{i}M0_slice{i}.png" for i in range(n)],
        samples=[f"E00{i}M0" for i in range(n)],
        reservoirs=["E00"] * n,
        model={"model": "dsnn", "backbone": "resnet18", "step": 1000, "image_size": [224, 224]},
        **extra,
    )


@pytest.mark.parametrize("with_predictions", [True, False])
def test_roundtrip(tmp_path, with_predictions):
    index = _index(with_predictions)
    save_index(tmp_path / "idx", index)
    loaded = load_index(tmp_path / "idx")
    assert loaded.model == index.model
    assert loaded.embeddings.dtype == np.float32
    for field in ("embeddings", "paths", "samples", "reservoirs", "predicted_targets",
                  "predicted_porosity", "predicted_permeability", "true_porosity",
                  "true_permeability"):  # fmt: skip
        want, got = getattr(index, field), getattr(loaded, field)
        if want is None:
            assert got is None, field
        else:
            np.testing.assert_array_equal(got, want, err_msg=field)
    assert len(loaded) == 5


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=META_FILE):
        load_index(tmp_path / "nowhere")
    save_index(tmp_path / "idx", _index())
    (tmp_path / "idx" / ARRAYS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=ARRAYS_FILE):
        load_index(tmp_path / "idx")


def test_corrupt_files_are_named(tmp_path):
    directory = save_index(tmp_path / "idx", _index())
    arrays = directory / ARRAYS_FILE
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=ARRAYS_FILE):
        load_index(directory)

    directory = save_index(tmp_path / "idx2", _index())
    (directory / META_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=META_FILE):
        load_index(directory)

    meta = json.loads((save_index(tmp_path / "idx3", _index()) / META_FILE).read_text())
    meta["version"] = 99
    (tmp_path / "idx3" / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="version 99"):
        load_index(tmp_path / "idx3")


def test_inconsistent_fields_rejected():
    with pytest.raises(ValueError, match="samples"):
        RetrievalIndex(np.zeros((3, 4)), ["a", "b", "c"], ["s"], ["r", "r", "r"])
    with pytest.raises(ValueError, match="predicted_targets"):
        RetrievalIndex(np.zeros((2, 4)), ["a", "b"], ["s", "s"], ["r", "r"], predicted_targets=np.zeros(2))

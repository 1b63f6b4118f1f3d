"""Property-based fuzzing (hypothesis) of what a stranger controls: the search API's fields and uploads,
the image decoder and the volume readers.

Every answer must be a documented one: JSON with a message and status 200, 400, 404 or 413 from the API
(never a 500), an array or a ``ValueError``/``OSError`` from :func:`rockir_jax.images.decode_image`, an
opened volume or a :class:`VolumeError` from :func:`rockir_jax.volumes.readers.open_volume`. Inputs are
random bytes and valid files with a few bytes overwritten or cut short (headers are where parsers break).
The runs are derandomized and bounded (a few seconds each), so a failure reproduces.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient
from test_serve import ORIGIN, QUERY, bomb_png, serve_app, served_index

from rockir_jax.images import decode_image
from rockir_jax.volumes import readers
from rockir_jax.volumes.readers import RawSpec, VolumeError, open_volume

FUZZ = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def encoded(pixels: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, **save)
    return buffer.getvalue()


def image_seeds() -> dict[str, bytes]:
    """Small valid files of every kind the decoder meets, and some it refuses."""
    grey = np.asarray(Image.open(QUERY).convert("L").resize((40, 30)))
    sixteen = grey.astype(np.uint16) * 257
    rgb = np.stack([grey, grey[::-1], 255 - grey], axis=-1)
    pages = io.BytesIO()
    Image.fromarray(grey).save(pages, format="TIFF", save_all=True, append_images=[Image.fromarray(grey)])
    return {
        "png": encoded(grey, format="PNG"),
        "png16": encoded(sixteen, format="PNG"),
        "png rgb": encoded(rgb, format="PNG"),
        "png palette": encoded(grey, format="PNG", bits=4),
        "tiff16": encoded(sixteen, format="TIFF"),
        "tiff32": encoded(sixteen.astype(np.int32) - 1000, format="TIFF"),
        "tiff zip": encoded(rgb, format="TIFF", compression="tiff_adobe_deflate"),
        "tiff pages": pages.getvalue(),
        "jpeg": encoded(rgb, format="JPEG"),
        "gif": encoded(grey, format="GIF"),
        "bomb": bomb_png(7000, 7000, depth=16),
    }


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    """A seed with up to 6 bytes overwritten (mostly in its first 64: the header), maybe cut short."""
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.one_of(st.integers(0, 63), st.integers(0, len(data) - 1))) % len(data)
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


def any_bytes(seeds: dict[str, bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), mutated(seeds))


# --- the search API -------------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
NUMBERISH = st.one_of(
    TEXT,
    st.integers(-(10**6), 10**6).map(str),
    st.floats().map(repr),
    st.sampled_from(["9" * 5000, "²", "٣", "1e308", "-1e-308", "1e-300", " 3", "0x10", "3.0", "nan"]),
)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    run, index_dir = served_index(tmp_path_factory)
    with TestClient(serve_app(run, index_dir), base_url=ORIGIN) as client:
        yield client


def check_answer(response) -> None:
    assert response.status_code in (200, 400, 404, 413), (response.status_code, response.text[:300])
    body = response.json()
    if response.status_code == 200:
        assert isinstance(body["hits"], list) and body["query"]["id"]
    else:
        assert isinstance(body["error"], str) and body["error"]


def test_api_answers_arbitrary_fields_and_uploads_with_json(client):
    seeds = image_seeds()

    @FUZZ
    @given(
        fields=st.dictionaries(
            st.sampled_from(["k", "pixel_size", "image_id", "note"]), NUMBERISH, max_size=3
        ),
        image=st.one_of(st.none(), any_bytes(seeds)),
        name=st.one_of(st.just("query.png"), TEXT),
    )
    # The reported crashes, always tried first.
    @example(fields={"pixel_size": "1e308"}, image=seeds["png"], name="query.png")
    @example(fields={"image_id": "²"}, image=None, name="")
    @example(fields={"image_id": "9" * 5000}, image=None, name="")
    @example(fields={"image_id": "3"}, image=seeds["gif"], name="q.gif")
    def one(fields: dict[str, str], image: bytes | None, name: str) -> None:
        files = None if image is None else {"image": (name, image, "application/octet-stream")}
        check_answer(client.post("/api/search", data=fields, files=files))

    one()
    assert client.get("/api/health").json()["status"] == "ok"


def test_api_answers_arbitrary_bodies_and_paths_with_json(client):
    types = st.sampled_from(
        ["multipart/form-data; boundary=xyz", "multipart/form-data", "application/x-www-form-urlencoded",
         "application/json", "image/png", "text/plain; charset=utf-8"]
    )  # fmt: skip
    part = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n\r\n'

    @FUZZ
    @given(
        content_type=types,
        body=st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: part + b)),
        path=st.one_of(TEXT, st.integers().map(str)),
    )
    @example(content_type="text/plain", body=b"", path="9" * 5000)
    def one(content_type: str, body: bytes, path: str) -> None:
        check_answer(client.post("/api/search", content=body, headers={"content-type": content_type}))
        response = client.get(f"/api/images/{quote(path, safe='')}")
        assert response.status_code in (200, 404), (path, response.status_code)
        if response.status_code != 200:
            assert response.json()["error"]

    one()
    assert client.get("/api/health").json()["status"] == "ok"


# --- the image decoder ----------------------------------------------------------------------------


def test_decoder_returns_pixels_or_a_documented_error():
    seeds = image_seeds()

    @FUZZ
    @given(data=any_bytes(seeds), min_size=st.sampled_from([None, 8]))
    def one(data: bytes, min_size: int | None) -> None:
        try:
            pixels = decode_image(io.BytesIO(data), 50_000_000, max_bytes=100 * 2**20, min_size=min_size)
        except (ValueError, OSError) as err:
            assert str(err)
            return
        assert pixels.dtype == np.uint8 and (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3))

    one()


# --- the volume readers ---------------------------------------------------------------------------


def volume_seeds(folder: Path) -> dict[str, bytes]:
    """Small valid volumes, by suffix: raw, .npy, TIFF (plain, compressed), HDF5, NetCDF 3 and 4."""
    import h5py
    import tifffile
    from scipy.io import netcdf_file

    volume = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    np.save(folder / "a.npy", volume)
    tifffile.imwrite(folder / "a.tif", volume)
    tifffile.imwrite(folder / "b.tif", volume, compression="zlib")
    with h5py.File(folder / "a.h5", "w") as h5:
        h5.create_dataset("scan/grey", data=volume, chunks=(1, 4, 5), compression="gzip")
    with h5py.File(folder / "b.nc", "w") as h5:
        h5["grey"] = volume
    with netcdf_file(folder / "c.nc", "w") as nc:
        for name, size in zip("zyx", volume.shape, strict=True):
            nc.createDimension(name, size)
        nc.createVariable("grey", volume.dtype, ("z", "y", "x"))[:] = volume
    seeds = {path.name: path.read_bytes() for path in folder.iterdir()}
    seeds["a.raw"] = volume.astype(np.uint8).tobytes()
    return seeds


def open_and_read(path: Path) -> None:
    """Opens ``path`` and reads its first two planes: a VolumeError, or planes of the declared shape."""
    try:
        with open_volume(path, raw=RawSpec((3, 4, 5), "uint8")) as volume:
            planes = volume.read(0, 2)
    except VolumeError as err:
        assert str(err)
        return
    assert isinstance(planes, np.ndarray) and planes.shape == (2, *volume.shape[1:])


def test_volume_readers_return_arrays_or_volume_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(
        readers, "MAX_PLANE_BYTES", 2**20
    )  # damaged headers claim large planes: keep it quick
    seeds = volume_seeds(tmp_path)
    suffixes = (".raw", ".npy", ".tif", ".h5", ".nc")

    damaged = bytearray(seeds["a.h5"])
    damaged[152] = 0  # found by this test: h5py's visititems raised RuntimeError (an address overflow)

    @FUZZ
    @given(suffix=st.sampled_from(suffixes), data=any_bytes(seeds))
    @example(suffix=".h5", data=bytes(damaged))
    def one(suffix: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"volume{suffix}"
            path.write_bytes(data)
            open_and_read(path)

    one()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


def test_raw_sidecars_give_a_volume_or_a_volume_error(monkeypatch):
    monkeypatch.setattr(readers, "MAX_PLANE_BYTES", 2**20)
    dtypes = st.sampled_from(["uint8", "<u2", ">f4", "int64", "O", "V2", "U3", "S1", "bool", "c8", "M8", "x"])
    # Mostly shapes that fit the file's 0, 24, 60 or 120 bytes in some dtype, so that it opens.
    shapes = st.one_of(
        st.sampled_from([[2, 3, 4], [3, 4, 5], [2, 3, 5], [2, 2, 3], [1, 4, 6], [2, 12]]),
        st.lists(st.one_of(st.integers(-2, 2**62), st.floats(), TEXT), min_size=0, max_size=4),
    )

    @FUZZ
    @given(
        sidecar=st.one_of(
            st.fixed_dictionaries({"shape": shapes, "dtype": dtypes}, optional={"voxel_size_um": JSON}),
            st.dictionaries(st.sampled_from(["shape", "dtype", "voxel_size_um"]), JSON),
            JSON,
        ),
        size=st.sampled_from([0, 24, 60, 120]),
    )
    # Sidecars that escaped as ValueError, TypeError and OverflowError.
    @example(sidecar={"shape": [2, 3, 4], "dtype": "uint8", "voxel_size_um": "tiny"}, size=24)
    @example(sidecar={"shape": [2, 3, 4], "dtype": "uint8", "voxel_size_um": [1]}, size=24)
    @example(sidecar={"shape": [float("inf"), 3, 4], "dtype": "uint8"}, size=24)
    def one(sidecar: object, size: int) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "volume.raw"
            path.write_bytes(bytes(range(size)))
            path.with_suffix(".json").write_text(json.dumps(sidecar))
            open_and_read(path)

    one()

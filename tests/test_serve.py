"""The search page: its JSON API against a float64 brute force, bad inputs, and the page in Chromium.

The model is the shared 2-step DSNN (tests/test_evaluate.py); the index holds the bundled
``datasets/synthetic_rocks/db_test`` slices. The browser test needs Debian's Chromium
(``apt-get install chromium``, as ``.ci/run`` does) and fails without it.
"""

import base64
import concurrent.futures
import io
import shutil
import socket
import struct
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import uvicorn
from PIL import Image
from starlette.testclient import TestClient
from test_evaluate import exits_with_error, reference_outputs, shared_run

from rockir_jax import runtime
from rockir_jax.cli import serve
from rockir_jax.images import decode_image, read_image, resize_image
from rockir_jax.retrieval import evaluation, load_index, save_index
from rockir_jax.retrieval.knn import _search_block
from rockir_jax.retrieval.loading import load_model
from rockir_jax.serve import app as serve_app_module
from rockir_jax.serve import create_app

ROCKS = Path(__file__).parents[1] / "datasets" / "synthetic_rocks"
QUERY = ROCKS / "db_test" / "BLBS07_slice0.png"


ORIGIN = "http://localhost:8000"
"""The test client's origin: a loopback name, as the Host allow-list wants."""

_SERVED: dict[str, tuple[Path, Path]] = {}


def served_index(tmp_path_factory) -> tuple[Path, Path]:
    """(run, saved index dir) over the bundled db_test slices, made once per test session (test_fuzz.py
    serves it too)."""
    if "index" not in _SERVED:
        _, _, run = shared_run(tmp_path_factory)
        out = tmp_path_factory.mktemp("serve_eval")
        evaluation.evaluate(load_model(run), ROCKS / "db_test", out, metadata_csv=ROCKS / "metadata.csv",
                            figures=0, batch_size=8)  # fmt: skip
        _SERVED["index"] = (run, out / "index")
    return _SERVED["index"]


def serve_app(run: Path, index_dir: Path, **options):
    """The search page of ``run`` over ``index_dir``, query batches of 1 and 4."""
    options = {"metadata_csv": ROCKS / "metadata.csv", "batch_sizes": (1, 4), **options}
    return create_app(load_model(run), load_index(index_dir), **options)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(run, saved index dir, index, app, TestClient) over the bundled db_test slices."""
    run, index_dir = served_index(tmp_path_factory)
    app = serve_app(run, index_dir)
    with TestClient(app, base_url=ORIGIN) as client:
        yield run, index_dir, app.state.searcher.index, app, client


def brute_force(index, embedding: np.ndarray, k: int, exclude: int | None = None):
    distances = np.sum((index.embeddings.astype(np.float64) - embedding) ** 2, axis=1)
    if exclude is not None:
        distances[exclude] = np.inf
    order = np.argsort(distances, kind="stable")[:k]
    return order, distances[order]


def png_bytes(pixels: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, **save)
    return buffer.getvalue()


def post(client, data: bytes | None = None, name: str = "query.png", **fields):
    files = None if data is None else {"image": (name, data, "application/octet-stream")}
    return client.post("/api/search", files=files, data={k: str(v) for k, v in fields.items()})


def test_upload_hits_and_prediction_match_brute_force(served):
    run, _, index, _, client = served
    answer = post(client, QUERY.read_bytes(), QUERY.name, k=6).json()
    embedding, reg = reference_outputs(run, QUERY)
    rows, distances = brute_force(index, embedding, 6)
    hits = answer["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5, 6]
    assert [h["image_id"] for h in hits] == rows.tolist()
    np.testing.assert_allclose([h["distance"] for h in hits], distances, rtol=1e-4, atol=1e-5)
    assert index.paths[hits[0]["image_id"]].endswith(QUERY.name) and hits[0]["sample"] == "BLBS07"
    csv = pd.read_csv(ROCKS / "metadata.csv").set_index("Created_label")
    for hit in hits:
        assert hit["true_porosity"] == pytest.approx(csv.loc[hit["sample"], "Porosity"], rel=1e-6)
        assert hit["true_permeability"] == pytest.approx(csv.loc[hit["sample"], "Permeability"], rel=1e-5)
        assert hit["thumbnail"] == f"/api/images/{hit['image_id']}"
    assert answer["query"]["sample"] == "BLBS07" and answer["query"]["reservoir"] == "BLB"
    prediction = answer["prediction"]
    assert prediction["porosity"] == pytest.approx(reg[0], rel=1e-4, abs=1e-6)
    pixel_size = csv.loc["BLBS07", "Pixelsize"]
    assert prediction["permeability"] == pytest.approx(10 ** (5 * reg[1]) * pixel_size**2, rel=1e-4)
    assert prediction["permeability_unit"] == "mD" and not prediction["scaled"]

    # A pixel size given overrides the CSV's; an unknown sample without one gets the scaled target.
    given = post(client, QUERY.read_bytes(), QUERY.name, pixel_size=3).json()["prediction"]
    assert given["permeability"] == pytest.approx(10 ** (5 * reg[1]) * 9.0, rel=1e-4)
    unknown = post(client, QUERY.read_bytes(), "unnamed.png").json()["prediction"]
    assert unknown["scaled"] and unknown["permeability"] == pytest.approx(reg[1], rel=1e-4, abs=1e-6)


def test_query_by_row_thumbnails_and_figure(served):
    run, _, index, _, client = served
    row = 30
    answer = post(client, image_id=row, k=4).json()
    embedding, _ = reference_outputs(run, Path(index.paths[row]))
    rows, _ = brute_force(index, embedding, 4, exclude=row)
    assert [h["image_id"] for h in answer["hits"]] == rows.tolist()  # never itself
    assert answer["query"]["image_id"] == row and answer["query"]["sample"] == index.samples[row]

    thumbnail = client.get(f"/api/images/{row}")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumbnail.content)).size == (160, 160)
    figure = client.get(answer["query"]["figure"])
    assert figure.status_code == 200 and Image.open(io.BytesIO(figure.content)).format == "PNG"
    assert client.get("/api/queries/0123abcd/figure.png").status_code == 404
    assert client.get("/api/health").json()["images"] == len(index)


def test_only_index_images_and_package_files_are_served(served):
    _, _, index, _, client = served
    for url in (f"/api/images/{len(index)}", "/api/images/-1", "/api/images/..%2F..%2Fetc%2Fpasswd",
                f"/api/images/{ROCKS / 'metadata.csv'}", "/static/../../pyproject.toml",
                "/static/%2e%2e/app.py"):  # fmt: skip
        assert client.get(url).status_code == 404, url
    assert post(client, image_id=len(index)).status_code == 400
    assert post(client, image_id="../metadata.csv").status_code == 400
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


def bomb_png(width: int, height: int, depth: int = 1, colour: int = 0) -> bytes:
    """A PNG header declaring ``width`` x ``height`` pixels (``depth`` bits, PNG ``colour`` type: 0 grey,
    2 RGB), with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_bad_inputs_get_clear_errors_and_the_server_keeps_serving(served):
    client = served[-1]
    truncated = QUERY.read_bytes()[:400]
    cases = {
        "not an image": (post(client, b"rock", "notes.png"), "notes.png: not a PNG, TIFF or JPEG image"),
        "truncated": (post(client, truncated, "cut.png"), "cut.png: truncated or corrupt image"),
        "bomb": (post(client, bomb_png(9_000, 9_000), "bomb.png"), "more than the 50,000,000 allowed"),
        "no image": (post(client, k=3), "multipart field 'image'"),
        "bad k": (post(client, QUERY.read_bytes(), k="many"), "k must be a whole number"),
        "k too big": (post(client, QUERY.read_bytes(), k=10_000), "k must be between 1 and"),
        "bad pixel size": (
            post(client, QUERY.read_bytes(), pixel_size=-2),
            "pixel_size must be a number of µm",
        ),
    }
    for case, (response, message) in cases.items():
        assert response.status_code == 400, case
        assert message in response.json()["error"], (case, response.json())

    limit = 20 * 2**20
    too_big = post(client, b"\0" * (limit + 1), "big.png")
    assert too_big.status_code == 413 and "larger than" in too_big.json()["error"]
    # Without a Content-Length (chunked), the body is cut off as it streams in.
    chunks = (b"x" * 2**20 for _ in range(limit // 2**20 + 2))
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    assert client.post("/api/search", content=chunks, headers=headers).status_code == 413

    sixteen = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    grey = np.asarray(Image.open(QUERY).convert("L"))
    for name, data in (("q16.png", png_bytes(sixteen, format="PNG")),
                       ("q16.tif", png_bytes(sixteen, format="TIFF")),
                       ("q.jpg", png_bytes(grey, format="JPEG"))):  # fmt: skip
        response = post(client, data, name)
        assert response.status_code == 200, (name, response.json())
    assert client.get("/api/health").json()["status"] == "ok"


def test_concurrent_queries_batch_without_recompiling(served):
    *_, app, client = served
    searcher = app.state.searcher
    compiled = (searcher._embed._cache_size(), _search_block._cache_size())
    single = post(client, image_id=7, k=5).json()["hits"]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: post(client, image_id=7, k=5).json()["hits"], range(6)))
    assert (searcher._embed._cache_size(), _search_block._cache_size()) == compiled
    for hits in answers:
        assert [h["image_id"] for h in hits] == [h["image_id"] for h in single]
        np.testing.assert_allclose([h["distance"] for h in hits], [h["distance"] for h in single], rtol=1e-5)


# --- hardening (docs/serve-hardening.md) -----------------------------------------------------------


def error_of(response, status: int) -> str:
    """The JSON error message of ``response``, checked to have ``status``."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return response.json()["error"]


def test_hostile_values_get_400_or_404_never_500(served, monkeypatch):
    *_, client = served
    query = QUERY.read_bytes()
    cases = {
        "pixel size overflowing the permeability": (post(client, query, pixel_size="1e308"), "pixel_size"),
        "pixel size below a nanometre": (post(client, query, pixel_size="1e-300"), "pixel_size"),
        "unicode digit row": (post(client, image_id="²"), "image_id must be a database row"),
        "5,000-digit row": (post(client, image_id="9" * 5000), "image_id must be a database row"),
        "both an image and a row": (post(client, query, image_id=3), "either"),
    }
    for case, (response, message) in cases.items():
        assert message in error_of(response, 400), case
    for path in ("9" * 5000, "%C2%B2", "-0", "0x1", " 1"):
        assert "no image" in error_of(client.get(f"/api/images/{path}"), 404), path

    # A result that JSON cannot carry (an infinite permeability) is refused, not a 500.
    monkeypatch.setattr(serve_app_module, "predicted_metadata", lambda result, model: (0.2, float("inf")))
    assert "not a finite number" in error_of(post(client, query, pixel_size=2), 400)


SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def test_every_response_carries_the_security_headers(served, monkeypatch):
    *_, app, client = served
    responses = {
        "page": client.get("/"),
        "script": client.get("/static/app.js"),
        "style": client.get("/static/style.css"),
        "health": client.get("/api/health"),
        "thumbnail": client.get("/api/images/0"),
        "404": client.get("/api/images/100000"),
        "no route": client.get("/nowhere"),
        "405": client.get("/api/search"),
        "400": post(client, b"rock", "notes.png"),
        "413": post(client, b"\0" * (20 * 2**20 + 1), "big.png"),
        "bad host": client.get("/api/health", headers={"host": "evil.example"}),
        "cross-origin post": post_from(client, "http://evil.example", image_id=3),
    }
    monkeypatch.setattr(serve_app_module, "predicted_metadata", lambda *_: 1 / 0)
    with TestClient(app, base_url=ORIGIN, raise_server_exceptions=False) as crashing:
        responses["500"] = post(crashing, image_id=3)
    assert responses["500"].json() == {"error": "internal server error"}
    for name, response in responses.items():
        csp = response.headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, name
        for header, value in SECURITY.items():
            assert response.headers.get(header) == value, (name, header)


def post_from(client, origin: str | None, site: str | None = None, **fields):
    headers = {} if origin is None else {"origin": origin}
    if site is not None:
        headers["sec-fetch-site"] = site
    return client.post("/api/search", data={k: str(v) for k, v in fields.items()}, headers=headers)


def test_host_allow_list_and_same_origin_posts(served):
    run, index_dir, *_, client = served
    for host in ("localhost", "localhost:8000", "LocalHost:1", "127.0.0.1", "127.0.0.1:8000", "[::1]:8000"):
        assert client.get("/api/health", headers={"host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io",
                 "[::1", "localhost:8000:1", "::1"):  # fmt: skip
        assert "host" in error_of(client.get("/api/health", headers={"host": host}), 400), host

    assert post_from(client, None, image_id=3).status_code == 200  # curl, scripts: no Origin
    assert post_from(client, ORIGIN, "same-origin", image_id=3).status_code == 200  # the page
    for origin, site in (("http://evil.example", None), ("null", None), ("http://localhost:9999", None),
                         ("https://localhost:8000", None), (None, "cross-site"), (None, "same-site"),
                         (ORIGIN, "cross-site")):  # fmt: skip
        assert "same origin" in error_of(post_from(client, origin, site, image_id=3), 403), (origin, site)

    extra = serve_app(run, index_dir, allowed_hosts=["rocks.lab", "10.0.0.7:8000"], warm_up=False)
    other = TestClient(extra, base_url="http://rocks.lab:8000")
    assert other.get("/api/health").status_code == 200
    assert other.get("/api/health", headers={"host": "localhost:8000"}).status_code == 200
    assert other.get("/api/health", headers={"host": "10.0.0.7:8000"}).status_code == 200
    assert other.get("/api/health", headers={"host": "10.0.0.7:9000"}).status_code == 400
    assert other.get("/api/health", headers={"host": "evil.example"}).status_code == 400


def test_only_single_png_tiff_or_jpeg_images_are_searched(served):
    *_, client = served
    grey = np.asarray(Image.open(QUERY).convert("L"))
    pages = io.BytesIO()
    Image.fromarray(grey).save(pages, format="TIFF", save_all=True, append_images=[Image.fromarray(grey)])
    for name, data in (("q.gif", png_bytes(grey, format="GIF")), ("q.bmp", png_bytes(grey, format="BMP")),
                       ("q.webp", png_bytes(grey, format="WEBP"))):  # fmt: skip
        assert f"{name}: not a PNG, TIFF or JPEG image" in error_of(post(client, data, name), 400)
    message = error_of(post(client, pages.getvalue(), "stack.tif"), 400)
    assert "stack.tif: a multi-page TIFF" in message and "one slice per file" in message


def test_uploads_are_decoded_a_few_at_a_time_within_a_byte_budget(served, monkeypatch):
    *_, client = served
    # The budget counts decoded bytes: a 7000² 16-bit slice (98 MB) is let through to the decoder (and
    # found truncated here), a 7000² RGB one (196 MB in Pillow) is refused before decoding.
    message = error_of(post(client, bomb_png(7000, 7000, depth=8, colour=2), "rgb.png"), 413)
    assert "rgb.png: 7000×7000 RGB" in message and "196,000,000 bytes decoded" in message
    assert "truncated" in error_of(post(client, bomb_png(7000, 7000, depth=16), "grey16.png"), 400)

    active, most, lock = 0, 0, threading.Lock()
    decode = serve_app_module.decode_image

    def slow_decode(*args, **kwargs):
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        try:
            time.sleep(0.2)
            return decode(*args, **kwargs)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(serve_app_module, "decode_image", slow_decode)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(
            pool.map(lambda _: post(client, QUERY.read_bytes(), QUERY.name).status_code, range(6))
        )
    assert statuses == [200] * 6 and most == serve_app_module.MAX_DECODES == 2


def large_slice(size: int, sixteen_bits: bool) -> np.ndarray:
    """A ``size``² slice: the query slice enlarged with added noise, so that downsampling has detail to
    average."""
    grey = Image.open(QUERY).convert("L").resize((size, size), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0, 12, (size, size))
    pixels = np.clip(np.asarray(grey, np.float64) + noise, 0, 255)
    return (pixels * 257).astype(np.uint16) if sixteen_bits else pixels.astype(np.uint8)


def test_large_uploads_shrink_early_and_search_like_the_exact_resize(served, tmp_path):
    run, _, index, _, client = served
    for name, data in (("big16.png", png_bytes(large_slice(1400, True), format="PNG")),
                       ("big.jpg", png_bytes(large_slice(1400, False), format="JPEG", quality=95)),
                       ("big.tif", png_bytes(large_slice(1400, False), format="TIFF"))):  # fmt: skip
        # Shrunk by whole factors (JPEG's DCT scaling, Pillow's box reduce) while 3× the size asked.
        shrunk = decode_image(io.BytesIO(data), min_size=224)
        assert 3 * 224 <= min(shrunk.shape[:2]) and max(shrunk.shape[:2]) <= 1400 // 2, (name, shrunk.shape)
        exact = read_image(io.BytesIO(data), 224).astype(int)
        difference = np.abs(resize_image(shrunk, 224).astype(int) - exact)
        assert difference.max() <= 2 and difference.mean() <= 0.35, (
            name,
            difference.max(),
            difference.mean(),
        )

        (tmp_path / name).write_bytes(data)
        embedding, _ = reference_outputs(run, tmp_path / name)
        rows, distances = brute_force(index, embedding, 5)
        hits = post(client, data, name, k=5).json()["hits"]
        assert [h["image_id"] for h in hits] == rows.tolist(), name
        np.testing.assert_allclose(
            [h["distance"] for h in hits], distances, rtol=1e-2, atol=1e-4, err_msg=name
        )


def test_sixteen_bit_decoding_is_exact_without_float64_copies():
    # Every 16-bit level maps as before: round(x * 255 / 65535), by the dtype's range.
    levels = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    np.testing.assert_array_equal(
        decode_image(io.BytesIO(png_bytes(levels, format="PNG"))),
        np.round(levels.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8),
    )
    # 32-bit TIFFs clip to the 16-bit range first.
    wide = np.array([[-5, 0, 257, 65535, 70000, 2**31 - 1]], np.int32)
    assert decode_image(io.BytesIO(png_bytes(wide, format="TIFF"))).tolist() == [[0, 0, 1, 255, 255, 255]]

    # numpy's allocations (tracemalloc sees them) stay near the uint8 result's size: no full-size float64
    # (8 bytes a pixel) nor even a full uint16 copy; Pillow's own decoded image is not counted.
    data = png_bytes(large_slice(2000, True), format="PNG")
    tracemalloc.start()
    try:
        pixels = decode_image(io.BytesIO(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pixels.shape == (2000, 2000) and pixels.dtype == np.uint8
    assert peak <= 2 * pixels.nbytes, f"peak {peak:,} bytes for a {pixels.nbytes:,}-byte result"


def test_serve_command_warns_when_open_to_the_network(served, monkeypatch, tmp_path, capsys):
    run, index_dir, *_ = served
    home = tmp_path / "home"
    home.mkdir()
    (home / "index").symlink_to(index_dir)
    shutil.copy(ROCKS / "metadata.csv", home / "meta.csv")
    monkeypatch.setenv("HOME", str(home))
    calls: dict = {}
    monkeypatch.setattr(serve.serve_app, "create_app", lambda model, index, **kw: calls.update(app=kw))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(run=kw))
    monkeypatch.setattr(runtime, "configure_logging", lambda log_dir, verbose=False: calls.update(v=verbose))

    arguments = ["--workdir", str(run), "--index", "~/index", "--metadata", "~/meta.csv"]
    serve.main([*arguments, "--allowed-host", "rocks.lab", "--allowed-host", "rocks.lab.example"])
    assert "warning" not in capsys.readouterr().err
    assert calls["app"]["metadata_csv"] == home / "meta.csv" and calls["v"] is False
    assert calls["app"]["allowed_hosts"] == ["rocks.lab", "rocks.lab.example", "127.0.0.1"]
    assert calls["run"]["host"] == "127.0.0.1" and calls["run"]["log_level"] == "warning"

    serve.main([*arguments, "--host", "0.0.0.0", "--verbose", "--max-decodes", "3", "--max-decoded-mb", "64"])
    err = capsys.readouterr().err
    assert "warning: --host 0.0.0.0" in err and "anyone on the network" in err and "no password" in err
    assert calls["v"] is True and calls["run"]["log_level"] == "info"
    assert calls["app"]["max_decodes"] == 3 and calls["app"]["max_decoded_bytes"] == 64 * 2**20
    assert calls["app"]["allowed_hosts"] == []  # a wildcard address is no name a browser sends

    serve.main([*arguments, "--host", "::1"])
    assert "warning" not in capsys.readouterr().err


def test_index_of_another_model_is_refused(served, tmp_path, capsys):
    run, index_dir, *_ = served
    other = tmp_path / "other"
    shutil.copytree(index_dir, other)
    changed = load_index(other)
    changed.model["step"] = 1
    save_index(other, changed)
    with pytest.raises(ValueError, match="not comparable"):
        create_app(load_model(run), changed, warm_up=False)
    exits_with_error(capsys, "not comparable", serve.main, ["--workdir", str(run), "--index", str(other)])


@pytest.fixture
def live_server(served):
    """The app served by uvicorn on a free loopback port, in a thread: its base URL."""
    app = served[3]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join()
    sock.close()


def test_page_in_chromium(served, live_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    run, *_ = served
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("the browser test needs Chromium: apt-get install chromium")
    _, reg = reference_outputs(run, QUERY)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(live_server)
        expect(page.locator("#health")).to_contain_text("images")
        # Drop the slice on the drop zone, as a user dragging a file would.
        page.evaluate(
            """([name, b64]) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const transfer = new DataTransfer();
                transfer.items.add(new File([bytes], name, { type: "image/png" }));
                const options = { dataTransfer: transfer, bubbles: true, cancelable: true };
                document.getElementById("drop").dispatchEvent(new DragEvent("drop", options));
            }""",
            [QUERY.name, base64.b64encode(QUERY.read_bytes()).decode()],
        )
        page.wait_for_selector("body[data-state=done]")
        hits = page.locator("#hits .hit")
        expect(hits).to_have_count(10)
        expect(hits.first.locator(".sample")).to_have_text("BLBS07")
        expect(page.locator("#query-name")).to_have_text(QUERY.name)
        shown = page.locator('dd[data-name="predicted porosity"]').inner_text()
        assert float(shown) == pytest.approx(reg[0], rel=5e-3, abs=1e-3)
        expect(page.locator('dd[data-name="predicted permeability"]')).to_contain_text("mD")
        page.wait_for_load_state("networkidle")  # the thumbnails (the CSP forbids polling scripts)
        page.screenshot(path=tmp_path / "serve_page.png", full_page=True)

        second = hits.nth(1)
        clicked = second.get_attribute("data-image-id")
        name = second.get_attribute("title").split(":")[0]
        second.click()
        expect(page.locator("#query-name")).to_have_text(name)
        expect(page.locator("#hits .hit").first).not_to_have_attribute("data-image-id", clicked)
        browser.close()
    assert not problems, problems
    assert (tmp_path / "serve_page.png").stat().st_size > 0
    print(f"screenshot: {tmp_path / 'serve_page.png'}")

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
import zlib
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
import uvicorn
from PIL import Image
from starlette.testclient import TestClient
from test_evaluate import SIZE, exits_with_error, shared_run

from rockir_jax.cli import serve
from rockir_jax.images import read_image
from rockir_jax.models import build_model
from rockir_jax.retrieval import evaluation, load_index, save_index
from rockir_jax.retrieval.knn import _search_block
from rockir_jax.retrieval.loading import load_model
from rockir_jax.serve import create_app
from rockir_jax.training.checkpoint import restore_variables

ROCKS = Path(__file__).parents[1] / "datasets" / "synthetic_rocks"
QUERY = ROCKS / "db_test" / "BLBS07_slice0.png"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(run, saved index dir, index, app, TestClient) over the bundled db_test slices."""
    _, _, run = shared_run(tmp_path_factory)
    out = tmp_path_factory.mktemp("serve_eval")
    model = load_model(run)
    evaluation.evaluate(model, ROCKS / "db_test", out, metadata_csv=ROCKS / "metadata.csv", figures=0,
                        batch_size=8)  # fmt: skip
    index = load_index(out / "index")
    app = create_app(model, index, metadata_csv=ROCKS / "metadata.csv", batch_sizes=(1, 4))
    with TestClient(app) as client:
        yield run, out / "index", index, app, client


def reference(run: Path, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(embedding, regression) of one image straight from the checkpoint on one device, float64."""
    model = build_model("dsnn", "resnet18")
    variables, _ = restore_variables(run / "checkpoints")
    image = (read_image(path, SIZE).astype(np.float32) / 255.0 - 0.5) / 0.5
    out = jax.jit(lambda v, x: model.apply(v, x, method=model.embed))(jax.device_get(variables), image[None])
    return np.asarray(out["embedding"][0], np.float64), np.asarray(out["reg"][0], np.float64)


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
    embedding, reg = reference(run, QUERY)
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
    embedding, _ = reference(run, Path(index.paths[row]))
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


def bomb_png(width: int, height: int) -> bytes:
    """A 1-bit PNG header declaring ``width`` x ``height`` pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_bad_inputs_get_clear_errors_and_the_server_keeps_serving(served):
    client = served[-1]
    truncated = QUERY.read_bytes()[:400]
    cases = {
        "not an image": (post(client, b"rock and roll", "notes.png"), "notes.png: not an image"),
        "truncated": (post(client, truncated, "cut.png"), "cut.png: truncated or corrupt image"),
        "bomb": (post(client, bomb_png(9_000, 9_000), "bomb.png"), "more than the 50,000,000 allowed"),
        "no image": (post(client, k=3), "multipart field 'image'"),
        "bad k": (post(client, QUERY.read_bytes(), k="many"), "k must be a whole number"),
        "k too big": (post(client, QUERY.read_bytes(), k=10_000), "k must be between 1 and"),
        "bad pixel size": (post(client, QUERY.read_bytes(), pixel_size=-2), "pixel_size must be a positive"),
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
    _, reg = reference(run, QUERY)
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

"""The search page's ASGI app: a trained model and a saved index behind a JSON API and a static page.

Routes:

* ``GET /``: the page (``static/index.html``, ``app.js``, ``style.css`` under ``/static``);
* ``POST /api/search``: multipart, the query in field ``image`` (PNG, TIFF, JPEG; 8 or 16 bits; any
  size) or the database row ``image_id`` (then never its own hit), optional ``k`` and ``pixel_size``
  (µm); answers ``{"query", "hits", "prediction"}``;
* ``GET /api/images/{image_id}``: a PNG thumbnail of a database row;
* ``GET /api/queries/{query_id}/figure.png``: the 3×3 retrieval figure of a recent query;
* ``GET /api/health``.

Safety: a request body over ``max_upload_bytes`` gets 413; an upload that is no image, a truncated one,
or one that declares more than ``max_pixels`` pixels (a decompression bomb) gets 400 with the reason.
Images are only ever read from the index's own paths, chosen by row number, never by a path from the
request. The model and index load once; queries go through a :class:`Searcher`, compiled at start.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rockir_jax.data.metadata import read_metadata
from rockir_jax.images import decode_image, read_image, resize_image
from rockir_jax.retrieval.index import RetrievalIndex
from rockir_jax.retrieval.loading import LoadedModel
from rockir_jax.retrieval.report import FIGURE_IMAGE_SIZE
from rockir_jax.retrieval.search import (
    QUERY_BATCH_SIZES,
    SCALED_PERMEABILITY,
    QueryResult,
    Searcher,
    check_comparable,
    predicted_metadata,
    query_labels,
    write_query_figure,
)

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 20 * 2**20
MAX_PIXELS = 50_000_000
"""Largest upload in pixels: a 7000² slice; a 16-bit one of that size is 100 MB decoded."""
THUMBNAIL_SIZE = 160
RECENT_QUERIES = 64
"""Queries whose figure can still be drawn (each keeps its embedding and a 224² image)."""
# The page loads nothing from elsewhere and runs no inline script.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

ASGIApp = Callable[[MutableMapping[str, Any], Callable, Callable], Awaitable[None]]


class BadRequest(ValueError):
    """A request the API refuses with 400 and this message."""


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: answers 413 to a request whose body exceeds ``limit`` bytes, whether it says
    so in ``Content-Length`` or not, without reading more than ``limit`` bytes of it."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send) -> None:
        message = f"request body larger than {self.limit:,} bytes"
        await JSONResponse({"error": message}, status_code=413)(scope, receive, send)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _optional(array: np.ndarray | None, row: int) -> float | None:
    return None if array is None else _finite_or_none(float(array[row]))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _parse_k(text: Any, limit: int) -> int:
    if text is None or text == "":
        return min(10, limit)
    if not isinstance(text, str):
        raise BadRequest("k must be a form field, not a file")
    try:
        k = int(text)
    except ValueError:
        raise BadRequest(f"k must be a whole number, got {text!r}") from None
    if not 1 <= k <= limit:
        raise BadRequest(f"k must be between 1 and {limit}, got {k}")
    return k


def _parse_pixel_size(text: Any) -> float | None:
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise BadRequest("pixel_size must be a form field, not a file")
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"pixel_size must be a number of µm, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise BadRequest(f"pixel_size must be a positive number of µm, got {text!r}")
    return value


def _parse_row(text: str, n: int) -> int:
    if not text.isdigit() or int(text) >= n:
        raise BadRequest(f"image_id must be a database row between 0 and {n - 1}, got {text!r}")
    return int(text)


class _SearchPage:
    """The app's state and handlers (one per app)."""

    def __init__(
        self,
        searcher: Searcher,
        metadata_csv: str | Path | None,
        perm_unit: str,
        max_pixels: int,
    ):
        self.searcher = searcher
        self.index: RetrievalIndex = searcher.index
        self.model: LoadedModel = searcher.model
        spec = self.model.target_spec
        self.metadata = None if metadata_csv is None else read_metadata(metadata_csv, spec)
        self.perm_unit = perm_unit
        self.max_pixels = max_pixels
        self._recent: OrderedDict[str, tuple[QueryResult, np.ndarray]] = OrderedDict()
        self._figures: dict[str, bytes] = {}
        self._recent_lock = threading.Lock()
        self._figure_lock = threading.Lock()  # matplotlib draws one figure at a time
        self.thumbnail = functools.lru_cache(maxsize=2048)(self._thumbnail)

    # -------------------------------------------------------------------------------------- handlers

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)

    async def health(self, request: Request) -> Response:
        identity = {key: self.model.identity.get(key) for key in ("model", "backbone", "image_size", "step")}
        return JSONResponse(
            {"status": "ok", "images": len(self.index), "max_hits": self.searcher.max_hits, "model": identity}
        )

    async def search(self, request: Request) -> Response:
        try:
            async with request.form(max_files=1, max_fields=8) as form:
                k = _parse_k(form.get("k"), self.searcher.max_hits)
                pixel_size = _parse_pixel_size(form.get("pixel_size"))
                upload, image_id = form.get("image"), form.get("image_id")
                if isinstance(upload, UploadFile):
                    name = Path(upload.filename or "upload").name
                    data = await upload.read()
                    return JSONResponse(
                        await run_in_threadpool(self._search_upload, name, data, k, pixel_size)
                    )
            if isinstance(image_id, str):
                row = _parse_row(image_id, len(self.index))
                return JSONResponse(await run_in_threadpool(self._search_row, row, k, pixel_size))
            raise BadRequest("send the query image in the multipart field 'image' (or a database image_id)")
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, status_code=400)

    async def image(self, request: Request) -> Response:
        row = request.path_params["image_id"]
        if not 0 <= row < len(self.index):
            raise HTTPException(404, f"no image {row}: the index has rows 0 to {len(self.index) - 1}")
        try:
            png = await run_in_threadpool(self.thumbnail, row)
        except Exception as err:  # the index outlived its image file: any decoder error is the same
            message = f"image {row} cannot be read on the server ({type(err).__name__})"
            raise HTTPException(404, message) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def figure(self, request: Request) -> Response:
        query_id = request.path_params["query_id"]
        with self._recent_lock:
            recent = self._recent.get(query_id)
        if recent is None:
            raise HTTPException(404, "no such recent query: search again to draw its figure")
        png = await run_in_threadpool(self._figure, query_id, *recent)
        return Response(png, media_type="image/png")

    # ------------------------------------------------------------------------------------------- work

    def _search_upload(self, name: str, data: bytes, k: int, pixel_size: float | None) -> dict[str, Any]:
        try:
            pixels = decode_image(io.BytesIO(data), self.max_pixels)
        except UnidentifiedImageError:
            raise BadRequest(f"{name}: not an image (PNG, TIFF or JPEG expected)") from None
        except (ValueError, Image.DecompressionBombError) as err:  # too many pixels, unsupported mode
            raise BadRequest(f"{name}: {err}") from None
        except Exception as err:  # any other decoder failure: the data ends early or is damaged
            raise BadRequest(f"{name}: truncated or corrupt image ({type(err).__name__}: {err})") from None
        sample, reservoir, pixel_size = query_labels(name, self.metadata, self.model.target_spec, pixel_size)
        result = self.searcher.search(
            resize_image(pixels, self.model.image_size),
            k,
            name=name,
            sample=sample,
            reservoir=reservoir,
            pixel_size=pixel_size,
        )
        return self._answer(result, resize_image(pixels, FIGURE_IMAGE_SIZE))

    def _search_row(self, row: int, k: int, pixel_size: float | None) -> dict[str, Any]:
        path = self.index.paths[row]
        try:
            pixels = decode_image(path)
        except Exception as err:  # the index outlived its image file
            raise BadRequest(f"image {row} cannot be read on the server ({type(err).__name__})") from None
        sample, _, pixel_size = query_labels(
            path, self.metadata, self.model.target_spec, pixel_size, sample=str(self.index.samples[row])
        )
        result = self.searcher.search(
            resize_image(pixels, self.model.image_size),
            k,
            name=Path(path).name,
            sample=sample,
            reservoir=str(self.index.reservoirs[row]),
            pixel_size=pixel_size,
            row=row,
        )
        return self._answer(result, resize_image(pixels, FIGURE_IMAGE_SIZE))

    def _answer(self, result: QueryResult, image: np.ndarray) -> dict[str, Any]:
        query_id = uuid.uuid4().hex
        with self._recent_lock:
            self._recent[query_id] = (result, image)
            while len(self._recent) > RECENT_QUERIES:
                old, _ = self._recent.popitem(last=False)
                self._figures.pop(old, None)
        index = self.index
        hits = [
            {
                "rank": rank,
                "distance": float(distance),
                "image_id": int(row),
                "name": Path(index.paths[row]).name,
                "sample": str(index.samples[row]),
                "reservoir": str(index.reservoirs[row]),
                "true_porosity": _optional(index.true_porosity, row),
                "true_permeability": _optional(index.true_permeability, row),
                "predicted_porosity": _optional(index.predicted_porosity, row),
                "predicted_permeability": _optional(index.predicted_permeability, row),
                "thumbnail": f"/api/images/{int(row)}",
            }
            for rank, (row, distance) in enumerate(zip(result.rows, result.distances, strict=True), 1)
        ]
        predicted = predicted_metadata(result, self.model)
        prediction = None
        if predicted is not None:
            prediction = {
                "porosity": predicted[0],
                "permeability": predicted[1],
                "permeability_unit": SCALED_PERMEABILITY if result.pixel_size is None else self.perm_unit,
                "scaled": result.pixel_size is None,
                "pixel_size": result.pixel_size,
            }
        preview = "data:image/png;base64," + base64.b64encode(_png(image)).decode()
        query = {
            "id": query_id,
            "name": result.name,
            "sample": result.sample,
            "reservoir": result.reservoir,
            "image_id": result.row,
            "preview": preview,
            "figure": f"/api/queries/{query_id}/figure.png",
        }
        return {"query": query, "hits": hits, "prediction": prediction}

    def _thumbnail(self, row: int) -> bytes:
        return _png(read_image(self.index.paths[row], THUMBNAIL_SIZE))

    def _figure(self, query_id: str, result: QueryResult, image: np.ndarray) -> bytes:
        with self._figure_lock:
            if query_id not in self._figures:
                buffer = io.BytesIO()
                write_query_figure(buffer, result, image, self.searcher, self.perm_unit)
                self._figures[query_id] = buffer.getvalue()
            return self._figures[query_id]


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


def create_app(
    model: LoadedModel,
    index: RetrievalIndex,
    *,
    metadata_csv: str | Path | None = None,
    perm_unit: str = "mD",
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    batch_sizes: tuple[int, ...] = QUERY_BATCH_SIZES,
    warm_up: bool = True,
) -> Starlette:
    """The search page of ``model`` over ``index`` (refused unless ``model`` built it).

    Args:
        model: the trained model (:func:`rockir_jax.retrieval.loading.load_model`).
        index: a saved index of that model (:func:`rockir_jax.retrieval.search.open_index`).
        metadata_csv: the metadata CSV giving a query's reservoir and pixel size from its sample.
        perm_unit: unit of the CSV's permeability, shown with physical predictions.
        max_upload_bytes: larger request bodies get 413.
        max_pixels: larger images (by their header) get 400 before they are decoded.
        batch_sizes: padded query batch sizes (see :class:`Searcher`).
        warm_up: compile every batch size now rather than on the first queries.
    """
    check_comparable(index, model, "the index")
    searcher = Searcher(model, index, batch_sizes=batch_sizes)
    if warm_up:
        searcher.warm_up()
    page = _SearchPage(searcher, metadata_csv, perm_unit, max_pixels)
    routes = [
        Route("/", page.page),
        Route("/api/health", page.health),
        Route("/api/search", page.search, methods=["POST"]),
        Route("/api/images/{image_id:int}", page.image),
        Route("/api/queries/{query_id}/figure.png", page.figure),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.add_middleware(BodySizeLimit, limit=max_upload_bytes)
    app.state.searcher = searcher
    return app

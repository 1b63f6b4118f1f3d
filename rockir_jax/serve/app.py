"""The search page's ASGI app: a trained model and a saved index behind a JSON API and a static page.

Routes: ``GET /`` (the page), ``POST /api/search``, ``GET /api/images/{image_id}``,
``GET /api/queries/{query_id}/figure.png`` and ``GET /api/health``. Every failure is a JSON ``error``,
never a traceback; uploads, hosts and origins are checked as docs/serve-hardening.md describes. The model
and index load once; queries go through a :class:`Searcher`, compiled at start. Routes and safety rules in
detail: docs/internals.md.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import functools
import io
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rockir_jax.data.metadata import read_metadata
from rockir_jax.images import ImageTooLarge, decode_image, read_image, resize_image
from rockir_jax.retrieval.index import RetrievalIndex
from rockir_jax.retrieval.loading import LoadedModel
from rockir_jax.retrieval.report import FIGURE_IMAGE_SIZE
from rockir_jax.retrieval.search import (
    PIXEL_SIZES_UM,
    QUERY_BATCH_SIZES,
    SCALED_PERMEABILITY,
    QueryResult,
    Searcher,
    check_comparable,
    check_pixel_size,
    predicted_metadata,
    query_labels,
    write_query_figure,
)

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 20 * 2**20
MAX_PIXELS = 50_000_000
"""Largest upload in pixels: a 7000² slice; a 16-bit one of that size is 98 MB decoded."""
MAX_DECODED_BYTES = 100 * 2**20
"""Largest upload in decoded bytes (Pillow's: 1 a pixel for 8-bit grey, 2 for 16-bit, 4 for colour): a
7000² 16-bit slice fits, a 7000² RGB one does not. JPEGs count at the scale they decode at."""
MAX_DECODES = 2
"""Images decoded at once; other requests wait their turn (a 7000² 16-bit slice needs ~150 MB)."""
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""Host names always allowed (any port); others only by ``allowed_hosts``."""
THUMBNAIL_SIZE = 160
RECENT_QUERIES = 64
"""Queries whose figure can still be drawn (each keeps its embedding and a 224² image)."""
# On every response: the page loads nothing from elsewhere, runs no inline script and is framed by none.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

ASGIApp = Callable[[MutableMapping[str, Any], Callable, Callable], Awaitable[None]]


class BadRequest(ValueError):
    """A request the API refuses with ``status`` (400) and this message."""

    status = 400


class TooLarge(BadRequest):
    """An upload whose decoded pixels exceed the budget: 413."""

    status = 413


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


def _json_refusal(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every HTTP response (pages, scripts, JSON, errors)."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                extra = [(k, v) for k, v in self.headers if k not in present]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _split_host(host: str) -> tuple[str, str] | None:
    """(name, port) of a ``Host`` value, ``name[:port]`` or ``[v6][:port]``, lowercased; None if malformed
    (``port`` is ``""`` when absent)."""
    host = host.lower()
    if host.startswith("["):
        end = host.find("]")
        name, rest = (host[: end + 1], host[end + 1 :]) if end > 0 else ("", "")
    else:
        name, colon, port = host.partition(":")
        rest = colon + port
    port = rest[1:]
    if not name or (rest and not (rest.startswith(":") and port.isascii() and port.isdigit())):
        return None
    if not name.isascii() or any(c in name for c in "/\\@?#% "):
        return None
    return name, port


class RequestGuard:
    """ASGI middleware: a ``Host`` allow-list (400 otherwise: a page reached through another name, as in
    DNS rebinding) and same-origin POSTs (403 otherwise: another site's form or script).

    ``hosts`` are names (any port) or ``name:port``; IPv6 addresses in brackets (``[::1]``, a bare
    ``::1`` is bracketed). A POST's ``Origin``, when sent, must be this server's scheme, host and port,
    and its ``Sec-Fetch-Site``, when sent, ``same-origin`` (or ``none``: typed by the user).
    """

    def __init__(self, app: ASGIApp, hosts: Iterable[str]):
        self.app = app
        self.names: set[str] = set()
        self.names_with_port: set[tuple[str, str]] = set()
        for host in hosts:
            text = f"[{host}]" if host.count(":") > 1 and not host.startswith("[") else host
            parsed = _split_host(text)
            if parsed is None:
                raise ValueError(f"allowed host {host!r} is no host name or address (optionally :port)")
            if parsed[1]:
                self.names_with_port.add(parsed)
            else:
                self.names.add(parsed[0])

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        host = _split_host(headers.get("host", ""))
        if host is None or not (host[0] in self.names or host in self.names_with_port):
            shown = headers.get("host", "")[:100]
            message = f"host {shown!r} is not served here (rockir-serve --allowed-host adds a name)"
            await _json_refusal(400, message)(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and not self._same_origin(scope, host, headers):
            message = "requests that change anything must come from the same origin as the page"
            await _json_refusal(403, message)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _same_origin(scope, host: tuple[str, str], headers: dict[str, str]) -> bool:
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = headers.get("origin")
        if origin is None:
            return True  # not a browser (curl, a script): nothing to forge
        defaults = {"http": "80", "https": "443"}
        try:
            parts = urlsplit(origin)
            theirs = _split_host(parts.netloc)
        except ValueError:
            return False
        if theirs is None or parts.scheme != scope.get("scheme", "http") or parts.path not in ("", "/"):
            return False
        own_port = host[1] or defaults.get(parts.scheme, "")
        return theirs[0] == host[0] and (theirs[1] or defaults.get(parts.scheme, "")) == own_port


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _optional(array: np.ndarray | None, row: int) -> float | None:
    return None if array is None else _finite_or_none(float(array[row]))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _shown(text: str) -> str:
    """``text`` quoted for a message, cut short: a request can send megabytes."""
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}… ({len(text):,} characters)"


def _parse_k(text: Any, limit: int) -> int:
    if text is None or text == "":
        return min(10, limit)
    if not isinstance(text, str):
        raise BadRequest("k must be a form field, not a file")
    try:
        k = int(text)
    except ValueError:
        raise BadRequest(f"k must be a whole number, got {_shown(text)}") from None
    if not 1 <= k <= limit:
        raise BadRequest(f"k must be between 1 and {limit}, got {k}")
    return k


def _parse_pixel_size(text: Any) -> float | None:
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise BadRequest("pixel_size must be a form field, not a file")
    try:
        return check_pixel_size(float(text))
    except ValueError:
        low, high = PIXEL_SIZES_UM
        message = f"pixel_size must be a number of µm between {low:g} and {high:g}, got {_shown(text)}"
        raise BadRequest(message) from None


def _row(text: str, n: int) -> int | None:
    """The database row ``text`` names (ASCII digits, below ``n``), else None."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(n)) + 2:
        return None
    row = int(text)
    return row if row < n else None


def _parse_row(text: str, n: int) -> int:
    row = _row(text, n)
    if row is None:
        raise BadRequest(f"image_id must be a database row between 0 and {n - 1}, got {_shown(text)}")
    return row


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on other C libraries."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


class _SearchPage:
    """The app's state and handlers (one per app)."""

    def __init__(
        self,
        searcher: Searcher,
        metadata_csv: str | Path | None,
        perm_unit: str,
        max_pixels: int,
        max_decoded_bytes: int,
        max_decodes: int,
    ):
        self.searcher = searcher
        self.index: RetrievalIndex = searcher.index
        self.model: LoadedModel = searcher.model
        spec = self.model.target_spec
        self.metadata = None if metadata_csv is None else read_metadata(metadata_csv, spec)
        self.perm_unit = perm_unit
        self.max_pixels = max_pixels
        self.max_decoded_bytes = max_decoded_bytes
        # The decoder may shrink an upload while it stays 3× the largest size it is resized to.
        self.decode_size = max(self.model.image_size, FIGURE_IMAGE_SIZE)
        self._decodes = threading.BoundedSemaphore(max_decodes)
        self._recent: OrderedDict[str, tuple[QueryResult, np.ndarray]] = OrderedDict()
        self._figures: dict[str, bytes] = {}
        self._recent_lock = threading.Lock()
        self._figure_lock = threading.Lock()  # matplotlib draws one figure at a time
        self.thumbnail = functools.lru_cache(maxsize=2048)(self._thumbnail)

    # -------------------------------------------------------------------------------------- handlers

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

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
                if upload is not None and image_id is not None:
                    raise BadRequest("give either an image or an image_id, not both")
                if isinstance(upload, UploadFile):
                    name = Path(upload.filename or "upload").name[:200] or "upload"
                    return JSONResponse(
                        await run_in_threadpool(self._search_upload, name, upload.file, k, pixel_size)
                    )
            if isinstance(image_id, str):
                row = _parse_row(image_id, len(self.index))
                return JSONResponse(await run_in_threadpool(self._search_row, row, k, pixel_size))
            raise BadRequest("send the query image in the multipart field 'image' (or a database image_id)")
        except BadRequest as err:
            return _json_refusal(err.status, str(err))

    async def image(self, request: Request) -> Response:
        text = request.path_params["image_id"]
        row = _row(text, len(self.index))
        if row is None:
            raise HTTPException(
                404, f"no image {_shown(text)}: the index has rows 0 to {len(self.index) - 1}"
            )
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

    def _decode_upload(self, name: str, file: BinaryIO) -> np.ndarray:
        """The upload's pixels, shrunk early (:func:`decode_image`'s ``min_size``), a few at a time."""
        with self._decodes:
            file.seek(0)
            try:
                return decode_image(
                    file, self.max_pixels, max_bytes=self.max_decoded_bytes, min_size=self.decode_size
                )
            except ImageTooLarge as err:
                raise TooLarge(f"{name}: {err}") from None
            except (ValueError, OSError) as err:  # not PNG/TIFF/JPEG, too many pixels, pages, corrupt
                raise BadRequest(f"{name}: {err}") from None
            finally:
                # glibc keeps freed memory in its heaps (rockir-serve's set-up even asks it to): what a
                # large image took goes back to the system now (a few ms; see docs/serve-hardening.md).
                if _MALLOC_TRIM is not None:
                    _MALLOC_TRIM(0)

    def _search_upload(self, name: str, file: BinaryIO, k: int, pixel_size: float | None) -> dict[str, Any]:
        pixels = self._decode_upload(name, file)
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
            with self._decodes:
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

    def _prediction(self, result: QueryResult) -> dict[str, Any] | None:
        predicted = predicted_metadata(result, self.model)
        if predicted is None:
            return None
        for what, value in zip(("porosity", "permeability"), predicted, strict=True):
            if not math.isfinite(value):
                size = "no pixel size" if result.pixel_size is None else f"{result.pixel_size:g} µm pixels"
                raise BadRequest(f"the predicted {what} for {size} is not a finite number ({value})")
        return {
            "porosity": predicted[0],
            "permeability": predicted[1],
            "permeability_unit": SCALED_PERMEABILITY if result.pixel_size is None else self.perm_unit,
            "scaled": result.pixel_size is None,
            "pixel_size": result.pixel_size,
        }

    def _answer(self, result: QueryResult, image: np.ndarray) -> dict[str, Any]:
        if not np.all(np.isfinite(result.distances)):
            raise BadRequest("the model's embedding of this image is not finite")
        prediction = self._prediction(result)
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
        with self._decodes:
            return _png(read_image(self.index.paths[row], THUMBNAIL_SIZE))

    def _figure(self, query_id: str, result: QueryResult, image: np.ndarray) -> bytes:
        with self._figure_lock:
            if query_id not in self._figures:
                buffer = io.BytesIO()
                write_query_figure(buffer, result, image, self.searcher, self.perm_unit)
                self._figures[query_id] = buffer.getvalue()
            return self._figures[query_id]


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return _json_refusal(exc.status_code, str(exc.detail))


async def _internal_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the server's log (uvicorn logs the exception re-raised after this answer).
    return _json_refusal(500, "internal server error")


class _SearchApp(Starlette):
    """Starlette with :class:`SecurityHeaders` outside everything, its 500 answers included."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def create_app(
    model: LoadedModel,
    index: RetrievalIndex,
    *,
    metadata_csv: str | Path | None = None,
    perm_unit: str = "mD",
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
    max_decodes: int = MAX_DECODES,
    allowed_hosts: Iterable[str] = (),
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
        max_decoded_bytes: images whose decoded pixels take more bytes get 413 before they are decoded.
        max_decodes: images decoded at once (more wait their turn).
        allowed_hosts: host names (or ``name:port``) served besides :data:`LOOPBACK_HOSTS`.
        batch_sizes: padded query batch sizes (see :class:`Searcher`).
        warm_up: compile every batch size now rather than on the first queries.
    """
    if max_decodes < 1:
        raise ValueError(f"max_decodes must be at least 1, got {max_decodes}")
    check_comparable(index, model, "the index")
    searcher = Searcher(model, index, batch_sizes=batch_sizes)
    if warm_up:
        searcher.warm_up()
    page = _SearchPage(searcher, metadata_csv, perm_unit, max_pixels, max_decoded_bytes, max_decodes)
    routes = [
        Route("/", page.page),
        Route("/api/health", page.health),
        Route("/api/search", page.search, methods=["POST"]),
        Route("/api/images/{image_id}", page.image),
        Route("/api/queries/{query_id}/figure.png", page.figure),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [
        Middleware(RequestGuard, hosts=[*LOOPBACK_HOSTS, *allowed_hosts]),
        Middleware(BodySizeLimit, limit=max_upload_bytes),
    ]
    handlers = {HTTPException: _http_error, Exception: _internal_error}
    app = _SearchApp(routes=routes, middleware=middleware, exception_handlers=handlers)
    app.state.searcher = searcher
    return app

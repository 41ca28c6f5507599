"""The FastAPI application: routes, limits and error answers. See :mod:`dsh.serve`."""

from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import DataError, InputError, UserError, one_line
from ..index import warm_up_kernels
from ..runtime.searcher import Searcher
from ..utils.imageio import max_pixels_setting
from .image_files import MEDIA_TYPES, ImageFiles, recorded_image_root
from .items import ItemWriter

log = logging.getLogger("dsh.serve")
STATIC = Path(__file__).with_name("static")


@dataclass
class ServeSettings:
    """Limits and options of a server.

    - ``token``: when set, every ``/api`` route needs ``Authorization: Bearer <token>`` (401 otherwise);
    - ``max_upload_bytes``: the largest request body (413 past it), checked before anything is parsed;
    - ``max_pixels``: the largest image (413 past it), read from the image header before decoding;
    - ``max_k``: the largest ``k`` (and ``max_radius``, default ``nbits``) a client may ask for (422 past it);
    - ``max_images``: images per ``/api/encode`` request;
    - ``map_image``: a PNG (e.g. the UMAP of the index) that the page shows, if any;
    - ``image_roots``: folders whose image files may be shown as items' pictures, besides the one the index records
      it was built from (:mod:`dsh.serve.image_files`); no other file is ever sent;
    - ``max_active``: requests in progress at once (``/healthz`` aside); past it a request is answered 503 at
      once instead of queueing without bound (:class:`ActiveLimit`);
    - ``writable``: whether ``POST /api/items`` and ``DELETE /api/items/{id}`` change the index (403 otherwise);
    - ``data_dir``: where uploaded images are kept (needed when ``writable``; it becomes an image root);
    - ``new_ids``: ``n -> int64[n]`` ids for new items that no other writer will give (for several services over
      one distributed index); by default the index's ``next_id`` where it has one, else one more than its
      largest id, taken under the service's write lock.
    """

    token: str | None = None
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int | None = None
    max_k: int = 1000
    max_radius: int | None = None
    max_images: int = 64
    map_image: str | None = None
    image_roots: tuple[str, ...] = ()
    max_active: int = 64
    writable: bool = False
    data_dir: str | None = None
    new_ids: Callable[[int], np.ndarray] | None = None


class HexQuery(BaseModel):
    hex: str = Field(description="a code in hex, most significant bit first, as `dsh report` prints it")


class ErrorDetail(BaseModel):
    status: int
    message: str = Field(description="one line; server paths cut down to file names")


class ErrorBody(BaseModel):
    error: ErrorDetail


# every error answer has one shape, declared for every route, so that clients (and the schema's own checks) know it
ERRORS: dict[int | str, dict[str, Any]] = {str(code): {"model": ErrorBody, "description": what} for code, what in (
    (400, "bad input (an empty upload, an image that cannot be used)"), (401, "missing or wrong token"),
    (403, "a change asked of a read-only server"), (404, "no such item, or no image or map to show"),
    (413, "a body, image or batch over the server's limits"),
    (415, "not an image, or a body of another media type"), (422, "invalid parameters or body"),
    (503, "busy: too many requests in progress; retry"), (500, "internal error (details in the server's log)"),
    (507, "the server's disk refused the write: nothing was changed"))}
IMAGE_ANSWER = {"200": {"description": "the image file", "content": {t: {} for t in sorted(set(MEDIA_TYPES.values()))}}}
SEARCH_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                       "properties": {"image": {"type": "string", "format": "binary"}}}},
    "application/json": {"schema": HexQuery.model_json_schema()}}}}
ITEMS_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "label": {"type": "array", "items": {"type": "string"}, "description": "a class id per image, or empty"},
        "class": {"type": "array", "items": {"type": "string"}, "description": "a class name per image, or empty"},
        "key": {"type": "array", "items": {"type": "string"}, "description": "a key of yours per image, or empty"},
    }}}}}}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before it is parsed, whether it
    declares its length or streams it in chunks."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _error(413, f"request body over the limit of {self.limit:,} bytes")(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await _error(413, f"request body over the limit of {self.limit:,} bytes")(scope, receive, send)


class _TooLarge(Exception):
    pass


class ActiveLimit:
    """ASGI middleware: at most ``limit`` HTTP requests in progress at once; one more is answered 503 JSON with
    ``Retry-After: 1`` at once, so a burst cannot pile up work and memory without bound. ``/healthz`` is never
    counted nor refused: a busy server still says it is alive. Idle connections hold no request and cost nothing
    here (the connection count is uvicorn's ``limit_concurrency``)."""

    def __init__(self, app, limit: int):
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") == "/healthz":
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            busy = _error(503, f"busy: {self.limit} requests in progress; retry shortly")
            busy.headers["Retry-After"] = "1"
            return await busy(scope, receive, send)
        self.active += 1  # one event loop: no lock needed between the check and the count
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def _status_of(e: UserError) -> int:
    text = str(e)
    if isinstance(e, DataError) and "cannot write" in text:
        return 507  # the server's disk (full, or a file size limit): nothing was changed
    if "over the limit of" in text and "pixels" in text:
        return 413
    if isinstance(e, DataError) and ("cannot decode image" in text or "cannot read an image" in text):
        return 415
    return 422 if isinstance(e, InputError) else 400


def create_app(searcher: Searcher, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app over ``searcher`` (whose encoder is loaded here, once)."""
    from fastapi_offline import FastAPIOffline

    settings = settings or ServeSettings()
    encoder = searcher.encoder  # load the model now, not on the first request
    warm_up_kernels()  # and the search kernels: a compile later would stall every request meanwhile
    if settings.max_pixels is not None:
        encoder.max_pixels = max_pixels_setting(settings.max_pixels)
    index = searcher.index
    max_radius = settings.max_radius if settings.max_radius is not None else index.nbits
    info = _info(searcher, settings)
    recorded = recorded_image_root(index.metadata)
    items = ItemWriter(index, settings) if settings.writable else None
    data_root = [items.data_dir] if items is not None else []
    image_files = ImageFiles([*([recorded] if recorded else []), *settings.image_roots, *data_root])

    def now():
        """The index as it is now: a snapshot, where the index takes changes while it is searched (a reader of an
        index file takes in a writer's changes first)."""
        return index.snapshot() if hasattr(index, "snapshot") else index

    def current() -> Searcher:
        """A searcher over the index as it is now: a search and the lookup of its results see the same items."""
        snap = now()
        return searcher if snap is index else Searcher(snap, encoder, force=True, name=searcher.name)

    app = FastAPIOffline(title="dsh", version=__version__,
                         description="Deep supervised hashing: image -> binary code -> nearest items by Hamming "
                                     "distance.", responses=ERRORS)
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    app.add_middleware(ActiveLimit, limit=settings.max_active)  # outermost: a refusal reads no body

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        parts = []
        for err in e.errors()[:3]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "request"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts))

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError):
        return _error(_status_of(e), _client_message(e))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        log.exception("internal error on %s", request.url.path)  # the traceback stays in the server's log
        return _error(500, "internal error")

    def authorised(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
            raise HTTPException(401, "missing or wrong token (send Authorization: Bearer <token>)")

    api = [Depends(authorised)]

    def check_k_radius(k: int | None, radius: int | None) -> None:
        if radius is not None and not 0 <= radius <= max_radius:
            raise HTTPException(422, f"radius must be between 0 and {max_radius}, got {radius}")
        if radius is None and not 1 <= k <= settings.max_k:
            raise HTTPException(422, f"k must be between 1 and {settings.max_k}, got {k}")

    async def read_upload(upload: UploadFile) -> bytes:
        data = await upload.read()
        if not data:
            raise HTTPException(400, f"the uploaded file {upload.filename or ''!s} is empty".replace("  ", " "))
        return data

    def item_dict(n) -> dict[str, Any]:
        d = n.to_dict()
        if n.path is not None:
            d["image_url"] = f"/api/items/{n.id}/image"
        return d

    def search_answer(result) -> dict[str, Any]:
        return {"query": {"code": f"0x{result.hex}", "hex": result.hex, "bits": result.bits},
                "results": [item_dict(n) for n in result.neighbors]}

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict:
        return {"status": "ok", "items": now().ntotal}

    @app.get("/api/info", dependencies=api, tags=["service"])
    def api_info() -> dict:
        return {**info, "index": {**info["index"], "items": now().ntotal}}

    @app.post("/api/search", dependencies=api, tags=["search"], openapi_extra=SEARCH_BODY)
    async def api_search(request: Request, k: int = Query(10, description="neighbours to return"),
                         radius: int | None = Query(None, description="every item within this Hamming distance "
                                                                      "instead of k")):
        """An uploaded image (multipart field ``image``) or JSON ``{"hex": "..."}`` -> the query's code and its
        nearest items, ordered by (distance, id)."""
        check_k_radius(k, radius)
        kind = request.headers.get("content-type", "")
        if kind.startswith("application/json"):
            try:
                body = HexQuery.model_validate(await request.json())
            except ValueError as e:
                raise HTTPException(422, f"expected JSON {{\"hex\": \"...\"}} ({one_line(e, 120)})") from None
            results = await run_in_threadpool(current().search_hex, [body.hex], k, radius)
        elif kind.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise HTTPException(422, "multipart field 'image' (a file) is missing")
            data = await read_upload(upload)
            try:
                results = await run_in_threadpool(lambda: current().search([data], k=k, radius=radius))
            except UserError as e:
                raise _naming_upload(e, data, upload.filename) from None
        else:
            raise HTTPException(415, "send an image as multipart/form-data (field 'image') or JSON {\"hex\": ...}")
        return search_answer(results[0])

    async def encode_uploads(data: list[bytes], names: list[str | None]):
        try:
            return await run_in_threadpool(encoder.encode, data)
        except UserError as e:
            # which upload it was (the error path alone decodes them one by one), named by its file name
            for d, name in zip(data, names):
                try:
                    await run_in_threadpool(encoder.prepare, [d])
                except UserError as one:
                    raise _naming_upload(one, d, name) from None
            raise e

    @app.post("/api/encode", dependencies=api, tags=["encode"])
    async def api_encode(image: list[UploadFile] = File(..., description="one or more image files"),
                         u: bool = Query(False, description="also return the real outputs u")):
        """Images (multipart field ``image``, repeated) -> their codes (hex and bits) and optionally ``u``."""
        if len(image) > settings.max_images:
            raise HTTPException(413, f"at most {settings.max_images} images per request, got {len(image)}")
        data = [await read_upload(f) for f in image]
        enc = await encode_uploads(data, [f.filename for f in image])
        from ..codes.bits import to_binary_string, to_hex

        hexes, bits = to_hex(enc.codes, encoder.nbits), to_binary_string(enc.codes, encoder.nbits)
        out = [{"code": f"0x{h}", "hex": h, "bits": b} for h, b in zip(hexes, bits)]
        if u:
            for row, values in zip(out, enc.u.tolist()):
                row["u"] = values
        return {"nbits": encoder.nbits, "codes": out}

    # asked once: a remote index reads its whole catalog to answer (a writable service gives every item a record)
    has_catalog = info["index"]["has_catalog"] or settings.writable

    def record_of(item_id: int) -> dict[str, Any]:
        if not has_catalog or item_id < 0:
            raise HTTPException(404, f"no item {item_id}")
        try:
            return current().index.lookup([item_id])[0]
        except KeyError:
            raise HTTPException(404, f"no item {item_id}") from None

    @app.get("/api/items/{item_id}", dependencies=api, tags=["items"])
    def api_item(item_id: int) -> dict:
        rec = record_of(item_id)
        if rec.get("path") is not None:
            rec["image_url"] = f"/api/items/{item_id}/image"
        return rec

    @app.get("/api/items/{item_id}/image", dependencies=api, tags=["items"], response_class=FileResponse,
             responses=IMAGE_ANSWER)
    def api_item_image(item_id: int):
        # only a path the catalog lists for this id is opened, and only an image file under an allowed root: the
        # catalog comes with the index, which may be someone else's file
        found = image_files.find(record_of(item_id).get("path"))
        if found is None:
            raise HTTPException(404, f"item {item_id} has no image file")
        return FileResponse(found[0], media_type=found[1])

    def writer() -> ItemWriter:
        if items is None:
            raise HTTPException(403, "this server is read-only: start it with dsh serve --writable to add or "
                                     "remove items")
        return items

    @app.post("/api/items", dependencies=api, tags=["items"], status_code=201, openapi_extra=ITEMS_BODY)
    async def api_add(request: Request):
        """Add images to the index (multipart: ``image`` repeated, and optionally ``label`` (a class id), ``class``
        (a class name) and ``key`` once per image, in the same order; an empty value means none). Each image is
        encoded, kept in the data folder, and its item logged durably before the answer: ``{"items": [{"id",
        "image_url", ...its record}]}``."""
        w = writer()
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(415, "send images as multipart/form-data (field 'image', repeated)")
        form = await request.form()
        uploads = form.getlist("image")
        if not uploads or any(isinstance(u, str) for u in uploads):
            raise HTTPException(422, "multipart field 'image' (one or more files) is missing")
        if len(uploads) > settings.max_images:
            raise HTTPException(413, f"at most {settings.max_images} images per request, got {len(uploads)}")
        fields = {name: form.getlist(name) for name in ("label", "class", "key")}
        labels, keys = w.check_fields(len(uploads), fields)
        data = [await read_upload(u) for u in uploads]
        enc = await encode_uploads(data, [u.filename for u in uploads])
        ids = await run_in_threadpool(w.add, enc.codes, data, labels, keys)
        records = current().index.lookup(ids)
        return {"items": [{**r, "image_url": f"/api/items/{r['id']}/image"} for r in records]}

    @app.delete("/api/items/{item_id}", dependencies=api, tags=["items"])
    def api_remove(item_id: int) -> dict:
        """Remove one item (and its kept image): ``{"removed": id}``; 404 where there is no such item."""
        if not writer().remove(item_id):
            raise HTTPException(404, f"no item {item_id}")
        return {"removed": item_id}

    @app.get("/api/map.png", dependencies=api, tags=["service"], response_class=FileResponse,
             responses={"200": {"description": "the map", "content": {"image/png": {}}}})
    def api_map():
        if not settings.map_image or not os.path.isfile(settings.map_image):
            raise HTTPException(404, "this server has no map image")
        return FileResponse(settings.map_image, media_type="image/png")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.searcher, app.state.settings = searcher, settings
    app.state.image_roots = image_files.roots
    return app


def _naming_upload(e: UserError, data: bytes, filename: str | None) -> UserError:
    """``e`` with the image it names as ``<N bytes>`` named by the upload's file name instead."""
    if not filename:
        return e
    text = str(e).replace(f"<{len(data)} bytes>", f"upload {os.path.basename(filename)!r}", 1)
    try:
        return type(e)(text)
    except TypeError:  # a UserError kind with other arguments: keep it as it is
        return e


def _client_message(e: UserError) -> str:
    """The error's one line, with server paths cut down to their file names (a client learns no server path)."""
    words = []
    for w in one_line(e, 300).split(" "):
        core = w.strip(",;:()'\"")
        words.append(w.replace(core, os.path.basename(core)) if "/" in core and len(core) > 1 else w)
    return " ".join(words)


def _info(searcher: Searcher, settings: ServeSettings) -> dict[str, Any]:
    """What /api/info answers; computed once (the class table scans the whole index: its catalog and, where that
    has classes, its codes, which every backend with a catalog offers as ``index.codes`` in id order)."""
    from ..eval.report import class_code_table

    enc, index = searcher.encoder, searcher.index
    table = None
    catalog = index.catalog
    if catalog is not None and catalog.label_kind == "class" and index.ntotal:
        labels = np.asarray(catalog.labels)
        known = labels >= 0
        if known.any():
            names = catalog.class_names or None
            table = class_code_table(np.asarray(index.codes)[known], labels[known], index.nbits, names).to_dict()
    return {
        "dsh_version": __version__,
        "model": {"nbits": enc.nbits, "input_shape": list(enc.input_shape), "class_names": enc.class_names,
                  "fingerprint": enc.fingerprint, "backend": enc.backend, "file": Path(enc.source).name},
        "index": {"items": index.ntotal, "nbits": index.nbits, "has_catalog": catalog is not None},
        "class_table": table,
        "map_image": "/api/map.png" if settings.map_image and os.path.isfile(settings.map_image) else None,
        "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_k": settings.max_k,
                   "max_radius": settings.max_radius if settings.max_radius is not None else index.nbits,
                   "max_pixels": max_pixels_setting(settings.max_pixels), "max_images": settings.max_images},
        "auth": settings.token is not None,
        "writable": settings.writable,
    }

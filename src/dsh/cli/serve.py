"""``dsh serve``: the HTTP API and web page over an index, searched by image."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

from ..errors import DataError, InputError
from .common import add_encoder_flags, add_index_source, add_model_source


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API and web page: search the index by image")
    add_index_source(p, "serve")
    add_model_source(p, False, "(default: the one the index was built with)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on the API (or set $DSH_TOKEN)")
    p.add_argument("--map", help="a PNG (e.g. a UMAP of the index) for the page (default: RUN/plots/umap.png)")
    p.add_argument("--image-root", action="append", default=[], metavar="DIR",
                   help="a folder whose image files may be shown as items' pictures, besides the one the index was "
                        "built from (repeatable); no other file is ever served")
    p.add_argument("--writable", action="store_true",
                   help="take changes: POST /api/items adds uploaded images, DELETE /api/items/ID removes one "
                        "(behind --token when one is set); an index file is claimed by this one writer and its "
                        "changes logged beside it (F.log), folded into it on shutdown")
    p.add_argument("--fold-after", type=int, default=None, metavar="N",
                   help="--writable over an index file: fold the logged changes into the file (in the background; "
                        "searches and changes go on) once N items are added or 2,000 removed since the last fold "
                        "(default 200,000)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="--writable: where uploaded images are kept and served from (default: beside the index "
                        "file, F.data/)")
    p.add_argument("--max-upload-mb", type=int, default=10, help="largest request body in MB (default 10)")
    p.add_argument("--max-pixels", type=int, help="largest image in pixels (default: $DSH_MAX_PIXELS or 50M)")
    p.add_argument("--max-k", type=int, default=1000, help="largest k a client may ask for (default 1000)")
    p.add_argument("--max-active", type=int, default=64,
                   help="requests in progress at once (default 64); past it a request is answered 503 JSON at once "
                        "(/healthz is never refused)")
    p.add_argument("--max-connections", type=int, default=1000,
                   help="open connections, idle ones included (default 1000); past it new requests get uvicorn's "
                        "plain 503 (keep it under the open-files limit, ulimit -n)")
    p.add_argument("--force", action="store_true", help="serve with a model other than the index's")
    p.add_argument("--quiet", action="store_true", help="no access log")
    add_encoder_flags(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve import ServeSettings, create_app
    except ModuleNotFoundError as e:
        raise DataError(f"dsh serve needs the {e.name} package: pip install 'dsh[serve]'") from None
    from ..index.live import FoldPolicy, LiveIndex
    from ..index.store import IndexSpec, is_dsh_index_file
    from ..runtime.searcher import Searcher

    # the flags first, before the model and the index are loaded
    for flag, value, low in (("--max-upload-mb", args.max_upload_mb, 1), ("--max-k", args.max_k, 1),
                             ("--max-pixels", args.max_pixels, 1), ("--port", args.port, 0),
                             ("--max-active", args.max_active, 1), ("--max-connections", args.max_connections, 1)):
        if value is not None and value < low:
            raise DataError(f"{flag} must be >= {low}, got {value}")
    if args.port > 65535:
        raise DataError(f"--port must be at most 65535, got {args.port}")
    if args.map is not None and not Path(args.map).is_file():
        raise DataError(f"--map {args.map}: no such image file")
    token = args.token or os.environ.get("DSH_TOKEN") or None
    spec = IndexSpec.from_flags("serve", index=args.index, store=args.store, uri=args.uri,
                                collection=args.collection, timeout=args.timeout)
    data_dir = _data_dir(args, spec)
    where = spec
    if args.fold_after is not None and (args.fold_after < 1 or not args.writable or spec.is_milvus):
        raise InputError("--fold-after must be a positive number of items" if args.fold_after < 1 else
                         "--fold-after is for --writable over an index file")
    if args.writable and not spec.is_milvus:
        policy = FoldPolicy() if args.fold_after is None else FoldPolicy(added=args.fold_after)
        where = LiveIndex.open(spec.location, policy=policy)  # one writer: a second is refused here, in one line
    elif not spec.is_milvus and is_dsh_index_file(spec.location):
        # read-only, following the changes a writer in another process (dsh index add / remove) logs beside it
        where = LiveIndex.open(spec.location, writable=False)
    try:
        searcher = Searcher.open(where, model=args.model or args.run, force=args.force, backend=args.backend,
                                 threads=args.threads, batch_size=args.batch_size, workers=1, resize=args.resize,
                                 tta_flip=args.tta_flip)
    except BaseException:
        if where is not spec:
            where.close(fold=False)
        raise
    map_image = args.map
    if map_image is None and args.run and (Path(args.run) / "plots" / "umap.png").is_file():
        map_image = str(Path(args.run) / "plots" / "umap.png")
    for root in args.image_root:
        if not Path(root).is_dir():
            raise InputError(f"--image-root {root}: no such folder")
    settings = ServeSettings(token=token, max_upload_bytes=args.max_upload_mb * 1024 * 1024,
                             max_pixels=args.max_pixels, max_k=args.max_k, map_image=map_image,
                             image_roots=tuple(args.image_root), max_active=args.max_active,
                             writable=args.writable, data_dir=data_dir)
    app = create_app(searcher, settings)
    roots = ", ".join(map(str, app.state.image_roots)) or "none (no image root: pass --image-root DIR)"
    print(f"dsh serve: item pictures from image files under: {roots}", file=sys.stderr, flush=True)
    host = "127.0.0.1" if args.host == "localhost" else args.host
    if args.writable:
        print(f"dsh serve: writable; uploaded images kept in {data_dir}", file=sys.stderr, flush=True)
    print(f"dsh serve: {searcher.index.ntotal:,} items, model {searcher.encoder.source} "
          f"({searcher.encoder.backend}); open http://{host}:{args.port}/", file=sys.stderr, flush=True)
    try:
        with searcher, _sigterm_as_ctrl_c():
            uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info",
                        access_log=not args.quiet, limit_concurrency=args.max_connections)
    finally:
        if where is not spec:
            where.close()  # a clean stop folds the logged changes into the index file
    return 0


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """SIGTERM (what service managers and ``kill`` send) handled as Ctrl-C. uvicorn shuts down on either and then
    raises the signal again under the handler it found: Python's default for SIGTERM would end the process there,
    before the caller's clean-up (a writable index's fold) runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)



def _data_dir(args: argparse.Namespace, spec) -> str | None:
    """Where a writable service keeps uploaded images: ``--data-dir``, else ``F.data`` beside the index file."""
    if not args.writable:
        if args.data_dir is not None:
            raise InputError("--data-dir is for --writable")
        return None
    if args.data_dir is not None:
        return args.data_dir
    if spec.is_milvus:
        raise InputError("--writable with --store milvus needs --data-dir DIR (a folder every service over the "
                         "collection can read)")
    index = Path(spec.location)
    return str(index.with_name(index.name + ".data"))

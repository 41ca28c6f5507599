"""``dsh serve``: an HTTP API and a web page over a :class:`dsh.runtime.searcher.Searcher` (FastAPI + uvicorn).

:func:`create_app` builds the ASGI app from a searcher and :class:`ServeSettings`; the command line runs it with
uvicorn. The model and the index are loaded once, before the first request; every route is a few lines over the
library (decode and check at the edge, then ``Searcher``), and every error a client can cause is a 4xx JSON answer
``{"error": {"status": ..., "message": ...}}`` with no traceback or server path in it.
"""

from .app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]

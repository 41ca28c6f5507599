"""Bad requests to the HTTP service: the 28 kinds ``tests/serve/test_serve.py`` sends, each its own case here,
and 11 more; each answered with its 4xx status and a one-line JSON error, the server staying healthy."""

from __future__ import annotations

import importlib.util

import pytest

HAVE_SERVE = importlib.util.find_spec("fastapi") is not None
if HAVE_SERVE:  # test_serve.py's app, its fixtures and its 28 bad requests, reused here rather than copied
    from serve import test_serve
    from serve.test_serve import bomb, served  # noqa: F401  (pytest finds fixtures imported into a test module)

# ---------------------------------------------------------------------------------------------------------------
# test_serve.py's 28 kinds of bad request, run here one by one, and more


SERVE_CASES = 28  # test_serve.bad_requests
MORE_HTTP_CASES = 11  # more_bad_requests
needs_serve = pytest.mark.skipif(not HAVE_SERVE, reason="the serve extra is not installed (pip install 'dsh[serve]')")


@pytest.fixture(scope="module")
def serve_cases(served, bomb):
    cases = test_serve.bad_requests(served, bomb)
    assert len(cases) == SERVE_CASES
    return cases


@needs_serve
@pytest.mark.parametrize("i", range(SERVE_CASES))
def test_http_bad_request_from_test_serve(i, serve_cases, served):
    name, call, status = serve_cases[i]
    err = test_serve.is_json_error(call(served["client"]), status, served)
    assert "\n" not in err["message"], name


def more_bad_requests(served):
    png = served["files"][0].read_bytes()
    return [
        ("hex with inner space", lambda c: c.post("/api/search", json={"hex": "0 F"}), 422, "hex"),
        ("hex as a list", lambda c: c.post("/api/search", json={"hex": ["0F"]}), 422, "hex"),
        ("hex missing", lambda c: c.post("/api/search", json={"code": "0F"}), 422, "hex"),
        ("radius not whole", lambda c: c.post("/api/search?radius=1.5", json={"hex": "0F"}), 422, "radius"),
        ("k negative", lambda c: c.post("/api/search?k=-3", json={"hex": "0F"}), 422, "k"),
        ("radius not a number", lambda c: c.post("/api/search?radius=two", json={"hex": "0F"}), 422, "radius"),
        ("id not a number", lambda c: c.get("/api/items/abc"), 422, "item_id"),
        ("encode a text file", lambda c: c.post("/api/encode", files={"image": ("a.txt", b"hello", "text/plain")}),
         415, "a.txt"),
        ("encode one good one bad", lambda c: c.post("/api/encode", files=[("image", ("a.png", png, "image/png")),
                                                                          ("image", ("b.png", png[:50], "image/png"))]),
         415, "b.png"),
        ("JSON body to encode", lambda c: c.post("/api/encode", json={"hex": "0F"}), 422, "image"),
        ("token with the wrong scheme", lambda c: c.get("/api/info", headers={"Authorization": "Basic x"}), 401, ""),
    ]


@needs_serve
def test_more_http_bad_requests(served):
    locked = served["locked"]
    cases = more_bad_requests(served)
    assert len(cases) == MORE_HTTP_CASES
    for name, call, status, needle in cases:
        client = locked if "token" in name else served["client"]
        err = test_serve.is_json_error(call(client), status, served)
        assert "\n" not in err["message"], name
        assert needle.lower() in err["message"].lower(), (name, err["message"])
    assert served["client"].get("/healthz").status_code == 200


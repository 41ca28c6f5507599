"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis, the app in-process over ASGI): for every route the
schema lists, generated requests (valid and invalid) never get a 5xx, and every answer is one the schema declares,
in status code, content type and body, on a server without a token and on one with a token, asked with and
without it."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'dsh[serve]')")
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (the dev extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serve.test_serve import TOKEN  # noqa: E402
from serve.test_serve import served as served  # noqa: E402, F401  (the fixture: an index and an app over it)

from dsh.serve import ServeSettings, create_app  # noqa: E402

CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# examples per route and case; the whole file stays about a minute on 2 cores
EXAMPLES = 80


@pytest.fixture(scope="module")
def apps(served):  # noqa: F811
    from dsh.runtime.searcher import Searcher

    locked = create_app(Searcher.open(served["index"]), ServeSettings(token=TOKEN, max_upload_bytes=200_000,
                                                                       max_k=50, max_images=4))
    return {"open": served["client"].app, "locked": locked}


def fuzz(app, headers: dict[str, str] | None) -> dict[str, int]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    routes = {op.path for op in (r.ok() for r in schema.get_all_operations())}
    assert {"/api/search", "/api/encode", "/api/items/{item_id}", "/api/items/{item_id}/image", "/api/info",
            "/healthz"} <= routes, routes
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call(headers=headers)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            case.validate_response(response, checks=CHECKS)

        check()
    print(f"statuses: {dict(sorted(statuses.items()))}")  # shown with pytest -s
    return statuses


def test_open_server_answers_as_its_schema_says(apps):
    statuses = fuzz(apps["open"], None)
    assert statuses.get(200, 0) > 0 and any(400 <= s < 500 for s in statuses), statuses
    assert not any(s >= 500 for s in statuses), statuses


@pytest.mark.parametrize("with_token", [True, False])
def test_locked_server_answers_as_its_schema_says(apps, with_token):
    statuses = fuzz(apps["locked"], {"Authorization": f"Bearer {TOKEN}"} if with_token else None)
    assert not any(s >= 500 for s in statuses), statuses
    if with_token:
        assert statuses.get(200, 0) > 0, statuses
    else:  # only the health check is open
        assert set(statuses) <= {200, 401, 404, 405, 413, 415, 422}, statuses
        assert statuses.get(401, 0) > 0, statuses

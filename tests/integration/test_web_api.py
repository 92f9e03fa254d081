"""The HTTP API (`orchestrator web`) against the real services and an in-process engine."""

from __future__ import annotations

import contextlib
import json as stdlib_json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core import NotSet

from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.web.app import ENDPOINTS, create_app
from orchestrator.web.openapi import document
from tests.support.harness import running_engine

pytestmark = pytest.mark.integration

READ = {"Authorization": "Bearer reader-token-1"}
OPERATE = {"Authorization": "Bearer operator-token-1"}
CALLER_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def waiting_process(key: str, topic: str) -> bytes:
    """start -> a service task nobody works on -> end: instances stay active."""
    nodes = [
        {"id": "s", "type": "start_event"},
        {"id": "work", "type": "service_task", "topic": topic},
        {"id": "e", "type": "end_event"},
    ]
    flows = [{"id": "f1", "from": "s", "to": "work"}, {"id": "f2", "from": "work", "to": "e"}]
    return orjson.dumps({"key": key, "nodes": nodes, "flows": flows})


@contextlib.asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    web = replace(settings, web_tokens="reader-token-1=read,operator-token-1=operator")
    app = create_app(web)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://web") as http:
            yield http


async def test_the_http_api(settings: Settings, topics: set[str]) -> None:
    topics.add("web-work")
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_engine(settings))
        client = await stack.enter_async_context(Client(settings))
        await client.deploy(waiting_process("webflow", "web-work").decode())
        started = [
            (await client.start("webflow", business_key=f"b-{n}")).instance_id for n in range(5)
        ]
        http = await stack.enter_async_context(api(settings))

        # probes need no token
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).json() == {"status": "ready"}

        # auth: none, unknown, wrong role
        assert (await http.get("/api/instances")).status_code == 401
        wrong = {"Authorization": "Bearer not-a-token-at-all"}
        assert (await http.get("/api/instances", headers=wrong)).status_code == 401
        refused = await http.post("/api/instances", json={"process_key": "webflow"}, headers=READ)
        assert refused.status_code == 403

        # definitions
        found = (await http.get("/api/definitions", headers=READ)).json()
        assert [(d["key"], d["version"]) for d in found["items"]] == [("webflow", 1)]
        one = (await http.get("/api/definitions/webflow/1", headers=READ)).json()
        assert one["format"] == "yaml" and "service_task" in one["source"]
        assert (await http.get("/api/definitions/webflow/9", headers=READ)).status_code == 404

        # list, filter, paginate
        page = (await http.get("/api/instances?limit=2", headers=READ)).json()
        assert len(page["items"]) == 2 and page["next_offset"] == 2
        rest = (await http.get("/api/instances?limit=2&offset=4", headers=READ)).json()
        assert len(rest["items"]) == 1 and rest["next_offset"] is None
        everything = (await http.get("/api/instances?process=webflow", headers=OPERATE)).json()
        assert {i["instance_id"] for i in everything["items"]} == set(started)
        by_key = await http.get("/api/instances", params={"business_key": "b-3"}, headers=READ)
        assert [i["instance_id"] for i in by_key.json()["items"]] == [started[3]]
        none = await http.get(
            "/api/instances",
            params={"state": "completed", "has_incident": "false", "version": 1},
            headers=READ,
        )
        assert none.json()["items"] == []
        later = await http.get(
            "/api/instances", params={"started_after": "2999-01-01T00:00:00Z"}, headers=READ
        )
        assert later.json()["items"] == []

        # detail: what admin.describe_instance answers
        detail = (await http.get(f"/api/instances/{started[0]}", headers=READ)).json()
        assert detail["instance_id"] == started[0] and detail["state"] == "active"
        assert [t["node_id"] for t in detail["open_tasks"]] == ["work"]

        # validation: 422 naming the field
        bogus = await http.get("/api/instances?state=bogus", headers=READ)
        assert bogus.status_code == 422 and bogus.json()["field"] == "state"
        zero = await http.get("/api/instances?limit=0", headers=READ)
        assert zero.status_code == 422 and zero.json()["field"] == "limit"
        bad_id = await http.get("/api/instances/not-a-uuid", headers=READ)
        assert bad_id.status_code == 422 and bad_id.json()["field"] == "id"
        assert (await http.get("/api/incidents?open=maybe", headers=READ)).status_code == 422
        bad_body = await http.post("/api/instances", content=b"[1]", headers=OPERATE)
        assert bad_body.status_code == 422 and bad_body.json()["field"] == "body"

        # set variables: the operator role, a non-empty object, the wire's size limit
        path = f"/api/instances/{started[1]}/variables"
        shown = {"variables": {"limit": 500, "html": "<script>x</script>"}}
        assert (await http.post(path, json=shown, headers=READ)).status_code == 403
        set_ok = await http.post(path, json=shown, headers=OPERATE)
        assert set_ok.status_code == 200, set_ok.text
        assert set_ok.json()["names"] == ["html", "limit"]
        after = (await http.get(f"/api/instances/{started[1]}", headers=READ)).json()
        assert after["variables"] == shown["variables"]
        empty = await http.post(path, json={"variables": {}}, headers=OPERATE)
        assert empty.status_code == 422 and empty.json()["field"] == "variables"
        no_scope = await http.post(path, json={**shown, "scope": "nope"}, headers=OPERATE)
        assert no_scope.status_code == 404
        huge = {"variables": {"blob": "x" * 1_100_000}}
        assert (await http.post(path, json=huge, headers=OPERATE)).status_code == 413

        # start and cancel through the API
        made = await http.post(
            "/api/instances",
            json={"process_key": "webflow", "business_key": "via-http", "variables": {"n": 1}},
            headers={**OPERATE, "traceparent": CALLER_TRACE},
        )
        assert made.status_code == 201, made.text
        new_id = made.json()["instance_id"]
        cancelled = await http.post(
            f"/api/instances/{new_id}/cancel", json={"reason": "test"}, headers=OPERATE
        )
        assert cancelled.status_code == 200, cancelled.text
        gone = (await http.get(f"/api/instances/{new_id}", headers=READ)).json()
        assert gone["state"] == "cancelled" and gone["variables"] == {"n": 1}
        assert gone["traceparent"] == CALLER_TRACE  # the HTTP caller's trace
        again = await http.post(f"/api/instances/{new_id}/cancel", headers=OPERATE)
        assert again.status_code == 200  # a second cancel changes nothing
        missing = await http.post(
            "/api/incidents/00000000-0000-0000-0000-000000000000/retry", headers=OPERATE
        )
        assert missing.status_code == 404
        assert (await http.get("/api/incidents", headers=READ)).json()["items"] == []

        # the document lists every endpoint
        doc = (await http.get("/openapi.json")).json()
        assert {"/api/instances", "/api/incidents", "/api/definitions"} <= set(doc["paths"])


#: Query values a client might send: well-formed, malformed and hostile.
_values = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["true", "false", "1", "0", "", "active", "2026-01-01T00:00:00", "\x00"]),
)
_QUERY_NAMES = {
    "/api/instances": [
        "process", "version", "state", "business_key", "has_incident",
        "started_after", "started_before", "limit", "offset", "other",
    ],
    "/api/incidents": ["process", "instance", "open", "limit", "offset"],
    "/api/definitions": ["key", "limit", "offset"],
}  # fmt: skip


def fuzzed_queries() -> list[tuple[str, dict[str, str]]]:
    """Generated by hypothesis (no shrinking: the requests are sent afterwards, from the
    event loop the engine runs in)."""
    drawn: list[tuple[str, dict[str, str]]] = []

    @hypothesis_settings(
        max_examples=150, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.data())
    def draw(data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(sorted(_QUERY_NAMES)))
        names = st.sampled_from(_QUERY_NAMES[path])
        drawn.append((path, data.draw(st.dictionaries(names, _values, max_size=4))))

    draw()
    return drawn


async def test_fuzzed_list_queries_never_fail_the_server(settings: Settings) -> None:
    async with api(settings) as http:
        for path, params in fuzzed_queries():
            answer: Any = await http.get(path, params=params, headers=READ)
            assert answer.status_code < 500, (path, params, answer.text)
            assert answer.status_code in (200, 422), (path, params, answer.text)


def schema_cases(per_operation: int) -> list[Any]:
    """Requests schemathesis generates from the published OpenAPI document, for every
    operation: valid ones and (negative mode) ones that break the schema. Drawn first, sent
    afterwards from the event loop the engine runs in."""
    schema = schemathesis.openapi.from_dict(document(ENDPOINTS))
    drawn: list[Any] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis_settings(
                max_examples=per_operation,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(operation.as_strategy(mode))
            def draw(case: Any) -> None:
                drawn.append(case)

            with contextlib.suppress(Unsatisfiable):  # nothing to break: no parameters
                draw()
    return drawn


async def test_requests_generated_from_the_openapi_document_never_fail_the_server(
    settings: Settings, topics: set[str]
) -> None:
    topics.add("web-work")
    cases = schema_cases(per_operation=20)
    statuses: dict[tuple[str, str], set[int]] = {}
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_engine(settings))
        client = await stack.enter_async_context(Client(settings))
        await client.deploy(waiting_process("webflow", "web-work").decode())
        http = await stack.enter_async_context(api(settings))
        for case in cases:
            body = case.body
            if not isinstance(body, bytes):
                # the standard library writes any integer (and NaN): the server must refuse them
                body = None if isinstance(body, NotSet) else stdlib_json.dumps(body).encode()
            answer = await http.request(
                case.method,
                case.formatted_path,
                params=case.query or None,
                content=body,
                headers={"content-type": "application/json", **OPERATE},
            )
            request = (case.method, case.formatted_path, case.query, str(case.body)[:300])
            assert answer.status_code < 500, (request, answer.text)
            statuses.setdefault((case.method, case.path), set()).add(answer.status_code)
    # Every operation was reached, and the checks refused what broke the schema.
    assert len(statuses) == len(ENDPOINTS)
    assert 422 in statuses[("GET", "/api/instances")]
    assert 422 in statuses[("POST", "/api/instances/{id}/variables")]

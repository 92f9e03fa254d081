"""The Starlette application: `create_app(settings)`; its routes are `ENDPOINTS`.

Reads go to PostgreSQL through the store (read-only transactions); actions are the client's
commands over AMQP, the same ones the CLI sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.daemon import admin
from orchestrator.daemon.commands import READ_LOCK_TIMEOUT_MS, READ_STATEMENT_TIMEOUT_MS
from orchestrator.definitions.bpmn.detect import reads_as_xml
from orchestrator.errors import (
    BusinessKeyConflict,
    CommandTimeout,
    DefinitionError,
    IdempotencyConflict,
    InvalidCommand,
    InvalidState,
    NotFound,
    OrchestratorError,
    ServiceUnavailable,
)
from orchestrator.store.errors import RETRYABLE
from orchestrator.store.store import Session, Store
from orchestrator.tracing import valid_traceparent
from orchestrator.web import pages
from orchestrator.web.auth import Role, bearer, parse_tokens, permits, role_of
from orchestrator.web.diagram import diagram_for
from orchestrator.web.openapi import Endpoint, document
from orchestrator.web.params import (
    CancelBody,
    DefinitionId,
    DefinitionQuery,
    IncidentQuery,
    InstanceId,
    InstanceQuery,
    Invalid,
    MessageBody,
    Page,
    RetryBody,
    StartBody,
    VariablesBody,
    invalid,
    parse,
)

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
#: As the CLI: with no engine consuming commands this long, an action fails at once (503).
NO_ENGINE_AFTER_S = 2.0
_STATUS: tuple[tuple[type[OrchestratorError], int], ...] = (
    (NotFound, 404),
    (InvalidState, 409),
    (IdempotencyConflict, 409),
    (BusinessKeyConflict, 409),
    (InvalidCommand, 422),
    (DefinitionError, 422),
    (CommandTimeout, 503),
    (ServiceUnavailable, 503),
)


class TooLarge(Exception):
    """A request body over the wire's limit (ORCH_MAX_REPORT_BYTES): answered 413."""


def json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content), status_code=status, media_type="application/json", headers=headers
    )


def error(status: int, message: str, field: str | None = None) -> Response:
    content = {"error": message} | ({"field": field} if field is not None else {})
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return json(content, status, headers)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _client(request: Request) -> Client:
    client: Client = request.app.state.client
    return client


def _reading(request: Request) -> AbstractAsyncContextManager[Session]:
    return _store(request).transaction(
        readonly=True,
        lock_timeout_ms=READ_LOCK_TIMEOUT_MS,
        statement_timeout_ms=READ_STATEMENT_TIMEOUT_MS,
    )


def _query(request: Request, model: type[M]) -> M:
    return parse(model, dict(request.query_params))


def _page(items: list[dict[str, Any]], page: Page) -> Response:
    full = len(items) == page.limit
    return json(
        {
            "items": items,
            "limit": page.limit,
            "offset": page.offset,
            "next_offset": page.offset + page.limit if full else None,
        }
    )


async def _body(request: Request, model: type[M]) -> M:
    """The JSON object of the request, at most the wire's size limit."""
    limit: int = request.app.state.settings.max_report_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise TooLarge
    if not raw.strip():
        return parse(model, {})
    try:
        values = orjson.loads(bytes(raw))
    except orjson.JSONDecodeError:
        raise Invalid("the body is not JSON", "body") from None
    if not isinstance(values, dict):
        raise Invalid("the body must be a JSON object", "body")
    return parse(model, values)


# --- reads -----------------------------------------------------------------------------------


async def list_definitions(request: Request) -> Response:
    query = _query(request, DefinitionQuery)
    async with _reading(request) as db:
        return _page(await db.web_definitions(query.key, query.limit, query.offset), query)


async def _definition(request: Request) -> tuple[DefinitionId, dict[str, Any]]:
    """The definition the path names, or NotFound."""
    wanted = parse(DefinitionId, dict(request.path_params))
    async with _reading(request) as db:
        found = await db.web_definition(wanted.key, wanted.version)
    if found is None:
        raise NotFound(f"definition {wanted.key} version {wanted.version} does not exist")
    return wanted, found


async def get_definition(request: Request) -> Response:
    _, found = await _definition(request)
    found["format"] = "bpmn" if reads_as_xml(str(found["source"])) else "yaml"
    return json(found)


async def get_diagram(request: Request) -> Response:
    """The BPMN XML the page draws: as deployed when it has a diagram, else generated."""
    wanted, found = await _definition(request)
    # parsing a large file takes a while: not on the event loop
    drawn = await asyncio.to_thread(diagram_for, str(found["source"]), wanted.key)
    return json(
        {
            "key": wanted.key,
            "version": wanted.version,
            "generated": drawn.generated,
            "diagram_id": drawn.diagram_id,
            "xml": drawn.xml,
        }
    )


async def whoami(request: Request) -> Response:
    """The role of the presented token: the page shows actions to operators only."""
    role = role_of(bearer(request.headers.get("authorization")), request.app.state.tokens)
    return json({"role": role})


async def list_instances(request: Request) -> Response:
    query = _query(request, InstanceQuery)
    async with _reading(request) as db:
        return _page(await db.web_instances(query.filters(), query.limit, query.offset), query)


async def get_instance(request: Request) -> Response:
    wanted = parse(InstanceId, dict(request.path_params))
    async with _reading(request) as db:
        return json(await admin.describe_instance(db, wanted.id))


async def list_incidents(request: Request) -> Response:
    query = _query(request, IncidentQuery)
    async with _reading(request) as db:
        found = await db.web_incidents(
            query.process, query.instance, query.open, query.limit, query.offset
        )
    return _page(found, query)


# --- actions: the client's commands ----------------------------------------------------------


async def start_instance(request: Request) -> Response:
    body = await _body(request, StartBody)
    started = await _client(request).start(
        body.process_key,
        variables=body.variables,
        business_key=body.business_key,
        idempotency_key=body.idempotency_key,
        version=body.version,
        # The HTTP caller's W3C trace, if it sent one (a bad one is ignored, as on the wire).
        traceparent=valid_traceparent(request.headers.get("traceparent")),
    )
    result = {"instance_id": started.instance_id, "created": started.created}
    return json(result, 201 if started.created else 200)


async def cancel_instance(request: Request) -> Response:
    wanted = parse(InstanceId, dict(request.path_params))
    body = await _body(request, CancelBody)
    return json(await _client(request).cancel(wanted.id, reason=body.reason))


async def set_variables(request: Request) -> Response:
    wanted = parse(InstanceId, dict(request.path_params))
    body = await _body(request, VariablesBody)
    return json(await _client(request).set_variables(wanted.id, body.variables, scope=body.scope))


async def retry_incident(request: Request) -> Response:
    wanted = parse(InstanceId, dict(request.path_params))
    body = await _body(request, RetryBody)
    return json(await _client(request).retry(incident_id=wanted.id, retries=body.retries))


async def correlate_message(request: Request) -> Response:
    body = await _body(request, MessageBody)
    result = await _client(request).correlate(
        body.name, body.correlation_key, variables=body.variables, message_id=body.message_id
    )
    return json(result)


# --- probes ----------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return json({"status": "ok"})


async def readyz(request: Request) -> Response:
    if await _store(request).answers(timeout=2.0):
        return json({"status": "ready"})
    return error(503, "the database does not answer")


async def openapi(request: Request) -> Response:
    return json(document(ENDPOINTS))


_UUID = {"type": "string", "format": "uuid"}
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/healthz", healthz, "the process is up", role=None),
    Endpoint("GET", "/readyz", readyz, "the database answers", role=None),
    Endpoint("GET", "/openapi.json", openapi, "this document", role=None),
    Endpoint(
        "GET", "/api/definitions", list_definitions, "deployed definitions", query=DefinitionQuery
    ),
    Endpoint(
        "GET",
        "/api/definitions/{key}/{version}",
        get_definition,
        "a definition with its source",
        path_params=(("key", {"type": "string"}), ("version", {"type": "integer", "minimum": 1})),
    ),
    Endpoint(
        "GET",
        "/api/definitions/{key}/{version}/diagram",
        get_diagram,
        "its BPMN XML with a diagram (generated when deployed without one)",
        path_params=(("key", {"type": "string"}), ("version", {"type": "integer", "minimum": 1})),
    ),
    Endpoint("GET", "/api/whoami", whoami, "the role of the presented token"),
    Endpoint(
        "GET", "/api/instances", list_instances, "instances, newest first", query=InstanceQuery
    ),
    Endpoint(
        "GET", "/api/instances/{id}", get_instance, "an instance", path_params=(("id", _UUID),)
    ),
    Endpoint(
        "GET", "/api/incidents", list_incidents, "incidents, newest first", query=IncidentQuery
    ),
    Endpoint(
        "POST", "/api/instances", start_instance, "start an instance", "operator", body=StartBody
    ),
    Endpoint(
        "POST",
        "/api/instances/{id}/cancel",
        cancel_instance,
        "cancel an active instance",
        "operator",
        body=CancelBody,
        path_params=(("id", _UUID),),
    ),
    Endpoint(
        "POST",
        "/api/instances/{id}/variables",
        set_variables,
        "set variables of an active instance",
        "operator",
        body=VariablesBody,
        path_params=(("id", _UUID),),
    ),
    Endpoint(
        "POST",
        "/api/incidents/{id}/retry",
        retry_incident,
        "resolve an incident and run its task again",
        "operator",
        body=RetryBody,
        path_params=(("id", _UUID),),
    ),
    Endpoint(
        "POST",
        "/api/messages",
        correlate_message,
        "correlate a message",
        "operator",
        body=MessageBody,
    ),
)


def _guarded(
    endpoint: Endpoint, tokens: list[tuple[bytes, Role]]
) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint behind its token check, its errors as JSON answers (never a 500 for a
    bad request)."""

    async def run(request: Request) -> Response:
        if endpoint.role is not None:
            role = role_of(bearer(request.headers.get("authorization")), tokens)
            if role is None:
                return error(401, "a bearer token is required")
            if not permits(role, endpoint.role):
                return error(403, f"this needs the {endpoint.role} role")
        try:
            response: Response = await endpoint.handler(request)
        except Invalid as exc:
            return error(422, exc.error, exc.field)
        except ValidationError as exc:  # a wire command's own limit
            problem = invalid(exc)
            return error(422, problem.error, problem.field)
        except TooLarge:
            return error(413, "the body is too large")
        except OrchestratorError as exc:
            status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 502)
            return error(status, str(exc))
        except RETRYABLE as exc:
            log.warning("%s %s: %r", request.method, request.url.path, exc)
            return error(503, "the database is unavailable")
        return response

    return run


def create_app(settings: Settings, bpmn_js: Path | None = None) -> Starlette:
    """The application; its lifespan opens a store (a small pool) and a client. `bpmn_js`:
    where the page's diagram library is (default: ORCH_WEB_BPMN_JS, else the checkout's)."""
    if bpmn_js is None:
        bpmn_js = Path(settings.web_bpmn_js) if settings.web_bpmn_js else pages.BPMN_JS
    tokens = parse_tokens(settings.web_tokens)
    if not tokens:
        log.warning("ORCH_WEB_TOKENS is not set: every /api request will be refused")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = await Store.open(
            settings.database_url,
            engine_id="web",
            outbox_claim_ms=settings.outbox_claim_ms,
            size=4,
            limits=settings.session_limits(),
            application_name="orchestrator web",
        )
        client = Client(settings, name="orchestrator-web", no_engine_after=NO_ENGINE_AFTER_S)
        try:
            await client.connect()
            app.state.store, app.state.client = store, client
            yield
        finally:
            await client.close()
            await store.close()

    routes: list[BaseRoute] = [
        Route(e.path, _guarded(e, tokens), methods=[e.method], name=e.path) for e in ENDPOINTS
    ]
    routes += pages.routes(bpmn_js)
    app = Starlette(
        routes=routes, lifespan=lifespan, middleware=[Middleware(pages.SecurityHeaders)]
    )
    app.state.settings = settings
    app.state.tokens = tokens
    return app


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the application under uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")

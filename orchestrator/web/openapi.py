"""The OpenAPI 3.1 document, built from the route table (`/openapi.json`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from orchestrator.web.auth import Role

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
    "required": ["error"],
}


@dataclass(frozen=True)
class Endpoint:
    """One route: what it does, who may call it, what it takes."""

    method: str
    path: str
    handler: Callable[..., Any]
    summary: str
    #: The role it needs; None: no token at all.
    role: Role | None = "read"
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    #: Path parameters and their JSON Schemas.
    path_params: tuple[tuple[str, dict[str, Any]], ...] = ()


def document(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {"title": "orchestrator", "version": "1", "description": "docs/http-api.md"},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _ERROR},
        },
    }


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in endpoint.path_params
    ]
    if endpoint.query is not None:
        for name, schema in endpoint.query.model_json_schema()["properties"].items():
            description = schema.pop("description", "")
            schema.pop("title", None)
            parameters.append(
                {"name": name, "in": "query", "required": False, "schema": schema}
                | ({"description": description} if description else {})
            )
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    responses: dict[str, Any] = {"200": {"description": "OK"}}
    if parameters or endpoint.body is not None:
        responses["422"] = {"description": "a parameter is invalid"} | error
    operation: dict[str, Any] = {"summary": endpoint.summary, "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    if endpoint.role is not None:
        operation["security"] = [{"bearer": []}]
        operation["x-role"] = endpoint.role
        responses["401"] = {"description": "no token, or an unknown one"} | error
        responses["403"] = {"description": f"the token's role is not {endpoint.role}"} | error
    if endpoint.body is not None:
        schema = endpoint.body.model_json_schema()
        schema.pop("title", None)
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": schema}},
        }
    return operation

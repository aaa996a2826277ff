"""The OpenAPI 3.1 document, built from the routes and the pydantic models they declare."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable

from flask import Blueprint, Flask, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.api.schemas import Problem

bp = Blueprint("openapi", __name__)

_ERROR_TEXT = {
    400: "Malformed request", 401: "Missing, invalid, expired or revoked token", 403: "Forbidden",
    404: "Not found", 409: "Conflict", 413: "Too large", 415: "Not application/json",
    422: "Breaks a rule of the contract", 503: "Broker or database unavailable",
}


def documented(
    summary: str,
    *,
    body: type[BaseModel] | None = None,
    responses: dict[int, type[BaseModel] | None] | None = None,
    errors: tuple[int, ...] = (),
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Callable[[Callable], Callable]:
    """Attach what the OpenAPI document says about a view; the view's behaviour is its own."""

    def decorate(view: Callable) -> Callable:
        view.openapi = {
            "summary": summary, "body": body, "responses": responses or {200: None},
            "errors": errors, "query": query or {}, "headers": headers or {},
        }
        return view

    return decorate


def _path(rule: str) -> str:
    return re.sub(r"<(?:[a-z_]+:)?([a-z_]+)>", r"{\1}", rule)


def build_document(app: Flask) -> dict[str, Any]:
    """Return the OpenAPI document of ``app``."""
    operations: list[tuple[str, str, Callable]] = []
    models: set[type[BaseModel]] = {Problem}
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        info = getattr(view, "openapi", None)
        if info is None:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operations.append((_path(rule.rule), method.lower(), view))
        if info["body"]:
            models.add(info["body"])
        models.update(m for m in info["responses"].values() if m)
    _, schemas = models_json_schema(
        [(m, "validation" if m.model_config.get("extra") == "forbid" else "serialization") for m in models],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict] = {}
    uses = Counter(view.__name__ for _, _, view in operations)
    for path, method, view in sorted(operations, key=lambda op: op[:2]):
        operation = _operation(path, view)
        if uses[view.__name__] > 1:  # one view serves several methods: operationIds must be unique
            operation["operationId"] = f"{view.__name__}_{method}"
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Postroom", "version": "1", "description": "Mail and discussion groups over HTTP and AMQP."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(path: str, view: Callable) -> dict[str, Any]:
    info = view.openapi
    operation: dict[str, Any] = {"summary": info["summary"], "operationId": view.__name__}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{([a-z_]+)}", path)
    ]
    parameters += [{"name": n, "in": "query", "required": False, "description": d, "schema": {"type": "string"}}
                   for n, d in info["query"].items()]
    parameters += [{"name": n, "in": "header", "required": False, "description": d, "schema": {"type": "string"}}
                   for n, d in info["headers"].items()]
    if parameters:
        operation["parameters"] = parameters
    if info["body"]:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(info["body"])}}}
    responses: dict[str, Any] = {}
    for status, model in info["responses"].items():
        entry: dict[str, Any] = {"description": "Success"}
        if model:
            entry["content"] = {"application/json": {"schema": _ref(model)}}
        responses[str(status)] = entry
    errors = set(info["errors"]) | ({401} if getattr(view, "authenticated", False) else set())
    if info["body"]:
        errors |= {400, 413, 415, 422}
    for status in sorted(errors):
        responses[str(status)] = {
            "description": _ERROR_TEXT.get(status, "Error"),
            "content": {"application/problem+json": {"schema": _ref(Problem)}},
        }
    operation["responses"] = responses
    if getattr(view, "authenticated", False):
        operation["security"] = [{"bearer": []}]
    return operation


@bp.get("/openapi.json")
@documented("This OpenAPI document")
def openapi_document():
    """Serve the OpenAPI document."""
    document = current_app.extensions.get("postroom.openapi")
    if document is None:
        document = current_app.extensions["postroom.openapi"] = build_document(current_app)
    return jsonify(document)

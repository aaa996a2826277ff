"""Turn every error into ``application/problem+json``: services' typed errors, HTTP errors, crashes."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from app.services.errors import ServiceError
from app.store.db import TRANSIENT_ERRORS, database_proxy, reset_connection

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# Stable codes for the HTTP errors werkzeug raises before a view runs.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, title: str, detail: str, **extra: Any) -> Response:
    """Return a problem+json response; every JSON error of the API goes through here."""
    body = {"type": "about:blank", "status": status, "title": title, "detail": detail, "code": code, **extra}
    response = jsonify(body)
    response.status_code = status
    response.mimetype = PROBLEM_JSON
    return response


def _service_error(error: ServiceError) -> Response:
    response = error_response(error.status, error.code, error.title, error.detail, **error.extra)
    response.headers.update(error.headers)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="postroom"'
    if error.status == 503:
        response.headers["Retry-After"] = "1"
    return response


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    code = _HTTP_CODES.get(status, "http_error")
    detail = error.description or error.name
    if status == 413:
        detail = "the request is larger than the server accepts"
        # The rest of the body is never read: the connection cannot carry another request.
        headers = {"Connection": "close"}
    else:
        headers = {}
    response = error_response(status, code, error.name, detail)
    response.headers.update(headers)
    if status == 405 and getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _transient_database_error(error: Exception) -> Response:
    logger.warning("database unavailable during %s %s: %r", request.method, request.path, error)
    # The connection may be dead (server restarted): the next request opens a fresh one.
    reset_connection(database_proxy.obj)
    response = error_response(503, "database_unavailable", "Service unavailable", "the database is unavailable; retry later")
    response.headers["Retry-After"] = "1"
    return response


def _unexpected(error: Exception) -> Response:
    logger.exception("unhandled error in %s %s", request.method, request.path)
    return error_response(500, "internal_error", "Internal server error", "an unexpected error occurred")


def _no_body_no_type(response: Response) -> Response:
    if response.status_code == 204:
        response.headers.pop("Content-Type", None)
    return response


def init_app(app: Flask) -> None:
    """Register the handlers that make every error problem+json."""
    app.after_request(_no_body_no_type)
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(HTTPException, _http_error)
    for error_class in TRANSIENT_ERRORS:
        app.register_error_handler(error_class, _transient_database_error)
    app.register_error_handler(Exception, _unexpected)

"""Read what a request carries: the caller, a JSON body checked against a model, query parameters."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from flask import current_app, g, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from app import rules
from app.services.accounts import Caller
from app.services.errors import BadRequest, Invalid, UnsupportedMediaType, Unauthorized

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_LIMIT = 200
DEFAULT_LIMIT = 50


def services() -> Any:
    """Return the services bound to this app (see ``app.factory``)."""
    return current_app.extensions["postroom"]


def authenticated(view: Callable) -> Callable:
    """Require a valid bearer token; the caller is then ``g.caller``."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing_token", "send 'Authorization: Bearer <token>'")
        g.caller = services().accounts.authenticate(token.strip())
        return view(*args, **kwargs)

    wrapper.authenticated = True  # read by the OpenAPI builder
    return wrapper


def caller() -> Caller:
    """Return the authenticated caller."""
    return g.caller


def json_body(model: type[ModelT]) -> ModelT:
    """Parse the body as UTF-8 JSON and validate it against ``model``; raise a 4xx otherwise."""
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType("unsupported_media_type", "send the body as application/json")
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("unsupported_media_type", "JSON bodies must be UTF-8")
    try:
        raw = request.get_data(cache=True)  # werkzeug enforces MAX_CONTENT_LENGTH here (413)
    except (OSError, ValueError):  # the server could not read the body (e.g. a bad chunk size)
        raise BadRequest("malformed_body", "the request body could not be read") from None
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit and request.input_stream.read(1):
        # A streamed (chunked) body is cut at the limit without an error (werkzeug's
        # LimitedStream.readall): a byte beyond it means the request was too large.
        raise RequestEntityTooLarge()
    try:
        document = rules.parse_json(raw)
    except rules.RuleError as exc:
        # Not JSON at all is a bad request (400); JSON with forbidden characters breaks a rule (422).
        raise (Invalid if exc.code == "invalid_character" else BadRequest)(exc.code, exc.detail) from None
    if not isinstance(document, dict):
        raise Invalid("invalid_request", "the body must be a JSON object")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in err["loc"]) or "/", "message": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        raise Invalid("invalid_request", summary, errors=errors) from None


def int_param(name: str, *, minimum: int = 0) -> int | None:
    """Return an integer query parameter, None when absent; 400 when malformed."""
    value = request.args.get(name)
    if value is None:
        return None
    # isascii: str.isdigit() is also true for digits int() refuses, such as '²'.
    if not (value.isascii() and value.isdigit()) or len(value) > 18 or int(value) < minimum:
        raise BadRequest("invalid_parameter", f"'{name}' must be an integer ≥ {minimum}")
    return int(value)


def limit_param() -> int:
    """Return ``limit``: default 50, clamped to 200; 400 when ≤ 0 or not an integer."""
    value = request.args.get("limit")
    if value is None:
        return DEFAULT_LIMIT
    # Plain ASCII digits only, as for cursors: int() would also take "+5", " 5" or "٣".
    if not (value.isascii() and value.isdigit()) or int(value) <= 0:
        raise BadRequest("invalid_parameter", "'limit' must be a positive integer")
    return min(int(value[:6]), MAX_LIMIT) if len(value) <= 6 else MAX_LIMIT


def bool_param(name: str) -> bool:
    """Return a boolean query parameter (``true``/``false``/``1``/``0``); 400 otherwise."""
    value = request.args.get(name)
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise BadRequest("invalid_parameter", f"'{name}' must be true or false")


MAX_IDEMPOTENCY_KEY = 255


def idempotency_key() -> str | None:
    """Return the ``Idempotency-Key`` header, None when absent; 422 when malformed."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable() or not key.isascii():
        raise Invalid("invalid_idempotency_key", f"Idempotency-Key is 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return key


def rate_limited(view: Callable) -> Callable:
    """Charge the caller one send (429 when spent) and add the RateLimit-* headers."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        limiter = services().limiter
        if not limiter.enabled:
            return view(*args, **kwargs)
        quota = limiter.charge(caller().username)
        response = current_app.make_response(view(*args, **kwargs))
        response.headers.update(quota.headers())
        return response

    return wrapper

"""Typed errors raised by the services; ``app.api.problems`` turns each into problem+json."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A request that cannot be carried out; ``code`` is stable and machine-readable."""

    status = 400
    title = "Bad request"

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}


class BadRequest(ServiceError):
    """Malformed request (not JSON, bad query parameter)."""


class Unauthorized(ServiceError):
    """Missing, bad, expired or revoked credentials."""

    status = 401
    title = "Unauthorized"


class Forbidden(ServiceError):
    """The caller knows the thing exists but may not do this."""

    status = 403
    title = "Forbidden"


class NotFound(ServiceError):
    """No such thing, or the caller may not know it exists."""

    status = 404
    title = "Not found"


class Conflict(ServiceError):
    """The request clashes with what exists."""

    status = 409
    title = "Conflict"


class PayloadTooLarge(ServiceError):
    """A body or request over its configured limit."""

    status = 413
    title = "Payload too large"


class UnsupportedMediaType(ServiceError):
    """Not ``application/json``."""

    status = 415
    title = "Unsupported media type"


class Invalid(ServiceError):
    """Well-formed JSON that breaks a rule of the contract."""

    status = 422
    title = "Unprocessable content"


class Unavailable(ServiceError):
    """A dependency (broker, database) is down or too slow; retry later."""

    status = 503
    title = "Service unavailable"

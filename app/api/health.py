"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint

from app.api.openapi import documented
from app.api.problems import error_response
from app.api.requests import services
from app.api.schemas import Health
from app.store.db import TRANSIENT_ERRORS, database_proxy

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@documented("The process is up", responses={200: Health})
def healthz():
    """Answer 200 while the process runs."""
    return {"status": "ok"}


@bp.get("/readyz")
@documented("Broker and database are reachable", responses={200: Health}, errors=(503,))
def readyz():
    """Answer 200 when the broker connection is up and the database answers, else 503."""
    checks = {}
    if services().needs_broker:
        checks["broker"] = "ok" if services().publisher.is_connected(wait=2.0) else "unreachable"
    try:
        database_proxy.execute_sql("SELECT 1")
        checks["database"] = "ok"
    except TRANSIENT_ERRORS:
        checks["database"] = "unreachable"
    if all(value == "ok" for value in checks.values()):
        return {"status": "ok", "checks": checks}
    failing = ", ".join(name for name, value in checks.items() if value != "ok")
    return error_response(503, "not_ready", "Service unavailable", f"unreachable: {failing}", checks=checks)

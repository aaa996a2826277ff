"""``POST /auth/v1/verify``: check a bearer token for API processes that delegate it."""

from __future__ import annotations

from flask import Blueprint, current_app, request

from app.api.openapi import documented
from app.services.errors import Unauthorized

bp = Blueprint("auth_verify", __name__, url_prefix="/auth/v1")


@bp.post("/verify")
@documented("Who holds this token? (for API processes with POSTROOM_AUTH_URL)", responses={200: None},
            errors=(401,))
def verify():
    """Return the caller of a live token, or 401 problem+json."""
    document = request.get_json(silent=True) or {}
    token = document.get("token")
    if not isinstance(token, str) or not token:
        raise Unauthorized("missing_token", "send {\"token\": \"...\"}")
    caller = current_app.extensions["postroom"].accounts.authenticate(token)
    return {"username": caller.username, "token_id": caller.token_id}

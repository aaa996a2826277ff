"""Bearer tokens: log in, log out, log out everywhere."""

from __future__ import annotations

from flask import Blueprint

from app import wire
from app.api.openapi import documented
from app.api.requests import authenticated, caller, json_body, services
from app.api.schemas import Credentials, TokenOut

bp = Blueprint("tokens", __name__, url_prefix="/v1")


@bp.post("/tokens")
@documented("Log in: exchange a username and password for a bearer token", body=Credentials,
            responses={201: TokenOut}, errors=(401,))
def create_token():
    """Issue a token."""
    data = json_body(Credentials)
    issued = services().accounts.log_in(data.username, data.password)
    return {"token": issued.token, "token_type": "Bearer", "expires_at": wire.format_time(issued.expires_at)}, 201


@bp.delete("/tokens/current")
@authenticated
@documented("Revoke the token of this request", responses={204: None})
def revoke_current():
    """Revoke the caller's token."""
    services().accounts.revoke(caller())
    return "", 204


@bp.delete("/tokens")
@authenticated
@documented("Revoke every token of the caller", responses={204: None})
def revoke_all():
    """Revoke all of the caller's tokens."""
    services().accounts.revoke_all(caller())
    return "", 204

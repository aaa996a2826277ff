"""Users and the caller's own profile: ``/v1/users``, ``/v1/me``."""

from __future__ import annotations

from flask import Blueprint

from datetime import timezone

from app import wire
from app.api.openapi import documented
from app.api.requests import authenticated, caller, json_body, services
from app.api.schemas import MeOut, NewUser, PasswordChange, UserOut
from app.services.errors import NotFound
from app.store import accounts

bp = Blueprint("users", __name__, url_prefix="/v1")


def _user_json(user) -> dict:
    return {"username": user.username, "display_name": user.display_name,
            "created_at": wire.format_time(user.created_at.replace(tzinfo=timezone.utc))}


@bp.post("/users")
@documented("Register a user", body=NewUser, responses={201: UserOut}, errors=(409,))
def register():
    """Create a user account."""
    data = json_body(NewUser)
    user = services().accounts.register(data.username, data.password, data.display_name)
    return _user_json(user), 201


@bp.get("/me")
@authenticated
@documented("The caller, with their unread count", responses={200: MeOut})
def me():
    """Describe the caller."""
    user = accounts.find_user(caller().username)
    if user is None:  # deleted while the token lived
        raise NotFound("user_not_found", "the caller's account no longer exists")
    return {
        "username": user.username,
        "display_name": user.display_name,
        "unread": {"inbox": services().mail.unread(user.username)},
    }


@bp.put("/me/password")
@authenticated
@documented("Change your password; every one of your tokens stops working", body=PasswordChange,
            responses={204: None}, errors=(403,))
def change_password():
    """Change the caller's password."""
    data = json_body(PasswordChange)
    services().accounts.change_password(caller(), data.password, data.new_password)
    return "", 204

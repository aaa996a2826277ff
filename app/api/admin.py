"""Operator endpoints: the dead-letter tool (``/v1/admin``), for ``POSTROOM_ADMIN_USERS`` only."""

from __future__ import annotations

from flask import Blueprint, request

from app.api.openapi import documented
from app.api.requests import authenticated, caller, json_body, limit_param, services
from app.api.schemas import DeadLetterList, RequeueIn, RequeueOut

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


def _tool():
    tool = services().deadletters
    tool.check_admin(caller().username)
    return tool


@bp.get("/dead-letters")
@authenticated
@documented("List dead letters (kind=mail|posts) with their reasons", responses={200: DeadLetterList},
            errors=(403, 422, 503), query={"kind": "mail (default) or posts", "limit": "default 50, at most 200"})
def list_dead_letters():
    """List dead letters without removing them."""
    tool = _tool()
    return {"dead_letters": tool.list(request.args.get("kind", "mail"), limit_param())}


@bp.get("/dead-letters/<message_id>")
@authenticated
@documented("Show one dead letter with its body", responses={200: None}, errors=(403, 404, 503),
            query={"kind": "mail (default) or posts"})
def show_dead_letter(message_id: str):
    """Show a dead letter."""
    tool = _tool()
    return tool.show(request.args.get("kind", "mail"), message_id)


@bp.post("/dead-letters/requeue")
@authenticated
@documented("Send dead letters back to be archived again (all of a kind, or by id)", body=RequeueIn,
            responses={200: RequeueOut}, errors=(403, 503))
def requeue_dead_letters():
    """Requeue dead letters."""
    tool = _tool()
    data = json_body(RequeueIn)
    return tool.requeue(data.kind, data.message_ids)

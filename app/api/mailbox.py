"""Folders: ``/v1/mailbox/inbox`` and ``/v1/mailbox/sent`` with keyset paging."""

from __future__ import annotations

from flask import Blueprint

from app.api.openapi import documented
from app.api.requests import authenticated, bool_param, caller, int_param, limit_param, services
from app.api.schemas import MailPage
from app.services.errors import BadRequest

bp = Blueprint("mailbox", __name__, url_prefix="/v1/mailbox")

_PAGING = {
    "limit": "page size, default 50, at most 200",
    "before": "the `next` of the previous page (newest-first order, the default)",
    "after": "a uid: oldest-first from just above it; `next` continues",
    "unread": "true: only unread mails",
}


def _page(folder: str):
    after, before = int_param("after"), int_param("before")
    if after is not None and before is not None:
        raise BadRequest("invalid_parameter", "use 'after' or 'before', not both")
    views, cursor = services().mail.folder(
        caller().username, folder, limit_param(), after, before, bool_param("unread")
    )
    return {"messages": [v.to_json() for v in views], "next": cursor}


@bp.get("/inbox")
@authenticated
@documented("Your inbox, newest first (or oldest first with after=)", responses={200: MailPage},
            errors=(400,), query=_PAGING)
def inbox():
    """Return a page of the caller's inbox."""
    return _page("inbox")


@bp.get("/sent")
@authenticated
@documented("Your sent mail, newest first (or oldest first with after=)", responses={200: MailPage},
            errors=(400,), query=_PAGING)
def sent():
    """Return a page of the caller's sent folder."""
    return _page("sent")

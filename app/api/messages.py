"""Mail: send, read one, flag, delete for me (``/v1/messages``)."""

from __future__ import annotations

from flask import Blueprint, request

from app import rules
from app.api.openapi import documented
from app.api.requests import authenticated, rate_limited, caller, idempotency_key, json_body, services
from app.api.schemas import Accepted, MailOut, NewMail
from app.services.errors import Invalid
from app.services.mail import Draft

bp = Blueprint("messages", __name__, url_prefix="/v1")

_SEND_ERRORS = (413, 422, 503)


def _draft(data: NewMail) -> Draft:
    return Draft(data.to, data.cc, data.bcc, data.subject, data.body, data.in_reply_to)


def _accepted(message_id: str):
    return {"id": message_id, "status": "accepted"}, 202, {"Location": f"/v1/messages/{message_id}"}


@bp.post("/messages")
@authenticated
@documented("Send a mail", body=NewMail, responses={202: Accepted}, errors=_SEND_ERRORS,
            headers={"Idempotency-Key": "retries with the same key return the same id and send once"})
@rate_limited
def send():
    """Accept a mail for delivery."""
    key = idempotency_key()
    data = json_body(NewMail)
    return _accepted(services().mail.send(caller().username, _draft(data), idempotency_key=key))


@bp.put("/messages/<message_id>")
@authenticated
@documented("Send a mail under an id the client chose (ULID or UUID); retries are safe",
            body=NewMail, responses={202: Accepted}, errors=(409, *_SEND_ERRORS))
@rate_limited
def send_with_id(message_id: str):
    """Accept a mail under a client-chosen id."""
    try:
        canonical = rules.canonical_message_id(message_id)
    except rules.RuleError as exc:
        raise Invalid(exc.code, exc.detail) from None
    data = json_body(NewMail)
    return _accepted(services().mail.send(caller().username, _draft(data), message_id=canonical))


@bp.get("/messages/<message_id>")
@authenticated
@documented("Read one of your mails", responses={200: MailOut}, errors=(404,))
def read_one(message_id: str):
    """Return the caller's copy of a mail."""
    return services().mail.get(caller().username, message_id).to_json()


@bp.put("/messages/<message_id>/read")
@authenticated
@documented("Mark a mail read (for you only)", responses={204: None}, errors=(404,))
def mark_read(message_id: str):
    """Set the caller's read flag."""
    services().mail.mark_read(caller().username, message_id, True)
    return "", 204


@bp.delete("/messages/<message_id>/read")
@authenticated
@documented("Mark a mail unread (for you only)", responses={204: None}, errors=(404,))
def mark_unread(message_id: str):
    """Clear the caller's read flag."""
    services().mail.mark_read(caller().username, message_id, False)
    return "", 204


@bp.delete("/messages/<message_id>")
@authenticated
@documented("Delete a mail from your mailbox; other recipients keep theirs", responses={204: None}, errors=(404,))
def delete(message_id: str):
    """Remove the caller's copies."""
    services().mail.delete(caller().username, message_id)
    return "", 204

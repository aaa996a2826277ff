"""Subscriber ids: ``/v1/subscriptions/{sid}`` (declare, describe, pull, ack, dead letters)."""

from __future__ import annotations

import threading

from flask import Blueprint, request

from app.api.openapi import documented
from app.api.requests import authenticated, caller, json_body, services
from app.api.schemas import AckIn, AckOut, DeadLetterPage, PullOut, SubscriptionIn, SubscriptionList, SubscriptionOut
from app.services.errors import BadRequest

bp = Blueprint("subscriptions", __name__, url_prefix="/v1/subscriptions")

MAX_PULL = 100
MAX_WAIT = 30.0
#: Long polls that may wait at once in this process. A waiting pull holds a request thread,
#: so without a cap enough of them would leave no thread for anyone else; beyond the cap a
#: pull answers at once with what is there (maybe nothing) and the client polls again.
LONG_POLL_SLOTS = threading.BoundedSemaphore(8)


def _number(name: str, default: float, minimum: float, maximum: float, integer: bool) -> float:
    value = request.args.get(name)
    if value is None:
        return default
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        raise BadRequest("invalid_parameter", f"'{name}' must be a number") from None
    if not number >= minimum:  # also rejects NaN
        raise BadRequest("invalid_parameter", f"'{name}' must be at least {minimum:g}")
    return min(number, maximum)


@bp.get("")
@authenticated
@documented("Your subscriber ids", responses={200: SubscriptionList})
def list_subscriptions():
    """List the caller's subscriptions (without backlogs: GET one for that)."""
    return {"subscriptions": services().subscriptions.list(caller().username)}


@bp.put("/<sid>")
@authenticated
@documented("Create or change subscriber id `sid` (a consumer group over groups)", body=SubscriptionIn,
            responses={201: SubscriptionOut, 200: SubscriptionOut}, errors=(403, 404, 503))
def put_subscription(sid: str):
    """Declare a subscription."""
    data = json_body(SubscriptionIn)
    found, created = services().subscriptions.put(caller().username, sid, data.groups, data.topics, data.start)
    return found, 201 if created else 200


@bp.get("/<sid>")
@authenticated
@documented("A subscription and its backlog (waiting + leased)", responses={200: SubscriptionOut}, errors=(404,))
def get_subscription(sid: str):
    """Describe a subscription."""
    return services().subscriptions.describe(caller().username, sid)


@bp.delete("/<sid>")
@authenticated
@documented("Delete a subscription and its queue", responses={204: None}, errors=(404,))
def delete_subscription(sid: str):
    """Delete a subscription."""
    services().subscriptions.delete(caller().username, sid)
    return "", 204


@bp.get("/<sid>/messages")
@authenticated
@documented("Lease posts of the subscription (long poll with wait)", responses={200: PullOut}, errors=(400, 404, 503),
            query={"max": "1..100, default 10", "wait": "seconds 0..30 to wait for the first post"})
def pull(sid: str):
    """Lease posts to the caller."""
    maximum = int(_number("max", 10, 1, MAX_PULL, integer=True))
    wait = _number("wait", 0.0, 0.0, MAX_WAIT, integer=False)
    if wait > 0 and LONG_POLL_SLOTS.acquire(blocking=False):
        try:
            return {"messages": services().subscriptions.pull(caller().username, sid, maximum, wait)}
        finally:
            LONG_POLL_SLOTS.release()
    return {"messages": services().subscriptions.pull(caller().username, sid, maximum, 0.0)}


@bp.post("/<sid>/ack")
@authenticated
@documented("Acknowledge leased posts", body=AckIn, responses={200: AckOut}, errors=(404,))
def ack(sid: str):
    """Acknowledge posts by ack id."""
    data = json_body(AckIn)
    acked, expired = services().subscriptions.ack(caller().username, sid, data.ack_ids)
    return {"acked": acked, "expired": expired}


@bp.get("/<sid>/dead-letters")
@authenticated
@documented("Posts that were not acked after too many deliveries", responses={200: DeadLetterPage},
            errors=(404,), query={"limit": "at most 100"})
def dead_letters(sid: str):
    """List dead letters without removing them."""
    limit = int(_number("limit", 50, 1, 100, integer=True))
    return {"messages": services().subscriptions.dead_letters(caller().username, sid, limit)}

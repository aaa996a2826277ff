"""Steps every send shares (mail and group posts): reply ids, limits, idempotency, publish."""

from __future__ import annotations

from app import rules
from app.publisher import Outgoing, PublishFailed, Publisher
from app.services.errors import Invalid, PayloadTooLarge, ServiceError, Unavailable
from app.store import idempotency


def reply_target(in_reply_to: str | None) -> str | None:
    """Return the canonical id a message answers, or raise Invalid (422)."""
    if in_reply_to is None:
        return None
    try:
        return rules.canonical_message_id(in_reply_to)
    except rules.RuleError as exc:
        raise Invalid("invalid_message_id", f"in_reply_to: {exc.detail}") from None


def limit_error(exc: rules.RuleError) -> ServiceError:
    """Turn a broken size rule into its HTTP error: 413 for the body, 422 for the rest."""
    return (PayloadTooLarge if exc.code == "payload_too_large" else Invalid)(exc.code, exc.detail)


def keyed_id(sender: str, key: str, content_hash: str, new_id: str, ttl_seconds: int) -> str:
    """Return the id an ``Idempotency-Key`` stands for (``new_id`` on first use).

    A retry re-publishes under the original id: the archive stores each id once, so a first
    attempt whose outcome the client never learned is not duplicated. The same key with a
    different request is refused (422).
    """
    record = idempotency.remember_key(sender, key, content_hash, new_id, ttl_seconds)
    if record.request_hash != content_hash:
        raise Invalid("idempotency_key_reused", "this Idempotency-Key was used for a different request")
    return record.message_id


def publish(publisher: Publisher, outgoing: Outgoing) -> None:
    """Publish and wait for the broker's confirm; 503 ``broker_unavailable`` otherwise."""
    try:
        publisher.publish(outgoing)
    except PublishFailed as exc:
        raise Unavailable("broker_unavailable", f"the message was not accepted: {exc.reason}; retry later") from None

"""Idempotency keys and client-chosen message ids: remember what a send produced."""

from __future__ import annotations

from datetime import timedelta

from app.store.models import IdempotencyKey, Message, MessageClaim, utcnow


def remember_key(sender: str, key: str, request_hash: str, message_id: str, ttl_seconds: int) -> IdempotencyKey:
    """Record ``key`` for ``sender``, or return the live record that already holds it."""
    database = IdempotencyKey._meta.database
    cutoff = utcnow() - timedelta(seconds=ttl_seconds)
    with database.atomic():
        # An expired key may be reused: drop it so the insert below succeeds.
        IdempotencyKey.delete().where(
            (IdempotencyKey.sender == sender) & (IdempotencyKey.key == key) & (IdempotencyKey.created_at < cutoff)
        ).execute()
        (
            IdempotencyKey.insert(sender=sender, key=key, request_hash=request_hash, message_id=message_id)
            .on_conflict_ignore()
            .execute()
        )
    record = IdempotencyKey.get((IdempotencyKey.sender == sender) & (IdempotencyKey.key == key))
    return record


def claim_message_id(message_id: str, sender: str, content_hash: str) -> tuple[str, str]:
    """Claim a client-chosen id; return the (sender, content hash) that holds it now."""
    archived = Message.get_or_none(Message.id == message_id)
    if archived is not None:
        return archived.sender, archived.content_hash
    with MessageClaim._meta.database.atomic():
        MessageClaim.insert(id=message_id, sender=sender, content_hash=content_hash).on_conflict_ignore().execute()
    claim = MessageClaim.get(MessageClaim.id == message_id)
    return claim.sender, claim.content_hash


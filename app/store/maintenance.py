"""Housekeeping: forget what has outlived its purpose (``postroom db prune``)."""

from __future__ import annotations

from datetime import timedelta, timezone

from app.store.models import IdempotencyKey, Message, MessageClaim, RateCounter, Token, utcnow


def prune(idempotency_ttl_seconds: int) -> dict[str, int]:
    """Delete expired idempotency keys and tokens, and id claims already archived; return counts."""
    cutoff = utcnow() - timedelta(seconds=idempotency_ttl_seconds)
    database = Token._meta.database
    with database.atomic():
        keys = IdempotencyKey.delete().where(IdempotencyKey.created_at < cutoff).execute()
        tokens = Token.delete().where(Token.expires_at < utcnow()).execute()
        # A claim matters until its message is archived; the archive then answers for the id.
        archived = Message.select(Message.id)
        counters = RateCounter.delete().where(RateCounter.window < int(cutoff.replace(tzinfo=timezone.utc).timestamp())).execute()
        claims = MessageClaim.delete().where((MessageClaim.created_at < cutoff) & MessageClaim.id.in_(archived)).execute()
    return {"idempotency_keys": keys, "tokens": tokens, "claims": claims, "rate_counters": counters}

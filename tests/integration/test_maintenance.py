"""``postroom db prune``: forget expired idempotency keys and tokens, keep live ones."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.store import maintenance
from app.store.models import IdempotencyKey, Token, utcnow

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_prune_drops_only_what_expired(client, people):
    headers = {**people["alice"], "Idempotency-Key": "k1"}
    assert client.post("/v1/messages", json={"to": ["bob"], "body": "b"}, headers=headers).status_code == 202
    IdempotencyKey.insert(sender="alice", key="old", request_hash="x", message_id="m",
                          created_at=utcnow() - timedelta(days=2)).execute()
    Token.update(expires_at=utcnow() - timedelta(seconds=1)).where(Token.username == "bob").execute()

    counts = maintenance.prune(24 * 3600)

    assert counts["idempotency_keys"] == 1 and counts["tokens"] == 1
    assert [k.key for k in IdempotencyKey.select()] == ["k1"]
    assert client.get("/v1/me", headers=people["alice"]).status_code == 200
    assert client.get("/v1/me", headers=people["bob"]).status_code == 401

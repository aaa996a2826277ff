"""TokenSigner: issue and verify, expiry, clock skew, tampering and key rotation."""

from __future__ import annotations

import time
import types
from datetime import datetime, timezone

import itsdangerous.timed
import pytest
from itsdangerous import URLSafeTimedSerializer

from app.services.tokens import ACCESS_SALT, TokenInvalid, TokenSigner

TTL = 3600
SKEW = 30


@pytest.fixture
def signing_clock(monkeypatch):
    """Return a function that moves the clock itsdangerous signs with by ``offset`` seconds.

    Only the signing side moves: ``TokenSigner.verify`` keeps reading the real clock."""

    def shift(offset: float) -> None:
        fake = types.SimpleNamespace(time=lambda: time.time() + offset)
        monkeypatch.setattr(itsdangerous.timed, "time", fake)

    return shift


def rejected(signer: TokenSigner, token: str) -> str:
    """Verify ``token``, expecting TokenInvalid; return its reason."""
    with pytest.raises(TokenInvalid) as caught:
        signer.verify(token)
    return caught.value.reason


def test_issue_and_verify():
    signer = TokenSigner(("key",), TTL, SKEW)
    before = datetime.now(timezone.utc)
    token, claims = signer.issue("alice")
    assert isinstance(token, str) and token.isascii() and " " not in token
    assert claims.username == "alice"
    assert len(claims.token_id) == 32 and int(claims.token_id, 16) >= 0
    assert abs((claims.issued_at - before).total_seconds()) < 5
    verified = signer.verify(token)
    assert (verified.username, verified.token_id) == ("alice", claims.token_id)
    assert abs((verified.issued_at - claims.issued_at).total_seconds()) <= 1  # itsdangerous keeps seconds


def test_every_token_has_its_own_id():
    signer = TokenSigner(("key",), TTL, SKEW)
    ids = {signer.verify(signer.issue("alice")[0]).token_id for _ in range(20)}
    assert len(ids) == 20


def test_no_key_is_an_error():
    with pytest.raises(ValueError):
        TokenSigner((), TTL, SKEW)


def test_expired(signing_clock):
    signer = TokenSigner(("key",), TTL, SKEW)
    signing_clock(-(TTL + 5))
    token, _ = signer.issue("alice")
    assert rejected(signer, token) == "expired"


def test_just_within_the_ttl(signing_clock):
    signer = TokenSigner(("key",), TTL, SKEW)
    signing_clock(-(TTL - 5))
    token, _ = signer.issue("alice")
    assert signer.verify(token).username == "alice"


def test_future_beyond_the_skew_is_refused(signing_clock):
    signer = TokenSigner(("key",), TTL, SKEW)
    signing_clock(SKEW + 10)
    token, _ = signer.issue("alice")
    assert rejected(signer, token) == "issued in the future"
    signing_clock(3600)
    assert rejected(signer, signer.issue("alice")[0]) == "issued in the future"


def test_future_within_the_skew_is_accepted(signing_clock):
    signer = TokenSigner(("key",), TTL, SKEW)
    signing_clock(SKEW - 10)
    token, _ = signer.issue("alice")
    assert signer.verify(token).username == "alice"


def test_zero_skew_refuses_any_future_second(signing_clock):
    signer = TokenSigner(("key",), TTL, 0)
    signing_clock(5)
    assert rejected(signer, signer.issue("alice")[0]) == "issued in the future"


def test_bad_signature_from_another_key():
    token, _ = TokenSigner(("other",), TTL, SKEW).issue("alice")
    assert rejected(TokenSigner(("key",), TTL, SKEW), token) == "bad signature"


def test_bad_signature_from_another_salt():
    """A token that itsdangerous signed with the same key for another purpose is refused."""
    other = URLSafeTimedSerializer("key", salt="postroom.something-else").dumps({"u": "alice", "t": "0" * 32})
    assert rejected(TokenSigner(("key",), TTL, SKEW), other) == "bad signature"


def test_tampered_payload_is_refused():
    signer = TokenSigner(("key",), TTL, SKEW)
    token, _ = signer.issue("alice")
    payload, timestamp, signature = token.split(".")
    forged = URLSafeTimedSerializer("whatever", salt=ACCESS_SALT).dumps({"u": "bob", "t": "0" * 32})
    forged_payload = forged.split(".")[0]
    assert rejected(signer, ".".join((forged_payload, timestamp, signature))) == "bad signature"
    # A changed timestamp (to extend the token's life) breaks the signature too.
    later = timestamp[:-1] + ("A" if timestamp[-1] != "A" else "B")
    assert rejected(signer, ".".join((payload, later, signature))) == "bad signature"
    # A changed character in the middle of the signature.
    middle = len(signature) // 2
    flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1:]
    assert rejected(signer, ".".join((payload, timestamp, flipped))) == "bad signature"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b", "....", "Bearer x", "é", "\x00"], ids=repr)
def test_malformed_tokens(token):
    rejected(TokenSigner(("key",), TTL, SKEW), token)


@pytest.mark.parametrize("payload", [["alice", "t"], {"u": "alice"}, {"t": "0" * 32}, {"u": 1, "t": "x"}, "alice"],
                         ids=repr)
def test_well_signed_but_malformed_payload(payload):
    """A payload signed with the right key but not of the token shape is refused, not a crash."""
    token = URLSafeTimedSerializer(["key"], salt=ACCESS_SALT).dumps(payload)
    assert rejected(TokenSigner(("key",), TTL, SKEW), token) == "malformed"


def test_key_rotation():
    old = TokenSigner(("old",), TTL, SKEW)
    old_token, _ = old.issue("alice")
    rotated = TokenSigner(("new", "old"), TTL, SKEW)
    # The old key still verifies while it is listed…
    assert rotated.verify(old_token).username == "alice"
    # …but the first key signs: the old signer (and so a verifier without "new") refuses new tokens.
    new_token, _ = rotated.issue("bob")
    assert rejected(old, new_token) == "bad signature"
    assert TokenSigner(("new",), TTL, SKEW).verify(new_token).username == "bob"
    # Once the old key is dropped, its tokens stop working.
    assert rejected(TokenSigner(("new",), TTL, SKEW), old_token) == "bad signature"

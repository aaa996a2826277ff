"""Sign and check bearer tokens with itsdangerous, with key rotation."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from itsdangerous import BadSignature, URLSafeTimedSerializer

#: One salt per purpose, so a token made for one use never verifies for another.
ACCESS_SALT = "postroom.access-token.v1"


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says."""

    token_id: str
    username: str
    issued_at: datetime


class TokenInvalid(Exception):
    """Bad signature, malformed, expired or future-dated; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenSigner:
    """Signs with the newest key and verifies with every listed key (rotation)."""

    def __init__(self, keys_newest_first: tuple[str, ...], ttl_seconds: int, skew_seconds: int = 30) -> None:
        if not keys_newest_first:
            raise ValueError("at least one secret key is needed")
        # itsdangerous signs with the *last* key of the list and tries all to verify.
        self._serializer = URLSafeTimedSerializer(list(reversed(keys_newest_first)), salt=ACCESS_SALT)
        self.ttl_seconds = ttl_seconds
        self.skew_seconds = skew_seconds

    def issue(self, username: str) -> tuple[str, TokenClaims]:
        """Return a new signed token for ``username`` and its claims."""
        token_id = secrets.token_hex(16)
        token = self._serializer.dumps({"u": username, "t": token_id})
        claims = TokenClaims(token_id, username, datetime.now(timezone.utc))
        return token, claims

    def verify(self, token: str) -> TokenClaims:
        """Return the claims of a valid token or raise TokenInvalid."""
        try:
            payload, signed_at = self._serializer.loads(token, return_timestamp=True)
        except BadSignature:
            raise TokenInvalid("bad signature") from None
        # Age is checked here rather than by itsdangerous's max_age so that a small clock
        # skew is tolerated while a token dated further in the future is refused (itsdangerous #126).
        age = time.time() - signed_at.timestamp()
        if age > self.ttl_seconds:
            raise TokenInvalid("expired")
        if age < -self.skew_seconds:
            raise TokenInvalid("issued in the future")
        if not isinstance(payload, dict) or not isinstance(payload.get("u"), str) or not isinstance(payload.get("t"), str):
            raise TokenInvalid("malformed")
        return TokenClaims(payload["t"], payload["u"], signed_at)

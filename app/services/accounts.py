"""Use cases of users and tokens: register, log in, authenticate, revoke."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.services.errors import Conflict, Forbidden, Unauthorized
from app.services.tokens import TokenInvalid, TokenSigner
from app.store import accounts as store
from app.store.models import User


@dataclass(frozen=True)
class IssuedToken:
    """A bearer token handed to a client."""

    token: str
    expires_at: datetime


@dataclass(frozen=True)
class Caller:
    """The authenticated user behind a request."""

    username: str
    token_id: str


class AccountService:
    """Registers users, checks passwords (argon2id) and issues and checks tokens."""

    def __init__(self, signer: TokenSigner, hasher: PasswordHasher, reserved: frozenset[str] = frozenset()) -> None:
        self.signer = signer
        self.hasher = hasher
        # Broker users of Postroom's own processes: the archive trusts them to send for
        # anyone, so no Postroom account may ever carry one of these names.
        self.reserved = reserved
        # Verified against for unknown users so both failures take the same time.
        self._dummy_hash = hasher.hash("postroom-dummy-password")

    def register(self, username: str, password: str, display_name: str | None) -> User:
        """Create a user; raise Conflict when the name is taken or reserved."""
        if username in self.reserved:
            raise Conflict("username_taken", f"the username {username!r} is taken")
        try:
            return store.create_user(username, display_name or username, self.hasher.hash(password))
        except store.UsernameTaken:
            raise Conflict("username_taken", f"the username {username!r} is taken") from None

    def log_in(self, username: str, password: str) -> IssuedToken:
        """Check the password and return a new token; raise Unauthorized otherwise."""
        user = store.find_user(username)
        try:
            self.hasher.verify(user.password_hash if user else self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            user = None
        if user is None:
            raise Unauthorized("invalid_credentials", "unknown user or wrong password")
        token, claims = self.signer.issue(user.username)
        expires_at = claims.issued_at + timedelta(seconds=self.signer.ttl_seconds)
        store.record_token(claims.token_id, user.username, _naive(claims.issued_at), _naive(expires_at))
        return IssuedToken(token, expires_at)

    def authenticate(self, token: str) -> Caller:
        """Return the caller of a live token; raise Unauthorized for anything else."""
        try:
            claims = self.signer.verify(token)
        except TokenInvalid as exc:
            raise Unauthorized("invalid_token", f"the token is not valid ({exc.reason})") from None
        if not store.token_is_live(claims.token_id, claims.username):
            raise Unauthorized("invalid_token", "the token was revoked or has expired")
        return Caller(claims.username, claims.token_id)

    def change_password(self, caller: Caller, password: str, new_password: str) -> None:
        """Set a new password after checking the current one; every token is revoked."""
        user = store.find_user(caller.username)
        try:
            self.hasher.verify(user.password_hash if user else self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            # 403, not 401: the token is fine, the password it was asked to confirm is not.
            raise Forbidden("wrong_password", "the current password is wrong") from None
        store.set_password_hash(caller.username, self.hasher.hash(new_password))
        store.revoke_all_tokens(caller.username)

    def revoke(self, caller: Caller) -> None:
        """Revoke the caller's current token."""
        store.revoke_token(caller.token_id)

    def revoke_all(self, caller: Caller) -> None:
        """Revoke every token of the caller."""
        store.revoke_all_tokens(caller.username)


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None)

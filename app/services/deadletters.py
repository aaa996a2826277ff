"""Use cases of the dead-letter tool, for operators (CLI and admin HTTP endpoints)."""

from __future__ import annotations

from app import deadletters
from app.publisher import PublishFailed, Publisher
from app.services.errors import Forbidden, Invalid, NotFound, Unavailable

TIMEOUT = 30.0


class DeadLetterService:
    """Lists, shows and requeues dead letters; only admin users may."""

    def __init__(self, publisher: Publisher, admin_users: tuple[str, ...]) -> None:
        self.publisher = publisher
        self.admin_users = frozenset(admin_users)

    def check_admin(self, caller: str) -> None:
        """Raise Forbidden unless ``caller`` is an operator (``POSTROOM_ADMIN_USERS``)."""
        if caller not in self.admin_users:
            raise Forbidden("not_admin", "this needs an operator (POSTROOM_ADMIN_USERS)")

    def _kind(self, kind: str) -> str:
        if kind not in deadletters.KINDS:
            raise Invalid("invalid_kind", f"kind is one of {', '.join(sorted(deadletters.KINDS))}")
        return kind

    def _run(self, operation, confirms: bool = False):
        try:
            return self.publisher.call(operation, TIMEOUT, confirms=confirms)
        except PublishFailed as exc:
            raise Unavailable("broker_unavailable", f"the broker did not answer: {exc.reason}") from None

    def list(self, kind: str, limit: int) -> list[dict]:
        """Return up to ``limit`` dead letters of ``kind``, without bodies."""
        return [letter.to_json() for letter in self._run(deadletters.peek(self._kind(kind), limit))]

    def show(self, kind: str, message_id: str, limit: int = 10000) -> dict:
        """Return one dead letter with its body."""
        for letter in self._run(deadletters.peek(self._kind(kind), limit)):
            if letter.message_id == message_id:
                return letter.to_json(with_body=True)
        raise NotFound("dead_letter_not_found", f"no dead letter {message_id!r} in {kind}")

    def requeue(self, kind: str, message_ids: list[str] | None, limit: int = 10000) -> dict:
        """Send dead letters back to be archived again (after the cause was repaired)."""
        wanted = set(message_ids) if message_ids is not None else None
        operation = deadletters.requeue(self._kind(kind), wanted, limit, self.publisher.user_id, self.publisher.message)
        return self._run(operation, confirms=True)

"""The dead-letter tool: list, show and requeue what the archive workers could not store.

Dead letters stay in RabbitMQ (``postroom.mail.dead``, ``postroom.groups.dead``) with the
reason in their headers. Listing peeks (gets without ack, and closing the channel puts
them back); requeueing publishes a copy to the original exchange, confirmed, and only then
acks the dead one, so a crash in between leaves a duplicate at worst, never a loss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from app import rules
from config import topology

KINDS = {"mail": topology.MAIL_DEAD_QUEUE, "posts": topology.POSTS_DEAD_QUEUE}
#: Reasons a requeue cannot fix: the sender was never verified.
NOT_REQUEUEABLE = {"unverified_sender"}


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message as an operator sees it."""

    kind: str
    message_id: str | None
    reason: str
    detail: str
    type: str | None
    body: str
    size: int

    def to_json(self, with_body: bool = False) -> dict[str, Any]:
        """Return it for JSON output; the body only when asked."""
        document = {"kind": self.kind, "message_id": self.message_id, "reason": self.reason,
                    "detail": self.detail, "type": self.type, "size": self.size}
        if with_body:
            document["body"] = self.body
        return document


def _dead_letter(kind: str, message: Any) -> DeadLetter:
    headers = message.headers or {}
    return DeadLetter(
        kind=kind,
        message_id=message.message_id,
        reason=str(headers.get(topology.HEADER_DEAD_REASON) or _death_reason(headers)),
        detail=str(headers.get(topology.HEADER_DEAD_DETAIL) or ""),
        type=message.type,
        body=message.body.decode("utf-8", "replace"),
        size=len(message.body),
    )


def _death_reason(headers: dict) -> str:
    """The reason RabbitMQ itself recorded (e.g. ``delivery_limit``), if any."""
    reason = headers.get("x-first-death-reason")
    return reason.decode() if isinstance(reason, bytes) else str(reason or "unknown")


def route(kind: str, body: bytes) -> tuple[str, str] | None:
    """Return (exchange, routing key) that a dead letter of ``kind`` came through, or None."""
    if kind == "mail":
        return topology.MAIL_EXCHANGE, topology.MAIL_ROUTING_KEY
    try:
        document = json.loads(body)
        group, topic = document.get("group"), document.get("topic")
    except (ValueError, AttributeError):
        return None
    if not rules.is_group_name(group) or not (topic is None or rules.is_topic(topic)):
        return None
    return topology.GROUPS_EXCHANGE, topology.post_routing_key(group, topic)


def peek(kind: str, limit: int) -> Callable[[Any], Awaitable[list[DeadLetter]]]:
    """List up to ``limit`` dead letters of ``kind`` without removing them."""

    async def operation(channel: Any) -> list[DeadLetter]:
        await topology.declare_topology(channel)
        queue = await channel.declare_queue(KINDS[kind], passive=True)
        seen = []
        for _ in range(limit):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            seen.append(_dead_letter(kind, message))
        return seen  # unacked: closing the channel puts them back

    return operation


def requeue(kind: str, message_ids: set[str] | None, limit: int, user_id: str,
            make_message: Callable[..., Any]) -> Callable[[Any], Awaitable[dict[str, list]]]:
    """Send dead letters (all, or those with ``message_ids``) back to their exchange."""

    async def operation(channel: Any) -> dict[str, list]:
        declared = await topology.declare_topology(channel)
        queue = declared.queues[KINDS[kind]]
        requeued, skipped = [], []
        for _ in range(limit):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            if message_ids is not None and message.message_id not in message_ids:
                continue  # left unacked: back in the queue when the channel closes
            letter = _dead_letter(kind, message)
            target = route(kind, message.body)
            if letter.reason in NOT_REQUEUEABLE or target is None:
                skipped.append({"message_id": letter.message_id, "reason": letter.reason,
                                "why": "unverified sender" if target else "cannot tell where it came from"})
                continue
            headers = {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-postroom-dead")}
            headers["x-postroom-requeued"] = int(headers.get("x-postroom-requeued") or 0) + 1
            copy = make_message(message.body, headers=headers, message_id=message.message_id, type=message.type,
                                content_type=message.content_type, user_id=user_id)
            exchange, routing_key = target
            await declared.exchanges[exchange].publish(copy, routing_key=routing_key, mandatory=True, timeout=10)
            await message.ack()
            requeued.append(letter.message_id)
        return {"requeued": requeued, "skipped": skipped}

    return operation

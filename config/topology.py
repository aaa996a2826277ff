"""The RabbitMQ topology of Postroom: every exchange, queue and routing key, declared once.

The API (publisher) and the workers (consumers) both import this module and call
:func:`declare_topology` on their channel, so whichever starts first creates the same
objects with the same arguments. AMQP applications find these names in ``docs/amqp.md``.

This module holds data and one coroutine that uses only channel methods; it imports no
AMQP client itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Direct exchange that receives every mail; the routing key is :data:`MAIL_ROUTING_KEY`.
MAIL_EXCHANGE = "postroom.mail"
MAIL_ROUTING_KEY = "mail.v1"
#: Routing key that nothing binds: the API publishes empty, non-mandatory messages with it to
#: :data:`MAIL_EXCHANGE` to learn when a broker that stopped confirming confirms again (the
#: broker confirms and drops them).
PROBE_ROUTING_KEY = "probe.none"
#: Quorum queue the archive workers consume.
MAIL_ARCHIVE_QUEUE = "postroom.mail.archive"

#: Topic exchange that receives every group post before it is numbered; routing key
#: ``<group>.<topic>`` (see :func:`post_routing_key`), so that RabbitMQ's topic
#: authorisation can check that an AMQP publisher may post to the group.
GROUPS_EXCHANGE = "postroom.groups"
#: Quorum queue the post archive workers consume (bound with ``#``: every post).
POSTS_ARCHIVE_QUEUE = "postroom.groups.archive"

#: Topic exchange of numbered (archived) posts; routing key ``<group>.<topic>``, with
#: :data:`NO_TOPIC` for a post without a topic. Subscriber queues bind here.
POSTS_EXCHANGE = "postroom.posts"
NO_TOPIC = "_"

#: Direct exchange for messages no worker can process; queues are keyed by kind.
DEAD_LETTER_EXCHANGE = "postroom.dead"
MAIL_DEAD_ROUTING_KEY = "mail"
MAIL_DEAD_QUEUE = "postroom.mail.dead"
POSTS_DEAD_ROUTING_KEY = "posts"
POSTS_DEAD_QUEUE = "postroom.groups.dead"

#: Attempts (deliveries) a subscriber gets for one post before it goes to the
#: subscription's dead letters.
SUBSCRIPTION_MAX_DELIVERIES = 5
#: Header counting deliveries of a post to a subscriber id (HTTP leases and AMQP alike).
HEADER_DELIVERY_COUNT = "x-postroom-delivery-count"

#: Redeliveries after which the broker itself dead-letters a message that keeps
#: killing its consumer (the worker dead-letters known-bad input at once).
DELIVERY_LIMIT = 20

#: Headers a dead-lettered message carries to say why.
HEADER_DEAD_REASON = "x-postroom-dead-reason"
HEADER_DEAD_DETAIL = "x-postroom-dead-detail"
HEADER_DEAD_QUEUE = "x-postroom-dead-queue"


@dataclass(frozen=True)
class ExchangeSpec:
    """A durable exchange."""

    name: str
    type: str


@dataclass(frozen=True)
class QueueSpec:
    """A durable queue and the bindings that feed it."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    bindings: tuple[tuple[str, str], ...] = ()  # (exchange, routing key)


EXCHANGES: tuple[ExchangeSpec, ...] = (
    ExchangeSpec(MAIL_EXCHANGE, "direct"),
    ExchangeSpec(GROUPS_EXCHANGE, "topic"),
    ExchangeSpec(POSTS_EXCHANGE, "topic"),
    ExchangeSpec(DEAD_LETTER_EXCHANGE, "direct"),
)


def _archive_queue(name: str, exchange: str, routing_key: str, dead_routing_key: str) -> "QueueSpec":
    return QueueSpec(
        name,
        arguments={
            # Quorum: replicated when clustered, and it counts deliveries.
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": dead_routing_key,
            # at-least-once dead lettering never drops a message on the way to the DLQ.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
        bindings=((exchange, routing_key),),
    )

QUEUES: tuple[QueueSpec, ...] = (
    _archive_queue(MAIL_ARCHIVE_QUEUE, MAIL_EXCHANGE, MAIL_ROUTING_KEY, MAIL_DEAD_ROUTING_KEY),
    QueueSpec(
        MAIL_DEAD_QUEUE,
        arguments={"x-queue-type": "quorum"},
        bindings=((DEAD_LETTER_EXCHANGE, MAIL_DEAD_ROUTING_KEY),),
    ),
    _archive_queue(POSTS_ARCHIVE_QUEUE, GROUPS_EXCHANGE, "#", POSTS_DEAD_ROUTING_KEY),
    QueueSpec(
        POSTS_DEAD_QUEUE,
        arguments={"x-queue-type": "quorum"},
        bindings=((DEAD_LETTER_EXCHANGE, POSTS_DEAD_ROUTING_KEY),),
    ),
)


# -- subscriber ids ---------------------------------------------------------------------


def subscription_queue(sid: str) -> str:
    """Return the queue of subscriber id ``sid`` (ids are validated names: no wildcards)."""
    return f"postroom.sub.{sid}"


def subscription_dead_queue(sid: str) -> str:
    """Return the dead-letter queue of subscriber id ``sid``."""
    return f"postroom.sub.{sid}.dead"


def subscription_dead_routing_key(sid: str) -> str:
    """Return the routing key of ``sid``'s dead letters on :data:`DEAD_LETTER_EXCHANGE`."""
    return f"sub.{sid}"


def post_routing_key(group: str, topic: str | None) -> str:
    """Return the routing key of a post, on the way in and numbered (names are validated first)."""
    return f"{group}.{topic or NO_TOPIC}"


def binding_keys(group: str, topics: list[str] | None) -> list[str]:
    """Return the binding keys for a group and its topic patterns (``*``: every post)."""
    if not topics or "*" in topics:
        return [f"{group}.*"]
    return [f"{group}.{topic}" for topic in sorted(set(topics))]


def subscription_queue_specs(sid: str) -> tuple[QueueSpec, QueueSpec]:
    """Return the queue and dead-letter queue of ``sid`` (bindings to groups are separate)."""
    queue = QueueSpec(
        subscription_queue(sid),
        arguments={
            "x-queue-type": "quorum",
            # AMQP consumers that keep failing a post: the broker dead-letters it. RabbitMQ
            # dead-letters when the redelivery count *exceeds* the limit, so N deliveries
            # in all means a limit of N - 1.
            "x-delivery-limit": SUBSCRIPTION_MAX_DELIVERIES - 1,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": subscription_dead_routing_key(sid),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    dead = QueueSpec(
        subscription_dead_queue(sid),
        arguments={"x-queue-type": "quorum"},
        bindings=((DEAD_LETTER_EXCHANGE, subscription_dead_routing_key(sid)),),
    )
    return queue, dead


@dataclass
class Declared:
    """The declared objects of one channel, by name."""

    exchanges: dict[str, Any]
    queues: dict[str, Any]


async def declare_topology(channel: Any) -> Declared:
    """Declare every exchange, queue and binding on ``channel`` (idempotent); return them by name."""
    declared = Declared({}, {})
    for spec in EXCHANGES:
        declared.exchanges[spec.name] = await channel.declare_exchange(spec.name, spec.type, durable=True)
    for spec in QUEUES:
        queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
        for exchange, routing_key in spec.bindings:
            await queue.bind(declared.exchanges[exchange], routing_key)
        declared.queues[spec.name] = queue
    return declared

"""Use cases of subscriber ids: a consumer group over groups, pulled over HTTP or AMQP.

The subscriber id's RabbitMQ queue is the one stream of work. AMQP applications consume
it directly. An HTTP pull takes posts from it, records a lease per post in the database
and only then acks them to the broker, so the lease (not a delivery tag, which belongs to
one channel) is what an HTTP consumer later acks, from any API process. An expired lease
is handed back to the queue (by the next pull or by the lease worker) with its delivery
count raised, and after too many deliveries goes to the subscription's dead letters.
See docs/subscriptions.md.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import timezone
from typing import Any

from app import rules, subscriber_queues, wire
from app.publisher import NotOnBroker, Outgoing, PublishFailed, Publisher
from app.services import sending
from app.services.errors import Forbidden, Invalid, NotFound, Unavailable
from app.services.groups import GroupService
from app.store import groups as group_store
from app.store import subscriptions as store
from app.store.models import Lease
from app.store.post_archive import stored_post
from config import topology

BROKER_TIMEOUT = 10.0
logger = logging.getLogger(__name__)
#: Posts taken (and acked) per broker operation of a pull. Each operation closes its channel
#: right after its acks, and a quorum queue loses acks that are still queued in the channel
#: when it closes: RabbitMQ sends at most ``quorum_commands_soft_limit`` (32 by default)
#: settlements to the queue at once and keeps the rest in the channel (rabbitmq-server#10327);
#: lost acks mean posts delivered again. Staying well under the limit keeps every ack.
TAKE_CHUNK = 20


@dataclass(frozen=True)
class Handback:
    """Where an expired lease goes: back to the queue, or to the dead letters."""

    outgoing: Outgoing
    dead: bool


def post_headers(payload: dict[str, Any]) -> dict[str, Any]:
    """Return the headers every numbered post carries (as the post archive worker sets them)."""
    return {"x-postroom-group": payload.get("group"), "x-postroom-seq": payload.get("seq")}


def handback_for(lease: Lease, max_deliveries: int = topology.SUBSCRIPTION_MAX_DELIVERIES) -> Handback:
    """Decide how to hand back an expired lease (shared by the API and the lease worker)."""
    dead = lease.delivery_count >= max_deliveries
    # The same headers as the first delivery, plus how many deliveries it has had.
    headers: dict[str, Any] = {**post_headers(json.loads(lease.payload)),
                               topology.HEADER_DELIVERY_COUNT: lease.delivery_count}
    if dead:
        headers[topology.HEADER_DEAD_REASON] = "max_deliveries"
        headers[topology.HEADER_DEAD_DETAIL] = f"not acked after {lease.delivery_count} deliveries"
        exchange, key = topology.DEAD_LETTER_EXCHANGE, topology.subscription_dead_routing_key(lease.subscription)
    else:
        exchange, key = "", topology.subscription_queue(lease.subscription)
    outgoing = Outgoing(exchange, key, lease.payload.encode("utf-8"), lease.post_id, wire.POST_TYPE, headers)
    return Handback(outgoing, dead)


def delivery_count(headers: dict[str, Any] | None) -> int:
    """Return which delivery to this subscriber id a message is (1 for the first)."""
    headers = headers or {}
    ours = int(headers.get(topology.HEADER_DELIVERY_COUNT) or 0)
    broker = int(headers.get("x-delivery-count") or 0)  # quorum queue redeliveries
    return ours + broker + 1


def _shares_queues(sid: str) -> bool:
    """Whether a subscription's queue names clash with ``sid``'s (``x``'s dead letters and
    ``x.dead``'s posts would be one queue)."""
    dead = ".dead"
    if sid.endswith(dead) and store.find_subscription(sid[: -len(dead)]) is not None:
        return True
    return store.find_subscription(sid + dead) is not None


class SubscriptionService:
    """Subscriber ids: declare, describe, delete, pull and ack."""

    def __init__(self, publisher: Publisher, groups: GroupService, lease_seconds: float = 30.0) -> None:
        self.publisher = publisher
        self.groups = groups
        self.lease_seconds = lease_seconds

    def _broker(self, operation, timeout: float = BROKER_TIMEOUT):
        try:
            return self.publisher.call(operation, timeout)
        except NotOnBroker:
            # Its queue is gone: the subscription was deleted while this request ran.
            raise NotFound("subscription_not_found", "no such subscription") from None
        except PublishFailed as exc:
            raise Unavailable("broker_unavailable", f"the broker did not answer: {exc.reason}") from None

    def _own(self, caller: str, sid: str):
        subscription = store.find_subscription(sid) if rules.is_subscriber_id(sid) else None
        if subscription is None or subscription.owner != caller:
            raise NotFound("subscription_not_found", f"no subscription {sid!r}")
        return subscription

    # -- declare --------------------------------------------------------------------------------

    def put(self, caller: str, sid: str, group_names: list[str], topics: dict[str, list[str]] | None,
            start: str) -> tuple[dict, bool]:
        """Create or update subscriber id ``sid`` over ``group_names``; return it and whether new."""
        if not rules.is_subscriber_id(sid):
            raise Invalid("invalid_subscriber_id", "a subscriber id is 2-64 of a-z 0-9 . _ - and starts with a letter or digit")
        # Someone else's id first (the contract: PUT on it is 403 whatever the body asks for).
        existing = store.find_subscription(sid)
        if existing is not None and existing.owner != caller:
            raise Forbidden("subscription_taken", f"the subscriber id {sid!r} belongs to someone else; pick another")
        if existing is None and _shares_queues(sid):
            # "x.dead"'s queue is "x"'s dead-letter queue: one of them would read the other's posts.
            raise Forbidden("subscription_taken", f"the queues of subscriber id {sid!r} are taken; pick another")
        wanted = self._wanted(caller, group_names, topics or {})
        subscription, created = store.claim_subscription(sid, caller)
        if subscription.owner != caller:
            raise Forbidden("subscription_taken", f"the subscriber id {sid!r} belongs to someone else; pick another")
        old = store.subscription_groups(sid)
        old_keys = {k for g, t in old.items() for k in topology.binding_keys(g, t)}
        new_keys = {k for g, t in wanted.items() for k in topology.binding_keys(g, t)}
        # Bind before recording, so a subscription in the database always receives.
        try:
            self._broker(subscriber_queues.rebind(sid, sorted(new_keys - old_keys), sorted(old_keys - new_keys)))
        except Unavailable:
            if created:  # leave neither a record nor queues behind for a subscription that failed
                store.delete_subscription(sid)
                try:
                    self.publisher.call(subscriber_queues.delete(sid), BROKER_TIMEOUT)
                except PublishFailed:
                    logger.warning("queues of the failed subscription %s could not be deleted", sid)
            raise
        store.set_subscription_groups(sid, wanted)
        if created and start == "earliest":
            self._replay(sid, wanted)
        return self.describe(caller, sid), created

    def _wanted(self, caller: str, group_names: list[str], topics: dict[str, list[str]]) -> dict[str, list[str] | None]:
        if not group_names:
            raise Invalid("invalid_request", "a subscription needs at least one group")
        for name in group_names:
            self.groups.visible(caller, name)  # 404 for groups the caller may not read
        for name, patterns in topics.items():
            if name not in group_names:
                raise Invalid("invalid_request", f"topics names group {name!r} that is not in groups")
            for pattern in patterns:
                if pattern != "*" and not rules.is_topic(pattern):
                    raise Invalid("invalid_topic", f"topic pattern {pattern!r}: a topic name or '*'")
        return {name: (sorted(set(topics[name])) if topics.get(name) else None) for name in dict.fromkeys(group_names)}

    def _replay(self, sid: str, wanted: dict[str, list[str] | None]) -> None:
        """Queue the archived history of the groups, oldest first (``start: earliest``)."""
        for group, patterns in wanted.items():
            after = 0
            while True:
                rows, more = group_store.list_posts(group, after, 200, None)
                for row in rows:
                    if patterns is None or "*" in patterns or row.topic in patterns:
                        post = stored_post(row)
                        self._publish(Outgoing("", topology.subscription_queue(sid), wire.encode_post(post), row.id,
                                               wire.POST_TYPE, post_headers(post.to_json())))
                if not more:
                    break
                after = rows[-1].seq

    def _publish(self, outgoing: Outgoing) -> None:
        sending.publish(self.publisher, outgoing)

    # -- read / delete --------------------------------------------------------------------------

    def list(self, caller: str) -> list[dict]:
        """Return the caller's subscriptions with their groups."""
        return [
            {"id": sub.id, "groups": list(store.subscription_groups(sub.id)),
             "created_at": wire.format_time(sub.created_at.replace(tzinfo=timezone.utc))}
            for sub in store.subscriptions_owned_by(caller)
        ]

    def describe(self, caller: str, sid: str) -> dict:
        """Return the subscription with its backlog (posts waiting + leased)."""
        subscription = self._own(caller, sid)
        wanted = store.subscription_groups(sid)
        waiting = self._broker(subscriber_queues.depth(sid))
        return {
            "id": subscription.id,
            "owner": subscription.owner,
            "groups": list(wanted),
            "topics": {g: t for g, t in wanted.items() if t is not None},
            "created_at": wire.format_time(subscription.created_at.replace(tzinfo=timezone.utc)),
            "backlog": waiting + store.lease_count(sid),
        }

    def delete(self, caller: str, sid: str) -> None:
        """Delete the subscription and its queues."""
        self._own(caller, sid)
        self._broker(subscriber_queues.delete(sid))
        store.delete_subscription(sid)

    def dead_letters(self, caller: str, sid: str, limit: int) -> list[dict]:
        """Return up to ``limit`` dead letters of the subscription, with why they died."""
        self._own(caller, sid)
        found = []
        for body, headers in self._broker(subscriber_queues.peek_dead(sid, limit)):
            try:
                post = wire.decode_post(body).to_json()
            except wire.WireError:
                post = {"raw": body.decode("utf-8", "replace")}
            # Ours (max_deliveries, set by a lease hand-back), else the broker's (delivery_limit:
            # AMQP consumers kept failing it; rejected: an AMQP consumer rejected it).
            reason = headers.get(topology.HEADER_DEAD_REASON) or headers.get("x-first-death-reason") or "rejected"
            found.append({**post, "reason": reason,
                          "delivery_count": headers.get(topology.HEADER_DELIVERY_COUNT)})
        return found

    # -- pull / ack -----------------------------------------------------------------------------

    def pull(self, caller: str, sid: str, maximum: int, wait: float) -> list[dict]:
        """Lease up to ``maximum`` posts to the caller, long-polling up to ``wait`` seconds."""
        self._own(caller, sid)
        self.hand_back_expired(sid)

        readable: dict[str, bool] = {}

        def may_read(group: str) -> bool:
            if group not in readable:
                try:
                    self.groups.visible(caller, group)
                    readable[group] = True
                except NotFound:
                    readable[group] = False
            return readable[group]

        def keep(messages: list[Any]) -> list[dict]:
            leases, shown = [], []
            for message in messages:
                post = json.loads(message.body)
                if not may_read(post.get("group", "")):
                    continue  # access lost while it was queued: acked and never shown
                count = delivery_count(message.headers)
                ack_id = secrets.token_urlsafe(18)
                leases.append(store.NewLease(ack_id, message.message_id or "", message.body.decode("utf-8"), count))
                shown.append({**post, "ack_id": ack_id, "delivery_count": count})
            store.record_leases(sid, leases, self.lease_seconds)
            for item in shown:
                item.pop("v", None)
                item.pop("kind", None)
            return shown

        # At most TAKE_CHUNK posts per broker operation (each on a channel of its own): the
        # long poll waits for the first chunk, the rest is taken without waiting.
        taken: list[dict] = []
        while len(taken) < maximum:
            chunk = min(TAKE_CHUNK, maximum - len(taken))
            first = not taken
            got = self._broker(subscriber_queues.take(sid, chunk, wait if first else 0.0, keep),
                               timeout=(wait if first else 0.0) + BROKER_TIMEOUT)
            taken += got
            if len(got) < chunk:
                break  # the queue is empty (or held posts the caller may no longer read)
        return taken

    def ack(self, caller: str, sid: str, ack_ids: list[str]) -> tuple[list[str], list[str]]:
        """Acknowledge leased posts; unknown, repeated or expired ack ids come back as expired."""
        self._own(caller, sid)
        return store.acknowledge(sid, ack_ids)

    def hand_back_expired(self, sid: str | None, limit: int = 100) -> int:
        """Return expired leases to their queue (or dead letters); return how many."""
        leases = store.claim_expired(sid, limit)
        for lease in leases:
            self._publish(handback_for(lease).outgoing)
            store.drop_lease(lease.ack_id)
        return len(leases)

    # -- reactions to group changes -------------------------------------------------------------

    def forget_group_for(self, group: str, username: str) -> None:
        """Stop delivering ``group`` to ``username``'s subscriptions (they lost access)."""
        for sid in store.subscriptions_of(username, group):
            self._unbind_group(sid, group)

    def forget_group(self, group: str, sids: list[str]) -> None:
        """Stop delivering a group that is being deleted to every subscription that has it."""
        for sid in sids:
            self._unbind_group(sid, group)

    def _unbind_group(self, sid: str, group: str) -> None:
        topics = store.subscription_groups(sid).get(group)
        self._broker(subscriber_queues.rebind(sid, [], topology.binding_keys(group, topics)))
        store.remove_group_from(sid, group)

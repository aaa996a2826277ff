"""Subscriber ids, their groups, and the leases of posts handed to HTTP consumers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.store.models import Lease, Subscription, SubscriptionGroup, utcnow


def find_subscription(sid: str) -> Subscription | None:
    """Return subscription ``sid``, or None."""
    return Subscription.get_or_none(Subscription.id == sid)


def subscriptions_owned_by(owner: str) -> list[Subscription]:
    """Return ``owner``'s subscriptions by id."""
    return list(Subscription.select().where(Subscription.owner == owner).order_by(Subscription.id))


def claim_subscription(sid: str, owner: str) -> tuple[Subscription, bool]:
    """Create ``sid`` for ``owner`` unless it exists; return it and whether it was created."""
    with Subscription._meta.database.atomic():
        created = Subscription.insert(id=sid, owner=owner).on_conflict_ignore().as_rowcount().execute()
    return Subscription.get(Subscription.id == sid), bool(created)


def subscription_groups(sid: str) -> dict[str, list[str] | None]:
    """Return the groups of ``sid`` with their topic patterns (None: every topic)."""
    query = SubscriptionGroup.select().where(SubscriptionGroup.subscription == sid).order_by(SubscriptionGroup.group)
    return {row.group: (json.loads(row.topics) if row.topics is not None else None) for row in query}


def set_subscription_groups(sid: str, groups: dict[str, list[str] | None]) -> None:
    """Replace the groups of ``sid``."""
    with SubscriptionGroup._meta.database.atomic():
        SubscriptionGroup.delete().where(SubscriptionGroup.subscription == sid).execute()
        rows = [
            {"subscription": sid, "group": group, "topics": None if topics is None else json.dumps(sorted(topics))}
            for group, topics in groups.items()
        ]
        if rows:
            SubscriptionGroup.insert_many(rows).execute()


def remove_group_from(sid: str, group: str) -> None:
    """Drop one group from a subscription."""
    with SubscriptionGroup._meta.database.atomic():
        SubscriptionGroup.delete().where(
            (SubscriptionGroup.subscription == sid) & (SubscriptionGroup.group == group)
        ).execute()


def subscriptions_of(owner: str, group: str) -> list[str]:
    """Return the subscriber ids of ``owner`` that include ``group``."""
    query = (
        SubscriptionGroup.select(SubscriptionGroup.subscription)
        .join(Subscription, on=(SubscriptionGroup.subscription == Subscription.id))
        .where((Subscription.owner == owner) & (SubscriptionGroup.group == group))
    )
    return [row.subscription for row in query]


def delete_subscription(sid: str) -> None:
    """Delete a subscription, its groups and its leases."""
    with Subscription._meta.database.atomic():
        Lease.delete().where(Lease.subscription == sid).execute()
        SubscriptionGroup.delete().where(SubscriptionGroup.subscription == sid).execute()
        Subscription.delete().where(Subscription.id == sid).execute()


# -- leases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewLease:
    """A post about to be handed to an HTTP consumer."""

    ack_id: str
    post_id: str
    payload: str
    delivery_count: int


def record_leases(sid: str, leases: list[NewLease], seconds: float) -> datetime:
    """Store leases of ``sid`` that run ``seconds`` from now; return their end."""
    until = utcnow() + timedelta(seconds=seconds)
    with Lease._meta.database.atomic():
        if leases:
            Lease.insert_many([
                {"ack_id": l.ack_id, "subscription": sid, "post_id": l.post_id, "payload": l.payload,
                 "delivery_count": l.delivery_count, "lease_until": until}
                for l in leases
            ]).execute()
    return until


def acknowledge(sid: str, ack_ids: list[str]) -> tuple[list[str], list[str]]:
    """Delete live leases of ``sid``; return (acked, expired) ack ids, each in request order."""
    acked, expired = [], []
    now = utcnow()
    with Lease._meta.database.atomic():
        for ack_id in dict.fromkeys(ack_ids):
            gone = (
                Lease.delete()
                .where((Lease.ack_id == ack_id) & (Lease.subscription == sid) & (Lease.lease_until >= now))
                .execute()
            )
            (acked if gone else expired).append(ack_id)
    return acked, expired


def claim_expired(sid: str | None, limit: int, hold_seconds: float = 30.0) -> list[Lease]:
    """Take up to ``limit`` expired leases (of ``sid``, or of all) to hand them back.

    Claiming moves ``lease_until`` ahead, so two processes never hand back the same lease;
    a claimer that dies before it finished lets the lease expire again.
    """
    now = utcnow()
    query = Lease.select().where(Lease.lease_until < now)
    if sid is not None:
        query = query.where(Lease.subscription == sid)
    claimed = []
    with Lease._meta.database.atomic():
        for lease in query.order_by(Lease.lease_until).limit(limit):
            taken = (
                Lease.update(lease_until=now + timedelta(seconds=hold_seconds))
                .where((Lease.ack_id == lease.ack_id) & (Lease.lease_until == lease.lease_until))
                .execute()
            )
            if taken:
                claimed.append(lease)
    return claimed


def drop_lease(ack_id: str) -> None:
    """Forget a lease that was handed back to the queue."""
    with Lease._meta.database.atomic():
        Lease.delete().where(Lease.ack_id == ack_id).execute()


def lease_count(sid: str) -> int:
    """Return how many posts of ``sid`` are leased (including expired, not yet handed back)."""
    return Lease.select().where(Lease.subscription == sid).count()

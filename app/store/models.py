"""Peewee models of the archive: users, tokens, messages and mailbox folders."""

from __future__ import annotations

from datetime import datetime, timezone

import peewee

from app.store.db import database_proxy


def utcnow() -> datetime:
    """Return the current UTC time as a naive datetime (how the archive stores times)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class BaseModel(peewee.Model):
    """Every model binds to the proxy, so one code path serves SQLite and PostgreSQL."""

    class Meta:
        database = database_proxy
        legacy_table_names = False


class User(BaseModel):
    """A Postroom account."""

    username = peewee.CharField(max_length=32, primary_key=True)
    display_name = peewee.TextField()
    password_hash = peewee.TextField()
    created_at = peewee.DateTimeField(default=utcnow)


class Token(BaseModel):
    """An issued bearer token; the signed token carries ``id``, this row says if it still holds."""

    id = peewee.CharField(max_length=32, primary_key=True)
    username = peewee.CharField(max_length=32, index=True)
    issued_at = peewee.DateTimeField()
    expires_at = peewee.DateTimeField()
    revoked_at = peewee.DateTimeField(null=True)


class Message(BaseModel):
    """A mail as archived once; each recipient's copy is a :class:`MailboxEntry`."""

    id = peewee.CharField(max_length=36, primary_key=True)
    sender = peewee.CharField(max_length=32)
    to_list = peewee.TextField()  # JSON arrays of usernames
    cc_list = peewee.TextField()
    bcc_list = peewee.TextField()
    subject = peewee.TextField()
    body = peewee.TextField()
    in_reply_to = peewee.CharField(max_length=36, null=True)
    thread_id = peewee.CharField(max_length=36, index=True)
    sent_at = peewee.DateTimeField()
    archived_at = peewee.DateTimeField(default=utcnow)
    content_hash = peewee.CharField(max_length=64)


class Folder(BaseModel):
    """A user's folder and the last uid it handed out (uids are never reused)."""

    owner = peewee.CharField(max_length=32)
    name = peewee.CharField(max_length=16)
    last_uid = peewee.BigIntegerField(default=0)

    class Meta:
        primary_key = peewee.CompositeKey("owner", "name")


class MailboxEntry(BaseModel):
    """One mail in one user's folder, with that user's read flag."""

    id = peewee.BigAutoField()
    owner = peewee.CharField(max_length=32)
    folder = peewee.CharField(max_length=16)
    uid = peewee.BigIntegerField()
    message_id = peewee.CharField(max_length=36, index=True)
    read = peewee.BooleanField(default=False)

    class Meta:
        indexes = (
            # Keyset paging of a folder: one index range scan whatever the archive size.
            (("owner", "folder", "uid"), True),
            (("owner", "folder", "message_id"), True),
            # Unread filters and counts.
            (("owner", "folder", "read", "uid"), False),
        )


class IdempotencyKey(BaseModel):
    """A sender's ``Idempotency-Key`` and the message it produced."""

    sender = peewee.CharField(max_length=32)
    key = peewee.CharField(max_length=255)
    request_hash = peewee.CharField(max_length=64)
    message_id = peewee.CharField(max_length=36)
    created_at = peewee.DateTimeField(default=utcnow, index=True)

    class Meta:
        primary_key = peewee.CompositeKey("sender", "key")


class MessageClaim(BaseModel):
    """A client-chosen message id, claimed when ``PUT /v1/messages/{id}`` is accepted."""

    id = peewee.CharField(max_length=36, primary_key=True)
    sender = peewee.CharField(max_length=32)
    content_hash = peewee.CharField(max_length=64)
    created_at = peewee.DateTimeField(default=utcnow)


MODELS: tuple[type[BaseModel], ...] = (User, Token, Message, Folder, MailboxEntry, IdempotencyKey, MessageClaim)
FOLDERS = ("inbox", "sent")


class Group(BaseModel):
    """A discussion group; ``high_seq`` is the last sequence number handed out."""

    name = peewee.CharField(max_length=64, primary_key=True)
    description = peewee.TextField(default="")
    visibility = peewee.CharField(max_length=8, default="public")
    owner = peewee.CharField(max_length=32)
    created_at = peewee.DateTimeField(default=utcnow)
    high_seq = peewee.BigIntegerField(default=0)


class Membership(BaseModel):
    """A member of a group and their read marker."""

    group = peewee.CharField(max_length=64)
    username = peewee.CharField(max_length=32, index=True)
    joined_at = peewee.DateTimeField(default=utcnow)
    read_marker = peewee.BigIntegerField(default=0)

    class Meta:
        primary_key = peewee.CompositeKey("group", "username")


class Post(BaseModel):
    """A group post, numbered ``seq`` 1, 2, 3 … per group in commit order."""

    id = peewee.CharField(max_length=36, primary_key=True)
    group = peewee.CharField(max_length=64)
    seq = peewee.BigIntegerField()
    topic = peewee.CharField(max_length=64, null=True)
    sender = peewee.CharField(max_length=32)
    subject = peewee.TextField()
    body = peewee.TextField()
    in_reply_to = peewee.CharField(max_length=36, null=True)
    sent_at = peewee.DateTimeField()
    archived_at = peewee.DateTimeField(default=utcnow)
    content_hash = peewee.CharField(max_length=64)

    class Meta:
        indexes = (
            (("group", "seq"), True),
            (("group", "topic", "seq"), False),
        )


class Subscription(BaseModel):
    """A subscriber id (a consumer group) and its owner."""

    id = peewee.CharField(max_length=64, primary_key=True)
    owner = peewee.CharField(max_length=32, index=True)
    created_at = peewee.DateTimeField(default=utcnow)


class SubscriptionGroup(BaseModel):
    """One group of a subscription, with its topic patterns (JSON list, or null for all)."""

    subscription = peewee.CharField(max_length=64)
    group = peewee.CharField(max_length=64, index=True)
    topics = peewee.TextField(null=True)

    class Meta:
        primary_key = peewee.CompositeKey("subscription", "group")


class Lease(BaseModel):
    """A post handed to an HTTP consumer of a subscriber id, until acked or expired."""

    ack_id = peewee.CharField(max_length=64, primary_key=True)
    subscription = peewee.CharField(max_length=64)
    post_id = peewee.CharField(max_length=36)
    payload = peewee.TextField()  # the numbered post as delivered (wire JSON)
    delivery_count = peewee.IntegerField()
    lease_until = peewee.DateTimeField()

    class Meta:
        indexes = ((("subscription", "lease_until"), False),)


GROUP_MODELS: tuple[type[BaseModel], ...] = (Group, Membership, Post, Subscription, SubscriptionGroup, Lease)


class RateCounter(BaseModel):
    """Sends of a user in one fixed window (``window`` = its start, in epoch seconds)."""

    username = peewee.CharField(max_length=32)
    window = peewee.BigIntegerField()
    count = peewee.IntegerField(default=0)

    class Meta:
        primary_key = peewee.CompositeKey("username", "window")

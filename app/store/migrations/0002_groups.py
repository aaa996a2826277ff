"""Create groups, memberships, posts, subscriptions and HTTP leases (a frozen copy)."""

import datetime

from peewee import BigIntegerField, CharField, CompositeKey, DateTimeField, IntegerField, Model, TextField


def up(migrator, db):
    now = datetime.datetime.utcnow

    class Base(Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Group(Base):
        name = CharField(max_length=64, primary_key=True)
        description = TextField(default="")
        visibility = CharField(max_length=8, default="public")
        owner = CharField(max_length=32)
        created_at = DateTimeField(default=now)
        high_seq = BigIntegerField(default=0)

    class Membership(Base):
        group = CharField(max_length=64)
        username = CharField(max_length=32, index=True)
        joined_at = DateTimeField(default=now)
        read_marker = BigIntegerField(default=0)

        class Meta:
            primary_key = CompositeKey("group", "username")

    class Post(Base):
        id = CharField(max_length=36, primary_key=True)
        group = CharField(max_length=64)
        seq = BigIntegerField()
        topic = CharField(max_length=64, null=True)
        sender = CharField(max_length=32)
        subject = TextField()
        body = TextField()
        in_reply_to = CharField(max_length=36, null=True)
        sent_at = DateTimeField()
        archived_at = DateTimeField(default=now)
        content_hash = CharField(max_length=64)

        class Meta:
            indexes = ((("group", "seq"), True), (("group", "topic", "seq"), False))

    class Subscription(Base):
        id = CharField(max_length=64, primary_key=True)
        owner = CharField(max_length=32, index=True)
        created_at = DateTimeField(default=now)

    class SubscriptionGroup(Base):
        subscription = CharField(max_length=64)
        group = CharField(max_length=64, index=True)
        topics = TextField(null=True)

        class Meta:
            primary_key = CompositeKey("subscription", "group")

    class Lease(Base):
        ack_id = CharField(max_length=64, primary_key=True)
        subscription = CharField(max_length=64)
        post_id = CharField(max_length=36)
        payload = TextField()
        delivery_count = IntegerField()
        lease_until = DateTimeField()

        class Meta:
            indexes = ((("subscription", "lease_until"), False),)

    db.create_tables([Group, Membership, Post, Subscription, SubscriptionGroup, Lease])

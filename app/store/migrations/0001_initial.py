"""Create users, tokens, messages, folders, mailbox entries and idempotency records.

A frozen copy of the models as they were when this migration was written: later model
changes get migrations of their own, so this file never changes.
"""

import datetime

from peewee import (
    BigAutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    CompositeKey,
    DateTimeField,
    Model,
    TextField,
)


def up(migrator, db):
    class Base(Model):
        class Meta:
            database = db
            legacy_table_names = False

    class User(Base):
        username = CharField(max_length=32, primary_key=True)
        display_name = TextField()
        password_hash = TextField()
        created_at = DateTimeField(default=datetime.datetime.utcnow)

    class Token(Base):
        id = CharField(max_length=32, primary_key=True)
        username = CharField(max_length=32, index=True)
        issued_at = DateTimeField()
        expires_at = DateTimeField()
        revoked_at = DateTimeField(null=True)

    class Message(Base):
        id = CharField(max_length=36, primary_key=True)
        sender = CharField(max_length=32)
        to_list = TextField()
        cc_list = TextField()
        bcc_list = TextField()
        subject = TextField()
        body = TextField()
        in_reply_to = CharField(max_length=36, null=True)
        thread_id = CharField(max_length=36, index=True)
        sent_at = DateTimeField()
        archived_at = DateTimeField()
        content_hash = CharField(max_length=64)

    class Folder(Base):
        owner = CharField(max_length=32)
        name = CharField(max_length=16)
        last_uid = BigIntegerField(default=0)

        class Meta:
            primary_key = CompositeKey("owner", "name")

    class MailboxEntry(Base):
        id = BigAutoField()
        owner = CharField(max_length=32)
        folder = CharField(max_length=16)
        uid = BigIntegerField()
        message_id = CharField(max_length=36, index=True)
        read = BooleanField(default=False)

        class Meta:
            indexes = (
                (("owner", "folder", "uid"), True),
                (("owner", "folder", "message_id"), True),
                (("owner", "folder", "read", "uid"), False),
            )

    class IdempotencyKey(Base):
        sender = CharField(max_length=32)
        key = CharField(max_length=255)
        request_hash = CharField(max_length=64)
        message_id = CharField(max_length=36)
        created_at = DateTimeField(index=True)

        class Meta:
            primary_key = CompositeKey("sender", "key")

    class MessageClaim(Base):
        id = CharField(max_length=36, primary_key=True)
        sender = CharField(max_length=32)
        content_hash = CharField(max_length=64)
        created_at = DateTimeField()

    db.create_tables([User, Token, Message, Folder, MailboxEntry, IdempotencyKey, MessageClaim])

"""Archive a batch of mails in one transaction: messages, folder uids and mailbox entries."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any
from typing import Iterable, Sequence

import peewee

from app.store.accounts import existing_usernames
from app.store.models import MailboxEntry, Message, utcnow
from app.wire import Mail

INSERT_CHUNK = 100


@dataclass(frozen=True)
class Outcome:
    """What became of one message: ``stored``, ``duplicate`` or ``rejected`` (with a reason).

    ``value`` is what the store made of it, when the worker needs it afterwards.
    """

    status: str
    code: str = ""
    detail: str = ""
    value: Any = None


STORED = Outcome("stored")
DUPLICATE = Outcome("duplicate")


def _check(mail: Mail, known_hashes: dict[str, str], known_users: set[str]) -> Outcome | None:
    """Return why ``mail`` cannot be stored (or that it is a duplicate), else None."""
    if mail.id in known_hashes:
        if known_hashes[mail.id] == mail.content_hash():
            return DUPLICATE
        return Outcome("rejected", "id_conflict", f"message id {mail.id} exists with other content")
    if mail.sender not in known_users:
        return Outcome("rejected", "unknown_sender", f"no user {mail.sender!r}")
    unknown = [name for name in mail.recipients() if name not in known_users]
    if unknown:
        return Outcome("rejected", "unknown_recipient", "unknown recipients: " + ", ".join(unknown))
    return None


def _thread_ids(mails: Sequence[Mail]) -> dict[tuple[str, str], str]:
    """Return the thread of each parent a sender may see: {(sender, parent id): thread id}.

    Only a parent the sender holds a copy of lends its thread; otherwise the reply starts
    its own thread at the parent id, so a reply tells nobody whether a message exists.
    """
    parents = {m.in_reply_to for m in mails if m.in_reply_to}
    if not parents:
        return {}
    query = (
        MailboxEntry.select(MailboxEntry.owner, Message.id, Message.thread_id)
        .join(Message, on=(MailboxEntry.message_id == Message.id))
        .where(Message.id.in_(list(parents)))
        .tuples()
    )
    return {(owner, message_id): thread for owner, message_id, thread in query}


def _reserve_uids(database: peewee.Database, wanted: Counter) -> dict[tuple[str, str], int]:
    """Take ``n`` uids from each (owner, folder); return the first uid of each range.

    The row lock of the upsert is held until commit, so uids of one folder become visible
    in the order they were handed out; keys are sorted so two workers never deadlock.
    """
    first: dict[tuple[str, str], int] = {}
    for owner, folder in sorted(wanted):
        count = wanted[(owner, folder)]
        cursor = database.execute_sql(
            "INSERT INTO folder (owner, name, last_uid) VALUES (%s, %s, %s) "
            "ON CONFLICT (owner, name) DO UPDATE SET last_uid = folder.last_uid + excluded.last_uid "
            "RETURNING last_uid".replace("%s", database.param),
            (owner, folder, count),
        )
        last = cursor.fetchone()[0]
        first[(owner, folder)] = last - count + 1
    return first


# Multi-row INSERT statements rendered by Peewee once per (database class, model, columns,
# row count) and then executed with fresh values: rendering one anew cost the worker about
# as much CPU as the rest of storing a batch (bench/README.md, "Tuning").
_INSERT_SQL: dict[tuple, str] = {}


def _insert_chunked(model: type[peewee.Model], rows: list[dict]) -> None:
    database = model._meta.database
    database = getattr(database, "obj", database)  # the proxy's database
    for start in range(0, len(rows), INSERT_CHUNK):
        chunk = rows[start : start + INSERT_CHUNK]
        fields = [field for field in model._meta.sorted_fields if field.name in chunk[0]]
        params = [field.db_value(row[field.name]) for row in chunk for field in fields]
        key = (type(database), model, tuple(field.name for field in fields), len(chunk))
        sql = _INSERT_SQL.get(key)
        if sql is None:
            query = model.insert_many(chunk)
            sql, rendered = database.get_sql_context().sql(query).query()
            if list(rendered) != params:  # not the statement we expect: let Peewee run it
                query.execute()
                continue
            _INSERT_SQL[key] = sql
        database.execute_sql(sql, params)


def archive_mails(mails: Sequence[Mail]) -> list[Outcome]:
    """Store ``mails`` idempotently in one transaction; return one outcome per mail, in order."""
    database = Message._meta.database
    with database.atomic():
        ids = list({m.id for m in mails})
        known_hashes = {
            row.id: row.content_hash
            for row in Message.select(Message.id, Message.content_hash).where(Message.id.in_(ids))
        }
        known_users = existing_usernames(name for m in mails for name in (m.sender, *m.recipients()))
        threads = _thread_ids(mails)
        outcomes: list[Outcome] = []
        accepted: list[Mail] = []
        for mail in mails:
            outcome = _check(mail, known_hashes, known_users)
            if outcome is None:
                known_hashes[mail.id] = mail.content_hash()  # a repeat later in this batch is a duplicate
                parent = mail.in_reply_to
                threads[(mail.sender, mail.id)] = threads.get((mail.sender, parent), parent) if parent else mail.id
                accepted.append(mail)
                outcome = STORED
            outcomes.append(outcome)
        if accepted:
            _store(database, accepted, threads)
    return outcomes


def _store(database: peewee.Database, mails: list[Mail], threads: dict[tuple[str, str], str]) -> None:
    now = utcnow()
    _insert_chunked(
        Message,
        [
            {
                "id": m.id,
                "sender": m.sender,
                "to_list": json.dumps(list(m.to)),
                "cc_list": json.dumps(list(m.cc)),
                "bcc_list": json.dumps(list(m.bcc)),
                "subject": m.subject,
                "body": m.body,
                "in_reply_to": m.in_reply_to,
                "thread_id": threads[(m.sender, m.id)],
                "sent_at": m.sent_at.replace(tzinfo=None),
                "archived_at": now,
                "content_hash": m.content_hash(),
            }
            for m in mails
        ],
    )
    copies = [(name, "inbox", m.id, False) for m in mails for name in m.recipients()]
    copies += [(m.sender, "sent", m.id, True) for m in mails]
    first_uids = _reserve_uids(database, Counter((owner, folder) for owner, folder, _, _ in copies))
    next_uid = dict(first_uids)
    rows = []
    for owner, folder, message_id, read in copies:
        uid = next_uid[(owner, folder)]
        next_uid[(owner, folder)] = uid + 1
        rows.append({"owner": owner, "folder": folder, "uid": uid, "message_id": message_id, "read": read})
    _insert_chunked(MailboxEntry, rows)


def stored_ids(ids: Iterable[str]) -> set[str]:
    """Return which of ``ids`` are archived."""
    return {row.id for row in Message.select(Message.id).where(Message.id.in_(list(ids)))}

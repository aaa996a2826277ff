"""Read a user's folders and change their own copies (read flags, delete-for-me)."""

from __future__ import annotations

from dataclasses import dataclass

from app.store.models import MailboxEntry, Message


@dataclass(frozen=True)
class Copy:
    """One mail as one user holds it: the shared message plus their folder row."""

    message: Message
    folder: str
    uid: int
    read: bool


def _copies(query) -> list[Copy]:
    return [Copy(entry.message, entry.folder, entry.uid, entry.read) for entry in query]


def _with_message():
    return MailboxEntry.select(MailboxEntry, Message).join(
        Message, on=(MailboxEntry.message_id == Message.id), attr="message"
    )


def list_folder(
    owner: str,
    folder: str,
    limit: int,
    after: int | None = None,
    before: int | None = None,
    unread_only: bool = False,
) -> tuple[list[Copy], bool]:
    """Return up to ``limit`` copies of a folder and whether more follow.

    Newest first (``before``) unless ``after`` is given; keyset paging on the
    (owner, folder, uid) index, so a page costs the same at any archive size.
    """
    query = _with_message().where((MailboxEntry.owner == owner) & (MailboxEntry.folder == folder))
    if unread_only:
        query = query.where(MailboxEntry.read == False)  # noqa: E712 (peewee expression)
    if after is not None:
        query = query.where(MailboxEntry.uid > after).order_by(MailboxEntry.uid.asc())
    else:
        if before is not None:
            query = query.where(MailboxEntry.uid < before)
        query = query.order_by(MailboxEntry.uid.desc())
    rows = _copies(query.limit(limit + 1))
    return rows[:limit], len(rows) > limit


def find_copies(owner: str, message_id: str) -> list[Copy]:
    """Return the caller's copies of a message (inbox first), empty if they hold none."""
    query = _with_message().where((MailboxEntry.owner == owner) & (MailboxEntry.message_id == message_id))
    return sorted(_copies(query), key=lambda c: c.folder != "inbox")


def set_read(owner: str, message_id: str, read: bool) -> int:
    """Set the read flag on the caller's inbox copy; return how many of their copies exist."""
    database = MailboxEntry._meta.database
    with database.atomic():
        mine = (MailboxEntry.owner == owner) & (MailboxEntry.message_id == message_id)
        held = MailboxEntry.select().where(mine).count()
        if held:
            # The sent copy is read by definition; only the inbox copy carries a flag.
            MailboxEntry.update(read=read).where(mine & (MailboxEntry.folder == "inbox")).execute()
        return held


def delete_copies(owner: str, message_id: str) -> int:
    """Remove the caller's copies of a message; others keep theirs. Return how many went."""
    with MailboxEntry._meta.database.atomic():
        return (
            MailboxEntry.delete()
            .where((MailboxEntry.owner == owner) & (MailboxEntry.message_id == message_id))
            .execute()
        )


def unread_count(owner: str) -> int:
    """Return how many mails in the caller's inbox are unread."""
    return (
        MailboxEntry.select()
        .where((MailboxEntry.owner == owner) & (MailboxEntry.folder == "inbox") & (MailboxEntry.read == False))  # noqa: E712
        .count()
    )

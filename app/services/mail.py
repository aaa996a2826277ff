"""Use cases of mail: send, read a folder, read one mail, flag, delete for me."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timezone

from app import rules, wire
from app.publisher import Outgoing, Publisher
from app.services import sending
from app.services.errors import Conflict, Invalid, NotFound
from app.store import accounts, idempotency, mailbox
from config import topology


@dataclass(frozen=True)
class Draft:
    """What a sender asks to send (already schema-checked by the API)."""

    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str
    body: str
    in_reply_to: str | None = None


@dataclass(frozen=True)
class MailView:
    """A mail as one caller may see it."""

    copy: mailbox.Copy
    bcc: list[str]

    def to_json(self) -> dict:
        """Return the contract's mail object."""
        message = self.copy.message
        return {
            "id": message.id,
            "from": message.sender,
            "to": json.loads(message.to_list),
            "cc": json.loads(message.cc_list),
            "bcc": self.bcc,
            "subject": message.subject,
            "body": message.body,
            "sent_at": wire.format_time(message.sent_at.replace(tzinfo=timezone.utc)),
            "thread_id": message.thread_id,
            "in_reply_to": message.in_reply_to,
            "read": self.copy.read,
            "uid": self.copy.uid,
            "folder": self.copy.folder,
        }


def view_for(caller: str, copy: mailbox.Copy) -> MailView:
    """Apply bcc privacy: the sender sees all, a bcc recipient only themself, others none."""
    bcc = json.loads(copy.message.bcc_list)
    if caller == copy.message.sender:
        visible = bcc
    elif caller in bcc:
        visible = [caller]
    else:
        visible = []
    return MailView(copy, visible)


class MailService:
    """Accepts mail for delivery and serves each user's own copies."""

    def __init__(self, publisher: Publisher, limits: wire.Limits, idempotency_ttl_seconds: int) -> None:
        self.publisher = publisher
        self.limits = limits
        self.idempotency_ttl_seconds = idempotency_ttl_seconds

    # -- sending ---------------------------------------------------------------------------

    def send(self, sender: str, draft: Draft, message_id: str | None = None, idempotency_key: str | None = None) -> str:
        """Validate, publish and return the message id once the broker confirmed it."""
        mail = self._build(sender, draft, message_id or rules.new_message_id())
        if message_id is not None:
            holder, digest = idempotency.claim_message_id(mail.id, sender, mail.content_hash())
            if holder != sender or digest != mail.content_hash():
                raise Conflict("id_conflict", f"message {mail.id} exists with other content")
        elif idempotency_key is not None:
            original = sending.keyed_id(sender, idempotency_key, mail.content_hash(), mail.id,
                                        self.idempotency_ttl_seconds)
            mail = dataclasses.replace(mail, id=original)
        self._publish(mail)
        return mail.id

    def _build(self, sender: str, draft: Draft, message_id: str) -> wire.Mail:
        to, cc, bcc = wire.normalize_recipients(draft.to, draft.cc, draft.bcc)
        mail = wire.Mail(message_id, sender, to, cc, bcc, draft.subject, draft.body,
                         sending.reply_target(draft.in_reply_to), datetime.now(timezone.utc))
        try:
            wire.check_limits(mail, self.limits)
        except rules.RuleError as exc:
            raise sending.limit_error(exc) from None
        unknown = sorted(set(mail.recipients()) - accounts.existing_usernames(mail.recipients()))
        if unknown:
            raise Invalid(
                "unknown_recipient",
                "unknown recipients: " + ", ".join(unknown) + "; nothing was sent",
                unknown_recipients=unknown,
            )
        return mail

    def _publish(self, mail: wire.Mail) -> None:
        outgoing = Outgoing(topology.MAIL_EXCHANGE, topology.MAIL_ROUTING_KEY, wire.encode_mail(mail), mail.id,
                            wire.MAIL_TYPE)
        sending.publish(self.publisher, outgoing)

    # -- reading ---------------------------------------------------------------------------

    def folder(self, caller: str, folder: str, limit: int, after: int | None, before: int | None,
               unread_only: bool) -> tuple[list[MailView], str | None]:
        """Return a page of the caller's folder and the cursor of the next page."""
        copies, more = mailbox.list_folder(caller, folder, limit, after, before, unread_only)
        cursor = str(copies[-1].uid) if more and copies else None
        return [view_for(caller, c) for c in copies], cursor

    def get(self, caller: str, message_id: str) -> MailView:
        """Return the caller's copy of a mail, or NotFound (never Forbidden)."""
        copies = mailbox.find_copies(caller, _lookup_id(message_id))
        if not copies:
            raise NotFound("message_not_found", "no such message in your mailbox")
        return view_for(caller, copies[0])

    def mark_read(self, caller: str, message_id: str, read: bool) -> None:
        """Set or clear the caller's read flag."""
        if not mailbox.set_read(caller, _lookup_id(message_id), read):
            raise NotFound("message_not_found", "no such message in your mailbox")

    def delete(self, caller: str, message_id: str) -> None:
        """Remove the caller's copies; other recipients keep theirs."""
        if not mailbox.delete_copies(caller, _lookup_id(message_id)):
            raise NotFound("message_not_found", "no such message in your mailbox")

    def unread(self, caller: str) -> int:
        """Return the caller's unread inbox count."""
        return mailbox.unread_count(caller)


def _lookup_id(message_id: str) -> str:
    """Canonicalize an id from a URL; an id that cannot exist simply finds nothing."""
    try:
        return rules.canonical_message_id(message_id)
    except rules.RuleError:
        return message_id


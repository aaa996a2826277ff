"""The wire schema: what a Postroom message looks like on the bus (version 1).

Every message is a UTF-8 JSON object published persistent with
``content_type=application/json`` and ``message_id`` equal to its ``id``:

- mail (``type=postroom.mail.v1``, on ``postroom.mail``): :func:`encode_mail` /
  :func:`decode_mail`;
- group posts (``type=postroom.post.v1``): as sent, on ``postroom.groups``, without ``seq``;
  numbered by the archive and delivered to subscribers on ``postroom.posts`` with ``seq``:
  :func:`encode_post` / :func:`decode_post`.

Decoders apply the same rules as the API because AMQP applications may publish directly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from app import rules

SCHEMA_VERSION = 1
MAIL_TYPE = "postroom.mail.v1"
POST_TYPE = "postroom.post.v1"
CONTENT_TYPE = "application/json"


class WireError(rules.RuleError):
    """A message on the bus that can never be archived (it goes to the dead-letter queue)."""


@dataclass(frozen=True)
class Limits:
    """Size limits shared by the API and the worker."""

    max_body_bytes: int = 256 * 1024
    max_subject_chars: int = 998
    max_recipients: int = 100


@dataclass(frozen=True)
class Mail:
    """One mail as it travels from the API to the archive."""

    id: str
    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    subject: str = ""
    body: str = ""
    in_reply_to: str | None = None
    sent_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def recipients(self) -> list[str]:
        """Return every recipient once, in to, cc, bcc order."""
        return list(dict.fromkeys((*self.to, *self.cc, *self.bcc)))

    def content_hash(self) -> str:
        """Return a digest of what the sender wrote (not the id or time), to spot id reuse."""
        return content_hash(self.sender, self.to, self.cc, self.bcc, self.subject, self.body, self.in_reply_to)


def content_hash(sender: str, to: Any, cc: Any, bcc: Any, subject: str, body: str, in_reply_to: str | None) -> str:
    """Return the sha256 of a mail's content in a canonical JSON form."""
    canonical = json.dumps(
        [sender, list(to), list(cc), list(bcc), subject, body, in_reply_to],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def normalize_recipients(to: list[str], cc: list[str], bcc: list[str]) -> tuple[tuple[str, ...], ...]:
    """Drop repeats: a user named twice is kept in the first of to, cc, bcc that names them."""
    seen: set[str] = set()
    lists = []
    for names in (to, cc, bcc):
        kept = []
        for name in names:
            if name not in seen:
                seen.add(name)
                kept.append(name)
        lists.append(tuple(kept))
    return tuple(lists)


def format_time(moment: datetime) -> str:
    """Return ``moment`` as an RFC 3339 UTC string with microseconds."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("timestamp without a time zone")
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-23:59 is past year 9999 in UTC
        raise ValueError("timestamp out of range") from None


def encode_mail(mail: Mail) -> bytes:
    """Serialize ``mail`` to the version-1 JSON body."""
    document = {
        "v": SCHEMA_VERSION,
        "kind": "mail",
        "id": mail.id,
        "from": mail.sender,
        "to": list(mail.to),
        "cc": list(mail.cc),
        "bcc": list(mail.bcc),
        "subject": mail.subject,
        "body": mail.body,
        "in_reply_to": mail.in_reply_to,
        "sent_at": format_time(mail.sent_at),
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _is_version(value: object) -> bool:
    """Exactly the integer 1: ``true`` and ``1.0`` compare equal to 1 in Python but are not it."""
    return type(value) is int and value == SCHEMA_VERSION


def _string_list(document: dict, name: str, limits: Limits) -> tuple[str, ...]:
    value = document.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise WireError("invalid_schema", f"'{name}' must be a list of usernames")
    return tuple(value)


def _string(document: dict, name: str, *, optional: bool = False) -> str | None:
    value = document.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise WireError("invalid_schema", f"'{name}' must be a string")
    return value


@dataclass(frozen=True)
class _Envelope:
    """What mail and posts share on the wire, already checked."""

    document: dict
    id: str
    sender: str
    subject: str
    body: str
    in_reply_to: str | None
    sent_at: datetime


def _decode_envelope(body: bytes, kind: str) -> _Envelope:
    """Check the version, kind, id, sender, reply id and time of a message body."""
    document = _load_object(body)
    if not _is_version(document.get("v")) or document.get("kind") != kind:
        raise WireError("unsupported_version", f"expected v={SCHEMA_VERSION} kind={kind}")
    try:
        message_id = rules.canonical_message_id(_string(document, "id"))
    except rules.RuleError as exc:
        raise WireError(exc.code, exc.detail) from None
    sender = _string(document, "from")
    if not rules.is_username(sender):
        raise WireError("invalid_schema", "'from' must be a username")
    in_reply_to = _string(document, "in_reply_to", optional=True)
    try:
        if in_reply_to is not None:
            in_reply_to = rules.canonical_message_id(in_reply_to)
    except rules.RuleError as exc:
        raise WireError(exc.code, f"in_reply_to: {exc.detail}") from None
    try:
        sent_at = parse_time(_string(document, "sent_at"))
    except ValueError as exc:
        raise WireError("invalid_schema", f"'sent_at' is not an RFC 3339 time: {exc}") from None
    return _Envelope(document, message_id, sender, _string(document, "subject", optional=True) or "",
                     _string(document, "body", optional=True) or "", in_reply_to, sent_at)


def decode_mail(body: bytes, limits: Limits = Limits()) -> Mail:
    """Parse and validate a version-1 mail body; raise WireError saying why it is unusable."""
    envelope = _decode_envelope(body, "mail")
    to, cc, bcc = (_string_list(envelope.document, name, limits) for name in ("to", "cc", "bcc"))
    to, cc, bcc = normalize_recipients(list(to), list(cc), list(bcc))
    mail = Mail(envelope.id, envelope.sender, to, cc, bcc, envelope.subject, envelope.body,
                envelope.in_reply_to, envelope.sent_at)
    check_limits(mail, limits, error=WireError)
    return mail


def check_limits(mail: Mail, limits: Limits, error: type[rules.RuleError] = rules.RuleError) -> None:
    """Raise ``error`` when ``mail`` has no recipient or breaks a size limit."""
    recipients = mail.recipients()
    if not recipients:
        raise error("no_recipients", "at least one of to, cc and bcc must name a recipient")
    if len(recipients) > limits.max_recipients:
        raise error("too_many_recipients", f"at most {limits.max_recipients} recipients")
    if len(mail.subject) > limits.max_subject_chars:
        raise error("subject_too_long", f"subject is at most {limits.max_subject_chars} characters")
    if rules.utf8_length(mail.body) > limits.max_body_bytes:
        raise error("payload_too_large", f"body is at most {limits.max_body_bytes} bytes of UTF-8")


@dataclass(frozen=True)
class Post:
    """One group post; ``seq`` is set once the archive numbered it."""

    id: str
    group: str
    sender: str
    body: str = ""
    subject: str = ""
    topic: str | None = None
    in_reply_to: str | None = None
    sent_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    seq: int | None = None

    def content_hash(self) -> str:
        """Return a digest of what the sender wrote, to spot id reuse."""
        canonical = json.dumps(
            ["post", self.group, self.sender, self.topic, self.subject, self.body, self.in_reply_to],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """Return the contract's post object."""
        return {
            "seq": self.seq,
            "id": self.id,
            "group": self.group,
            "topic": self.topic,
            "from": self.sender,
            "subject": self.subject,
            "body": self.body,
            "sent_at": format_time(self.sent_at),
            "in_reply_to": self.in_reply_to,
        }


def encode_post(post: Post) -> bytes:
    """Serialize ``post`` to the version-1 JSON body (with ``seq`` once numbered)."""
    document = {"v": SCHEMA_VERSION, "kind": "post", **post.to_json()}
    if post.seq is None:
        del document["seq"]
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _load_object(body: bytes) -> dict:
    try:
        document = rules.parse_json(body)
    except rules.RuleError as exc:
        raise WireError(exc.code, exc.detail) from None
    if not isinstance(document, dict):
        raise WireError("invalid_schema", "body must be a JSON object")
    return document


def decode_post(body: bytes, limits: Limits = Limits()) -> Post:
    """Parse and validate a version-1 post body; raise WireError saying why it is unusable."""
    envelope = _decode_envelope(body, "post")
    document = envelope.document
    group = _string(document, "group")
    topic = _string(document, "topic", optional=True)
    if not rules.is_group_name(group):
        raise WireError("invalid_schema", "'group' must be a group name")
    if topic is not None and not rules.is_topic(topic):
        raise WireError("invalid_schema", "'topic' must be a topic name")
    seq = document.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 1):
        raise WireError("invalid_schema", "'seq' must be a positive integer")
    post = Post(envelope.id, group, envelope.sender, envelope.body, envelope.subject, topic,
                envelope.in_reply_to, envelope.sent_at, seq)
    check_post_limits(post, limits, error=WireError)
    return post


def check_post_limits(post: Post, limits: Limits, error: type[rules.RuleError] = rules.RuleError) -> None:
    """Raise ``error`` when ``post`` breaks a size limit."""
    if len(post.subject) > limits.max_subject_chars:
        raise error("subject_too_long", f"subject is at most {limits.max_subject_chars} characters")
    if rules.utf8_length(post.body) > limits.max_body_bytes:
        raise error("payload_too_large", f"body is at most {limits.max_body_bytes} bytes of UTF-8")

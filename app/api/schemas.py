"""Request and response models of the HTTP API; the OpenAPI document is built from these."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """JSON in: no type coercion, no unknown fields (a typo is an error, not a silent drop)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class NewUser(Strict):
    """``POST /v1/users``."""

    username: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,31}$", description="lowercase, 2-32 characters")
    password: str = Field(min_length=8, max_length=1024)
    display_name: str | None = Field(default=None, max_length=200)


class Credentials(Strict):
    """``POST /v1/tokens``."""

    username: str = Field(max_length=200)
    password: str = Field(max_length=1024)


class NewMail(Strict):
    """``POST /v1/messages`` and ``PUT /v1/messages/{id}``: at least one recipient in all."""

    to: list[str] = Field(default_factory=list, description="usernames")
    cc: list[str] = Field(default_factory=list)
    bcc: list[str] = Field(default_factory=list, description="seen only by the sender and each bcc recipient")
    subject: str = ""
    body: str = ""
    in_reply_to: str | None = Field(default=None, description="id of the mail this answers; sets thread_id")


class UserOut(BaseModel):
    """A user."""

    username: str
    display_name: str
    created_at: str


class TokenOut(BaseModel):
    """A bearer token."""

    token: str
    token_type: str = "Bearer"
    expires_at: str


class MeOut(BaseModel):
    """The caller."""

    username: str
    display_name: str
    unread: dict[str, int]


class Accepted(BaseModel):
    """A send the broker has confirmed; a worker archives it shortly."""

    id: str
    status: str = "accepted"


class MailOut(BaseModel):
    """A mail as the caller sees it (``bcc`` only for the sender or the bcc recipient)."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    from_: str = Field(alias="from")
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str
    body: str
    sent_at: str
    thread_id: str
    in_reply_to: str | None
    read: bool
    uid: int
    folder: str


class MailPage(BaseModel):
    """A page of a folder."""

    messages: list[MailOut]
    next: str | None


class Problem(BaseModel):
    """An error (RFC 9457 problem details)."""

    type: str = "about:blank"
    status: int
    title: str
    detail: str
    code: str


class Health(BaseModel):
    """Liveness or readiness."""

    status: str
    checks: dict[str, str] = Field(default_factory=dict)


# -- groups ---------------------------------------------------------------------------------


class GroupIn(Strict):
    """``PUT /v1/groups/{name}``: on update only the fields given change."""

    description: str | None = Field(default=None, max_length=2000)
    visibility: Literal["public", "private"] | None = None


class NewPost(Strict):
    """``POST /v1/groups/{name}/messages``."""

    body: str
    subject: str = ""
    topic: str | None = Field(default=None, description="a-z 0-9 _ -, at most 64; becomes a routing-key word")
    in_reply_to: str | None = None


class ReadMarker(Strict):
    """``PUT /v1/groups/{name}/read-marker``."""

    seq: int


class GroupOut(BaseModel):
    """A group as the caller sees it (``unread`` and ``read_marker`` for members)."""

    name: str
    description: str
    visibility: str
    owner: str
    members: int
    high_seq: int
    member: bool
    unread: int | None = None
    read_marker: int | None = None


class GroupPage(BaseModel):
    """A page of groups."""

    groups: list[GroupOut]
    next: str | None


class PostOut(BaseModel):
    """A group post."""

    model_config = ConfigDict(populate_by_name=True)

    seq: int
    id: str
    group: str
    topic: str | None
    from_: str = Field(alias="from")
    subject: str
    body: str
    sent_at: str
    in_reply_to: str | None


class PostPage(BaseModel):
    """Posts in seq order."""

    messages: list[PostOut]
    next: str | None


# -- subscriptions --------------------------------------------------------------------------


class SubscriptionIn(Strict):
    """``PUT /v1/subscriptions/{sid}``."""

    groups: list[str] = Field(min_length=1, max_length=100)
    topics: dict[str, Annotated[list[str], Field(max_length=50)]] | None = Field(
        default=None, description="per group: up to 50 topic names, or '*'")
    start: Literal["latest", "earliest"] = "latest"


class AckIn(Strict):
    """``POST /v1/subscriptions/{sid}/ack``."""

    ack_ids: list[str] = Field(max_length=1000)


class SubscriptionOut(BaseModel):
    """A subscriber id."""

    id: str
    owner: str
    groups: list[str]
    topics: dict[str, list[str]]
    created_at: str
    backlog: int


class SubscriptionSummary(BaseModel):
    """One of the caller's subscriber ids."""

    id: str
    groups: list[str]
    created_at: str


class SubscriptionList(BaseModel):
    """The caller's subscriber ids."""

    subscriptions: list[SubscriptionSummary]


class PulledPost(PostOut):
    """A post leased to this caller until acked or the lease ends."""

    ack_id: str
    delivery_count: int


class PullOut(BaseModel):
    """Leased posts."""

    messages: list[PulledPost]


class AckOut(BaseModel):
    """What an ack did."""

    acked: list[str]
    expired: list[str]


class DeadLetterPage(BaseModel):
    """Posts that were not acked after too many deliveries."""

    messages: list[dict]


class PasswordChange(Strict):
    """``PUT /v1/me/password``: every token of the user is revoked afterwards."""

    password: str = Field(max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


class DeadLetterList(BaseModel):
    """Dead letters, newest reasons included."""

    dead_letters: list[dict]


class RequeueIn(Strict):
    """``POST /v1/admin/dead-letters/requeue``: every dead letter of ``kind``, or those listed."""

    kind: Literal["mail", "posts"] = "mail"
    message_ids: list[str] | None = Field(default=None, max_length=10000)


class RequeueOut(BaseModel):
    """What a requeue did."""

    requeued: list[str | None]
    skipped: list[dict]

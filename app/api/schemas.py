"""Request and response models of the HTTP API; the OpenAPI document is built from these."""

from __future__ import annotations

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

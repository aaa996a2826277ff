"""Authorization matrix: every HTTP endpoint of the app × every kind of caller.

The world (built afresh for each family of endpoints, see ``FAMILIES``):

- alice owns the public group ``plaza`` and the private group ``vault``; bob is a member of
  both; carol is an outsider; dave is in no group and is the operator (admin) of this app;
- alice mailed bob (archived by the worker) with an Idempotency-Key, and posted to vault with
  another;
- alice's subscription ``alice-sub`` reads vault, bob's ``bob-sub`` reads plaza;
- each group has one archived post: vault's waits in alice-sub's queue, plaza's is leased to
  bob (pulled from bob-sub, not acked).

Both workers have drained and stopped before any case runs, so the database and the queues
stay still unless a request itself writes or publishes.

Callers: ``anonymous`` (no Authorization header), ``malformed`` (alice's token with its
signature altered), ``revoked`` (another token of alice's, after ``DELETE /v1/tokens/current``),
and the users alice (owner), bob (member) and carol (outsider); dave on the admin endpoints;
also ``expired`` (alice's live token id, correctly signed, but dated beyond the token TTL)
wherever a token is needed, and a few broken Authorization headers on ``GET /v1/me``.

``MATRIX`` holds the expectations, keyed by (method, rule) as Flask routes them: an endpoint the
app serves without a row fails ``test_every_endpoint_has_a_row``, and every row says what each
of the six callers gets. Every refused case asserts the exact status and code of the contract
(/work/shared/api-v1.md) in a problem+json body, and that it changed nothing: every row of every
table of the database, and the message count of every Postroom queue on the test broker (a
queue that did not exist must still not exist), are the same before and after.

A family's cases run in one world: first every refusal of the family (the world is intact),
then the allowed cases in table order, each with a fresh token of its caller (so that an
earlier revocation does not matter); rows are listed so that the allowed cases compose
(reads before writes, deletions last).

``test_a_subscriber_id_never_gets_the_queues_of_another`` covers subscriber ids whose queue
names clash (``x.dead``'s queue is ``x``'s dead-letter queue).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import peewee
import pika
import pytest
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from app.services.tokens import ACCESS_SALT
from app.store.db import database_proxy, is_sqlite
from config import topology
from support import bearer, wait_until

pytestmark = pytest.mark.integration

# -- the cast -------------------------------------------------------------------------------------

ANONYMOUS, MALFORMED, REVOKED, EXPIRED = "anonymous", "malformed", "revoked", "expired"
ALICE, BOB, CAROL = "alice", "bob", "carol"  # owner, member, outsider
DAVE = "dave"  # the operator (POSTROOM_ADMIN_USERS); in no group
USERS = (ALICE, BOB, CAROL, DAVE)
CALLERS = (ANONYMOUS, MALFORMED, REVOKED, ALICE, BOB, CAROL)
TOKENLESS = (ANONYMOUS, MALFORMED, REVOKED, EXPIRED)  # no live token
PASSWORD = "correct horse"  # support.register's

PUBLIC, PRIVATE = "plaza", "vault"
ALICE_SUB, BOB_SUB = "alice-sub", "bob-sub"
#: Subscriber ids the cases try to create; their queues may appear only when that is allowed.
OTHER_SIDS = ("carol-spy", "carol-sub")

#: Placeholders in path arguments, bodies and forms, filled in from the world at call time.
MAIL = "<alice's mail to bob>"
FRESH_ID = "<a new message id>"
BOB_ACK = "<the ack id of bob's lease>"
NEW_USER = "<a new username>"
#: ``TOKEN(ALICE)``: alice's bearer token itself, for a body or a form.
TOKEN = "<token:{}>".format

#: The Idempotency-Keys alice sent her mail and her vault post with (keys are per sender).
ALICE_MAIL_KEY, ALICE_POST_KEY = "alice-mail-key", "alice-post-key"

MAIL_BODY = {"to": [BOB], "subject": "hi", "body": "hello bob"}
OTHER_MAIL_BODY = {"to": [BOB], "subject": "hi", "body": "not alice's text"}
HIJACK = {"description": "hijacked", "visibility": "public"}
NEW_PASSWORD = {"password": PASSWORD, "new_password": "a new secret"}
VHOST = "/"  # the test broker's URL names no virtual host


# -- the matrix -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One caller's request to an endpoint and what the contract says it gets."""

    caller: str
    status: int
    code: str | None = None  # the problem's code (errors only)
    args: dict[str, str] = field(default_factory=dict)  # the rule's path arguments
    body: Any = None  # JSON body; None: no body
    query: str = ""
    check: Callable[["World", Any], None] | None = None  # more assertions on an allowed answer
    still: bool | None = None  # must change nothing; default: exactly the refusals
    form: dict[str, str] | None = None  # form fields (the query string of a GET)
    answer: str | None = None  # the exact text/plain answer (RabbitMQ's auth backend)
    header: str | None = None  # this Authorization header instead of the caller's
    key: str | None = None  # an Idempotency-Key header

    @property
    def refused(self) -> bool:
        """An error status, or RabbitMQ's auth backend saying deny."""
        return self.status >= 400 or self.answer == "deny"

    @property
    def changes_nothing(self) -> bool:
        return self.refused if self.still is None else self.still

    def label(self) -> str:
        where = ",".join(f"{k}={v}" for k, v in self.args.items())
        if self.query:
            where += "?" + self.query
        if self.form is not None:
            where += " form " + ",".join(f"{k}={v}" for k, v in self.form.items())
        if self.header is not None:
            where += f" Authorization: {self.header[:24]!r}"
        if self.key is not None:
            where += f" Idempotency-Key: {self.key}"
        return f"{self.caller}({where})"


def case(caller: str, status: int, code: str | None = None, *, body: Any = None, query: str = "",
         check: Callable | None = None, still: bool | None = None, key: str | None = None, **args: str) -> Case:
    """Return a case; the keyword arguments other than the named ones are path arguments."""
    return Case(caller, status, code, args, body, query, check, still, key=key)


def no_token(*, body: Any = None, query: str = "", **args: str) -> tuple[Case, ...]:
    """The callers without a live token: 401 on every endpoint that needs one."""
    return (
        case(ANONYMOUS, 401, "missing_token", body=body, query=query, **args),
        case(MALFORMED, 401, "invalid_token", body=body, query=query, **args),
        case(REVOKED, 401, "invalid_token", body=body, query=query, **args),
        case(EXPIRED, 401, "invalid_token", body=body, query=query, **args),
    )


def broken_header(header: str, code: str) -> Case:
    """``GET /v1/me`` with this Authorization header: 401 ``code``."""
    return Case(ANONYMOUS, 401, code, header=header)


def everyone(status: int, *, body: Any = None, **args: str) -> tuple[Case, ...]:
    """Every caller gets ``status``: an endpoint that needs no token ignores whatever is sent."""
    return tuple(case(caller, status, body=body, **args) for caller in CALLERS)


def broker_asks(answer: str, caller: str = ANONYMOUS, **form: str) -> Case:
    """RabbitMQ asks its HTTP auth backend about the AMQP user named in ``form``. It sends no
    bearer token, and one sent anyway must count for nothing. Nothing is ever written."""
    return Case(caller, 200, form=form, answer=answer, still=True)


def everyone_denied(**form: str) -> tuple[Case, ...]:
    """Whatever the Authorization header, ``form`` alone is not enough: deny."""
    return tuple(broker_asks("deny", caller, **form) for caller in CALLERS)


@dataclass(frozen=True)
class Row:
    """The expectations for one (method, rule)."""

    auth: bool  # needs a bearer token
    cases: tuple[Case, ...]


# Checks of allowed answers: what a caller sees is theirs to see, and no more.


def _mail_ids(has_it: bool) -> Callable:
    def check(world: "World", response) -> None:
        ids = [m["id"] for m in response.get_json()["messages"]]
        assert ids == ([world.mail_id] if has_it else []), ids
    return check


def _not_alices(world: "World", response) -> None:
    """Someone else's Idempotency-Key is no key of mine: a new id, not alice's."""
    assert response.get_json()["id"] not in (world.mail_id, world.vault_post_id), response.get_json()


def _mail_as_recipient(world: "World", response) -> None:
    mail = response.get_json()
    assert mail["id"] == world.mail_id and mail["bcc"] == [] and mail["to"] == [BOB], mail


def _groups_seen(*names: str) -> Callable:
    def check(world: "World", response) -> None:
        assert [g["name"] for g in response.get_json()["groups"]] == list(names), response.get_json()
    return check


def _group_member(member: bool) -> Callable:
    def check(world: "World", response) -> None:
        group = response.get_json()
        assert group["member"] is member and ("unread" in group) is member, group
    return check


def _visibility_kept(world: "World", response) -> None:
    group = response.get_json()
    assert group["description"] == "updated" and group["visibility"] == "private", group


def _posts(count: int) -> Callable:
    def check(world: "World", response) -> None:
        assert len(response.get_json()["messages"]) == count, response.get_json()
    return check


def _owns_only(*sids: str) -> Callable:
    def check(world: "World", response) -> None:
        assert [s["id"] for s in response.get_json()["subscriptions"]] == list(sids), response.get_json()
    return check


def _backlog(count: int) -> Callable:
    def check(world: "World", response) -> None:
        assert response.get_json()["backlog"] == count, response.get_json()
    return check


def _acked(acked: list[str], expired: list[str]) -> Callable:
    def check(world: "World", response) -> None:
        assert response.get_json() == {"acked": world.fill(acked), "expired": world.fill(expired)}
    return check


def _verified(name: str) -> Callable:
    def check(world: "World", response) -> None:
        assert response.get_json()["username"] == name, response.get_json()
    return check


def _resource(answer: str, username: str, kind: str, name: str, permission: str, vhost: str = VHOST) -> Case:
    return broker_asks(answer, username=username, vhost=vhost, resource=kind, name=name, permission=permission)


def _topic(answer: str, username: str, routing_key: str, exchange: str = topology.GROUPS_EXCHANGE) -> Case:
    return broker_asks(answer, username=username, vhost=VHOST, resource="topic", name=exchange,
                       permission="write", routing_key=routing_key)


_ALICE_QUEUES = (topology.subscription_queue(ALICE_SUB), topology.subscription_dead_queue(ALICE_SUB))

#: The four questions of RabbitMQ's HTTP auth backend (each asked by GET and by POST).
BROKER_QUESTIONS: dict[str, tuple[Case, ...]] = {
    "user": (
        *everyone_denied(),  # a bearer header is no AMQP login
        *everyone_denied(username=ALICE),
        broker_asks("deny", username=ALICE, password=TOKEN(MALFORMED)),
        broker_asks("deny", username=ALICE, password=TOKEN(REVOKED)),
        broker_asks("deny", username=ALICE, password=TOKEN(EXPIRED)),
        broker_asks("deny", username=CAROL, password=TOKEN(ALICE)),  # someone else's token
        broker_asks("deny", username=ALICE, password=PASSWORD),  # a password is not a token
        broker_asks("allow", username=ALICE, password=TOKEN(ALICE)),
        broker_asks("allow", username=CAROL, password=TOKEN(CAROL)),
    ),
    "vhost": (
        *everyone_denied(vhost=VHOST),
        broker_asks("deny", username="nobody", vhost=VHOST),
        broker_asks("deny", username=CAROL, vhost="elsewhere"),
        broker_asks("allow", username=CAROL, vhost=VHOST),
    ),
    "resource": (
        *everyone_denied(vhost=VHOST, resource="queue", name=_ALICE_QUEUES[0], permission="read"),
        *(_resource("deny", name, "queue", queue, permission)
          for name in (BOB, CAROL) for queue in _ALICE_QUEUES for permission in ("read", "configure")),
        _resource("deny", ALICE, "queue", topology.MAIL_ARCHIVE_QUEUE, "read"),
        _resource("deny", ALICE, "queue", _ALICE_QUEUES[0], "write"),
        _resource("deny", ALICE, "queue", _ALICE_QUEUES[0], "read", vhost="elsewhere"),
        _resource("deny", BOB, "exchange", topology.POSTS_EXCHANGE, "write"),
        _resource("deny", BOB, "exchange", topology.MAIL_EXCHANGE, "configure"),
        _resource("allow", ALICE, "queue", _ALICE_QUEUES[0], "read"),
        _resource("allow", BOB, "queue", topology.subscription_dead_queue(BOB_SUB), "configure"),
        _resource("allow", CAROL, "exchange", topology.MAIL_EXCHANGE, "write"),
    ),
    "topic": (
        *everyone_denied(vhost=VHOST, resource="topic", name=topology.GROUPS_EXCHANGE, permission="write",
                         routing_key=f"{PUBLIC}._"),
        *(_topic("deny", CAROL, key) for key in (f"{PRIVATE}._", f"{PUBLIC}._", f"{PUBLIC}.news")),
        *(_topic("deny", BOB, key)
          for key in (f"{PRIVATE}.#", f"{PRIVATE}.*", "#", "*.news", PRIVATE, f"{PRIVATE}.news.more")),
        _topic("deny", BOB, f"{PRIVATE}._", exchange=topology.POSTS_EXCHANGE),
        _topic("allow", BOB, f"{PRIVATE}._"),
        _topic("allow", ALICE, f"{PUBLIC}.news"),
    ),
}

MATRIX: dict[tuple[str, str], Row] = {
    # -- accounts (the token endpoints last: they revoke) ------------------------------------
    ("POST", "/v1/users"): Row(False, everyone(201, body={"username": NEW_USER, "password": PASSWORD})),
    ("POST", "/v1/tokens"): Row(False, (
        case(ANONYMOUS, 401, "invalid_credentials", body={"username": ALICE, "password": "wrong password"}),
        case(MALFORMED, 401, "invalid_credentials", body={"username": "nobody", "password": PASSWORD}),
        *everyone(201, body={"username": ALICE, "password": PASSWORD}),
    )),
    ("GET", "/v1/me"): Row(True, (
        *no_token(),
        broken_header("Bearer", "missing_token"), broken_header("Bearer   ", "missing_token"),
        broken_header("Basic YWxpY2U6Y29ycmVjdCBob3JzZQ==", "missing_token"),  # alice:correct horse
        broken_header(TOKEN(ALICE), "missing_token"),  # the token without its scheme
        broken_header("Bearer not-a-token", "invalid_token"),
        broken_header("Bearer " + TOKEN(ALICE) + "x", "invalid_token"),
        broken_header("Bearer " + TOKEN("other-key"), "invalid_token"),  # signed with another key
        case(ALICE, 200), case(BOB, 200), case(CAROL, 200),
    )),
    # the token check for API processes that delegate it: the token is in the body
    ("POST", "/auth/v1/verify"): Row(False, (
        case(ANONYMOUS, 401, "missing_token", body={}),
        case(MALFORMED, 401, "invalid_token", body={"token": TOKEN(MALFORMED)}),
        case(REVOKED, 401, "invalid_token", body={"token": TOKEN(REVOKED)}),
        case(EXPIRED, 401, "invalid_token", body={"token": TOKEN(EXPIRED)}),
        case(CAROL, 401, "missing_token", body={"token": ""}),  # her header is not what is checked
        *(case(name, 200, body={"token": TOKEN(name)}, check=_verified(name), still=True)
          for name in (ALICE, BOB, CAROL)),
    )),
    ("DELETE", "/v1/tokens/current"): Row(True, (
        *no_token(), case(ALICE, 204), case(BOB, 204), case(CAROL, 204),
    )),
    ("DELETE", "/v1/tokens"): Row(True, (
        *no_token(), case(ALICE, 204), case(BOB, 204), case(CAROL, 204),
    )),
    ("PUT", "/v1/me/password"): Row(True, (
        *no_token(body=NEW_PASSWORD),
        case(CAROL, 403, "wrong_password", body={"password": "not carol's", "new_password": "a new secret"}),
        case(ALICE, 204, body=NEW_PASSWORD), case(BOB, 204, body=NEW_PASSWORD), case(CAROL, 204, body=NEW_PASSWORD),
    )),
    # -- mail: someone else's mail is 404, never 403 ---------------------------------------------
    ("POST", "/v1/messages"): Row(True, (
        *no_token(body=MAIL_BODY),
        case(ALICE, 202, body=MAIL_BODY), case(BOB, 202, body={**MAIL_BODY, "to": [ALICE]}),
        case(CAROL, 202, body=MAIL_BODY, key=ALICE_MAIL_KEY, check=_not_alices),
    )),
    ("PUT", "/v1/messages/<message_id>"): Row(True, (
        *no_token(message_id=FRESH_ID, body=MAIL_BODY),
        # alice's id, by someone else: 409 id_conflict, and nothing is sent
        case(BOB, 409, "id_conflict", message_id=MAIL, body=OTHER_MAIL_BODY),
        case(CAROL, 409, "id_conflict", message_id=MAIL, body=OTHER_MAIL_BODY),
        case(CAROL, 409, "id_conflict", message_id=MAIL, body=MAIL_BODY),
        case(ALICE, 202, message_id=FRESH_ID, body=MAIL_BODY),
        case(BOB, 202, message_id=FRESH_ID, body=MAIL_BODY),
        case(CAROL, 202, message_id=FRESH_ID, body=MAIL_BODY),
    )),
    ("GET", "/v1/messages/<message_id>"): Row(True, (
        *no_token(message_id=MAIL),
        case(CAROL, 404, "message_not_found", message_id=MAIL),
        case(ALICE, 200, message_id=MAIL), case(BOB, 200, message_id=MAIL, check=_mail_as_recipient),
    )),
    ("PUT", "/v1/messages/<message_id>/read"): Row(True, (
        *no_token(message_id=MAIL),
        case(CAROL, 404, "message_not_found", message_id=MAIL),
        case(ALICE, 204, message_id=MAIL), case(BOB, 204, message_id=MAIL),
    )),
    ("DELETE", "/v1/messages/<message_id>/read"): Row(True, (
        *no_token(message_id=MAIL),
        case(CAROL, 404, "message_not_found", message_id=MAIL),
        case(ALICE, 204, message_id=MAIL), case(BOB, 204, message_id=MAIL),
    )),
    ("GET", "/v1/mailbox/inbox"): Row(True, (
        *no_token(),
        case(ALICE, 200, check=_mail_ids(False)), case(BOB, 200, check=_mail_ids(True)),
        case(CAROL, 200, check=_mail_ids(False)),
    )),
    ("GET", "/v1/mailbox/sent"): Row(True, (
        *no_token(),
        case(ALICE, 200, check=_mail_ids(True)), case(BOB, 200, check=_mail_ids(False)),
        case(CAROL, 200, check=_mail_ids(False)),
    )),
    ("DELETE", "/v1/messages/<message_id>"): Row(True, (
        *no_token(message_id=MAIL),
        case(CAROL, 404, "message_not_found", message_id=MAIL),
        case(BOB, 204, message_id=MAIL), case(ALICE, 204, message_id=MAIL),
    )),
    # -- groups: a private group is 404 to outsiders everywhere; known but not theirs: 403 -------
    ("GET", "/v1/groups"): Row(True, (
        *no_token(),
        case(ALICE, 200, check=_groups_seen(PUBLIC, PRIVATE)), case(BOB, 200, check=_groups_seen(PUBLIC, PRIVATE)),
        case(CAROL, 200, check=_groups_seen(PUBLIC)),
    )),
    ("GET", "/v1/groups/<name>"): Row(True, (
        *no_token(name=PRIVATE),
        case(CAROL, 404, "group_not_found", name=PRIVATE),
        case(CAROL, 200, name=PUBLIC, check=_group_member(False)),
        case(BOB, 200, name=PRIVATE, check=_group_member(True)),
        case(ALICE, 200, name=PRIVATE, check=_group_member(True)),
    )),
    ("GET", "/v1/groups/<name>/messages"): Row(True, (
        *no_token(name=PRIVATE),
        case(CAROL, 404, "group_not_found", name=PRIVATE),
        case(CAROL, 200, name=PUBLIC, check=_posts(1)),  # anyone reads a public group
        case(BOB, 200, name=PRIVATE, check=_posts(1)),
        case(ALICE, 200, name=PRIVATE, check=_posts(1)),
    )),
    ("PUT", "/v1/groups/<name>/read-marker"): Row(True, (
        *no_token(name=PRIVATE, body={"seq": 1}),
        case(CAROL, 404, "group_not_found", name=PRIVATE, body={"seq": 1}),
        case(CAROL, 404, "member_not_found", name=PUBLIC, body={"seq": 1}),
        case(BOB, 204, name=PRIVATE, body={"seq": 1}),
        case(ALICE, 204, name=PRIVATE, body={"seq": 0}),
    )),
    ("POST", "/v1/groups/<name>/messages"): Row(True, (
        *no_token(name=PRIVATE, body={"body": "hi"}),
        case(CAROL, 404, "group_not_found", name=PRIVATE, body={"body": "hi"}),
        case(CAROL, 403, "not_a_member", name=PUBLIC, body={"body": "hi"}),
        case(BOB, 202, name=PRIVATE, body={"body": f"first in {PRIVATE}"}, key=ALICE_POST_KEY, check=_not_alices),
        case(BOB, 202, name=PUBLIC, body={"body": "hi"}),
        case(ALICE, 202, name=PRIVATE, body={"body": "hi"}),
    )),
    ("PUT", "/v1/groups/<name>"): Row(True, (
        *no_token(name=PRIVATE, body=HIJACK),
        case(CAROL, 404, "group_not_found", name=PRIVATE, body=HIJACK),
        case(CAROL, 404, "group_not_found", name=PRIVATE, body={}),
        case(CAROL, 403, "not_owner", name=PUBLIC, body=HIJACK),
        case(BOB, 403, "not_owner", name=PRIVATE, body=HIJACK),
        case(BOB, 403, "not_owner", name=PUBLIC, body={"visibility": "private"}),
        case(ALICE, 200, name=PRIVATE, body={"description": "updated"}, check=_visibility_kept),
        case(CAROL, 201, name="carols-corner", body={}),
    )),
    ("PUT", "/v1/groups/<name>/members/<username>"): Row(True, (
        *no_token(name=PRIVATE, username=CAROL),
        case(CAROL, 404, "group_not_found", name=PRIVATE, username=CAROL),
        case(CAROL, 404, "group_not_found", name=PRIVATE, username=DAVE),
        case(CAROL, 403, "not_owner", name=PUBLIC, username=DAVE),
        case(BOB, 403, "not_owner", name=PUBLIC, username=DAVE),
        case(BOB, 403, "not_owner", name=PRIVATE, username=CAROL),
        case(BOB, 200, name=PRIVATE, username=BOB),  # already a member
        case(CAROL, 201, name=PUBLIC, username=CAROL),  # anyone joins a public group
        case(ALICE, 201, name=PRIVATE, username=DAVE),
    )),
    ("DELETE", "/v1/groups/<name>/members/<username>"): Row(True, (
        *no_token(name=PRIVATE, username=BOB),
        case(CAROL, 404, "group_not_found", name=PRIVATE, username=BOB),
        case(CAROL, 404, "group_not_found", name=PRIVATE, username=CAROL),
        case(CAROL, 403, "not_owner", name=PUBLIC, username=BOB),
        case(CAROL, 404, "member_not_found", name=PUBLIC, username=CAROL),
        case(BOB, 403, "not_owner", name=PUBLIC, username=ALICE),
        case(BOB, 403, "not_owner", name=PRIVATE, username=ALICE),
        case(ALICE, 409, "owner_cannot_leave", name=PRIVATE, username=ALICE),
        case(BOB, 204, name=PRIVATE, username=BOB),
        case(ALICE, 204, name=PUBLIC, username=BOB),
    )),
    ("DELETE", "/v1/groups/<name>"): Row(True, (
        *no_token(name=PRIVATE),
        case(CAROL, 404, "group_not_found", name=PRIVATE),
        case(CAROL, 403, "not_owner", name=PUBLIC),
        case(BOB, 403, "not_owner", name=PRIVATE),
        case(BOB, 403, "not_owner", name=PUBLIC),
        case(ALICE, 204, name=PRIVATE), case(ALICE, 204, name=PUBLIC),
    )),
    # -- subscriptions: someone else's id is 404, except PUT: 403 subscription_taken ------------
    ("GET", "/v1/subscriptions"): Row(True, (
        *no_token(),
        case(ALICE, 200, check=_owns_only(ALICE_SUB)),
        case(BOB, 200, check=_owns_only(BOB_SUB)),
        case(CAROL, 200, check=_owns_only()),
    )),
    ("GET", "/v1/subscriptions/<sid>"): Row(True, (
        *no_token(sid=ALICE_SUB),
        case(BOB, 404, "subscription_not_found", sid=ALICE_SUB),
        case(CAROL, 404, "subscription_not_found", sid=ALICE_SUB),
        case(ALICE, 404, "subscription_not_found", sid=BOB_SUB),
        case(ALICE, 200, sid=ALICE_SUB, check=_backlog(1)),
        case(BOB, 200, sid=BOB_SUB, check=_backlog(1)),  # the leased post
    )),
    ("GET", "/v1/subscriptions/<sid>/messages"): Row(True, (
        *no_token(sid=ALICE_SUB),
        case(BOB, 404, "subscription_not_found", sid=ALICE_SUB),
        case(CAROL, 404, "subscription_not_found", sid=ALICE_SUB),
        case(CAROL, 404, "subscription_not_found", sid=ALICE_SUB, query="max=100&wait=0.2"),
        case(ALICE, 404, "subscription_not_found", sid=BOB_SUB),
        case(BOB, 200, sid=BOB_SUB, check=_posts(0)),  # its one post is leased
        case(ALICE, 200, sid=ALICE_SUB, check=_posts(1)),
    )),
    ("POST", "/v1/subscriptions/<sid>/ack"): Row(True, (
        *no_token(sid=BOB_SUB, body={"ack_ids": [BOB_ACK]}),
        case(ALICE, 404, "subscription_not_found", sid=BOB_SUB, body={"ack_ids": [BOB_ACK]}),
        case(CAROL, 404, "subscription_not_found", sid=BOB_SUB, body={"ack_ids": [BOB_ACK]}),
        case(BOB, 404, "subscription_not_found", sid=ALICE_SUB, body={"ack_ids": [BOB_ACK]}),
        # bob's ack id means nothing on alice's own subscription: expired, and his lease stays
        case(ALICE, 200, sid=ALICE_SUB, body={"ack_ids": [BOB_ACK]}, check=_acked([], [BOB_ACK]), still=True),
        case(BOB, 200, sid=BOB_SUB, body={"ack_ids": [BOB_ACK]}, check=_acked([BOB_ACK], [])),
    )),
    ("GET", "/v1/subscriptions/<sid>/dead-letters"): Row(True, (
        *no_token(sid=ALICE_SUB),
        case(BOB, 404, "subscription_not_found", sid=ALICE_SUB),
        case(CAROL, 404, "subscription_not_found", sid=ALICE_SUB),
        case(ALICE, 404, "subscription_not_found", sid=BOB_SUB),
        case(ALICE, 200, sid=ALICE_SUB, check=_posts(0)),
    )),
    ("PUT", "/v1/subscriptions/<sid>"): Row(True, (
        *no_token(sid=ALICE_SUB, body={"groups": [PRIVATE]}),
        case(CAROL, 403, "subscription_taken", sid=ALICE_SUB, body={"groups": [PUBLIC]}),
        # someone else's id comes first, whatever the groups asked for
        case(CAROL, 403, "subscription_taken", sid=ALICE_SUB, body={"groups": [PRIVATE]}),
        case(BOB, 403, "subscription_taken", sid=ALICE_SUB, body={"groups": [PRIVATE]}),
        case(ALICE, 403, "subscription_taken", sid=BOB_SUB, body={"groups": [PRIVATE]}),
        case(CAROL, 404, "group_not_found", sid="carol-spy", body={"groups": [PRIVATE]}),
        case(CAROL, 404, "group_not_found", sid="carol-spy", body={"groups": [PUBLIC, PRIVATE]}),
        case(ALICE, 200, sid=ALICE_SUB, body={"groups": [PRIVATE, PUBLIC]}),
        case(BOB, 200, sid=BOB_SUB, body={"groups": [PUBLIC, PRIVATE]}),
        case(CAROL, 201, sid="carol-sub", body={"groups": [PUBLIC]}),
    )),
    ("DELETE", "/v1/subscriptions/<sid>"): Row(True, (
        *no_token(sid=ALICE_SUB),
        case(BOB, 404, "subscription_not_found", sid=ALICE_SUB),
        case(CAROL, 404, "subscription_not_found", sid=ALICE_SUB),
        case(ALICE, 404, "subscription_not_found", sid=BOB_SUB),
        case(BOB, 204, sid=BOB_SUB), case(ALICE, 204, sid=ALICE_SUB),
    )),
    # -- operators only (dave) -------------------------------------------------------------------
    ("GET", "/v1/admin/dead-letters"): Row(True, (
        *no_token(), *(case(name, 403, "not_admin") for name in (ALICE, BOB, CAROL)),
        case(DAVE, 200, still=True), case(DAVE, 200, query="kind=posts", still=True),
    )),
    ("GET", "/v1/admin/dead-letters/<message_id>"): Row(True, (
        *no_token(message_id=MAIL), *(case(name, 403, "not_admin", message_id=MAIL) for name in (ALICE, BOB, CAROL)),
        case(DAVE, 404, "dead_letter_not_found", message_id=MAIL),
    )),
    ("POST", "/v1/admin/dead-letters/requeue"): Row(True, (
        *no_token(body={"kind": "mail"}),
        *(case(name, 403, "not_admin", body={"kind": kind})
          for name in (ALICE, BOB, CAROL) for kind in ("mail", "posts")),
        case(DAVE, 200, body={"kind": "mail", "message_ids": [MAIL]}, still=True),
    )),
    # -- RabbitMQ's HTTP auth backend: the AMQP user is in the form, never in a header --------
    **{(method, f"/auth/rabbitmq/{question}"): Row(False, cases)
       for question, cases in BROKER_QUESTIONS.items() for method in ("GET", "POST")},
    # -- operations: open to all -----------------------------------------------------------------
    ("GET", "/healthz"): Row(False, everyone(200)),
    ("GET", "/readyz"): Row(False, everyone(200)),
    ("GET", "/openapi.json"): Row(False, everyone(200)),
}

#: Families of endpoints by path (a path and what is below it); each family's cases run in a
#: world of its own.
FAMILIES: dict[str, tuple[str, ...]] = {
    "accounts": ("/v1/users", "/v1/tokens", "/v1/me", "/auth/v1"),
    "mail": ("/v1/messages", "/v1/mailbox"),
    "groups": ("/v1/groups",),
    "subscriptions": ("/v1/subscriptions",),
    "admin": ("/v1/admin",),
    "broker-auth": ("/auth/rabbitmq",),
    "operations": ("/healthz", "/readyz", "/openapi.json"),
}
#: Families also run on PostgreSQL (the rest on SQLite only: the rules live above the database).
ON_BOTH_DATABASES = ("groups", "subscriptions")


def family_of(rule: str) -> str | None:
    """Return the family of ``rule``, None when it is in none."""
    return next((name for name, paths in FAMILIES.items()
                 if any(rule == path or rule.startswith(path + "/") for path in paths)), None)


def served_endpoints(app) -> set[tuple[str, str]]:
    """Return every (method, rule) the app routes, HEAD and OPTIONS aside."""
    return {(method, rule.rule) for rule in app.url_map.iter_rules()
            for method in rule.methods - {"HEAD", "OPTIONS"}}


# -- what "changed nothing" means ---------------------------------------------------------------


class QueueProbe:
    """Reads the message counts of queues on the test broker (passive declares, one channel)."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = None

    def count(self, name: str) -> int | None:
        """Return how many messages wait in ``name``; None if there is no such queue."""
        if self.channel is None or not self.channel.is_open:
            self.channel = self.connection.channel()
        quiet = logging.getLogger("pika.channel")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # pika warns of every 404, which is an answer here
        try:
            return self.channel.queue_declare(name, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker as exc:  # it closed the channel too
            self.channel = None
            if exc.reply_code == 404:
                return None
            raise
        finally:
            quiet.setLevel(level)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


def table_names(database: peewee.Database) -> list[str]:
    """Return every table of the app's database (its own schema on PostgreSQL)."""
    if is_sqlite(database):
        return database.get_tables()
    schema = database.execute_sql("SELECT current_schema()").fetchone()[0]
    return database.get_tables(schema=schema)


def database_rows(database: peewee.Database) -> dict[str, list[str]]:
    """Return every row of every table, sorted: an insert, an update and a delete all show."""
    return {table: sorted(repr(row) for row in database.execute_sql(f'SELECT * FROM "{table}"').fetchall())
            for table in table_names(database)}


def postroom_queues(sids: set[str]) -> list[str]:
    """Return the names of Postroom's queues: the fixed ones and those of the subscriber ids."""
    names = [spec.name for spec in topology.QUEUES]
    for sid in sorted(sids):
        names += [topology.subscription_queue(sid), topology.subscription_dead_queue(sid)]
    return names


@dataclass(frozen=True)
class Snapshot:
    """The database's rows and the queues' message counts at one moment."""

    rows: dict[str, list[str]]
    queues: dict[str, int | None]

    def differences(self, later: "Snapshot") -> list[str]:
        """Say what changed from this snapshot to ``later``, table by table and queue by queue."""
        found = []
        for table in sorted(self.rows.keys() | later.rows.keys()):
            before, after = self.rows.get(table, []), later.rows.get(table, [])
            if before != after:
                new, gone = sorted(set(after) - set(before))[:3], sorted(set(before) - set(after))[:3]
                found.append(f"table {table}: {len(before)} -> {len(after)} rows; new {new}, gone {gone}")
        for queue in sorted(self.queues.keys() | later.queues.keys()):
            before, after = self.queues.get(queue), later.queues.get(queue)
            if before != after:
                found.append(f"queue {queue}: {_depth(before)} -> {_depth(after)} messages")
        return found


def _depth(count: int | None) -> str:
    return "no queue" if count is None else str(count)


# -- the world ------------------------------------------------------------------------------------


@dataclass
class World:
    """The app, the fixtures of the module docstring, and a way to call as each caller."""

    client: FlaskClient
    database: peewee.Database
    probe: QueueProbe
    tokens: dict[str, str]  # the bearer token of each caller ("" for anonymous)
    mail_id: str
    bob_ack: str
    vault_post_id: str = ""
    probed_sids: tuple[str, ...] = (ALICE_SUB, BOB_SUB, *OTHER_SIDS)  # queues watched even before they exist

    def snapshot(self) -> Snapshot:
        """Return the database's rows and the message counts of every Postroom queue."""
        sids = {row[0] for row in self.database.execute_sql("SELECT id FROM subscription").fetchall()}
        sids |= set(self.probed_sids)
        return Snapshot(database_rows(self.database), {q: self.probe.count(q) for q in postroom_queues(sids)})

    def fill(self, value: Any) -> Any:
        """Replace the placeholders in ``value`` (a path argument, a JSON body or a form)."""
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        if not isinstance(value, str):
            return value
        if "<token:" in value:
            return re.sub(r"<token:([^>]+)>", lambda m: self.tokens[m.group(1)], value)
        makers = {MAIL: lambda: self.mail_id, FRESH_ID: lambda: str(uuid.uuid4()), BOB_ACK: lambda: self.bob_ack,
                  NEW_USER: lambda: f"u{uuid.uuid4().hex[:12]}"}
        return makers[value]() if value in makers else value

    def headers_for(self, case: Case) -> dict[str, str]:
        """The caller's Authorization header; a fresh token of a user for an allowed case."""
        if case.header is not None:
            return {"Authorization": self.fill(case.header)}
        if case.caller in USERS and not case.refused:
            response = self.client.post("/v1/tokens", json={"username": case.caller, "password": PASSWORD})
            return bearer(ok(response, 201, f"log {case.caller} in for {case.label()}")["token"])
        token = self.tokens[case.caller]
        return bearer(token) if token else {}

    def call(self, method: str, rule: str, case: Case, headers: dict[str, str]):
        """Send ``case``'s request to ``rule``."""
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: self.fill(case.args[m.group(1)]), rule)
        if case.query:
            path += "?" + case.query
        extra: dict[str, Any] = {} if case.body is None else {"json": self.fill(case.body)}
        if case.form is not None:
            extra["query_string" if method == "GET" else "data"] = self.fill(case.form)
        if case.key is not None:
            headers = {**headers, "Idempotency-Key": case.key}
        return self.client.open(path, method=method, headers=headers, **extra)


def tampered(token: str) -> str:
    """Return ``token`` with the first character of its signature changed."""
    head, _, signature = token.rpartition(".")
    return f"{head}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"


def resigned(token: str, key: str, age: float) -> str:
    """Return a token with ``token``'s claims, signed with ``key`` ``age`` seconds ago."""

    class Backdated(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age)

    _, claims = URLSafeTimedSerializer("unused").loads_unsafe(token)
    return URLSafeTimedSerializer(key, salt=ACCESS_SALT, signer=Backdated).dumps(claims)


def ok(response, status: int, what: str) -> Any:
    """Assert a setup step answered ``status``; return its JSON."""
    assert response.status_code == status, f"{what}: {response.status_code} {response.get_data()[:300]!r}"
    return response.get_json(silent=True)


def drop_subscription_queues(url: str, sids: tuple[str, ...]) -> None:
    """Delete the queues of these subscriber ids on the test broker: they outlive a test (the
    settings fixture purges only the fixed queues), and a leftover would skew the counts."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for sid in sids:
            channel.queue_delete(topology.subscription_queue(sid))
            channel.queue_delete(topology.subscription_dead_queue(sid))
    finally:
        connection.close()


@pytest.fixture
def settings(settings):
    """The usual settings, with dave as the operator of the /v1/admin endpoints."""
    return dataclasses.replace(settings, admin_users=(DAVE,))


@pytest.fixture
def world(broker, settings, client, people, worker, post_worker) -> Iterator[World]:
    """The world of the module docstring, with both workers stopped once they drained."""
    all_sids = (ALICE_SUB, BOB_SUB, *OTHER_SIDS)
    drop_subscription_queues(broker.url, all_sids)
    alice, bob = people[ALICE], people[BOB]
    tokens = {name: people[name]["Authorization"].removeprefix("Bearer ") for name in USERS}
    # Another token of alice's, revoked; and alice's token with its signature altered.
    revoked = ok(client.post("/v1/tokens", json={"username": ALICE, "password": PASSWORD}), 201, "log in")["token"]
    ok(client.delete("/v1/tokens/current", headers=bearer(revoked)), 204, "revoke")
    tokens |= {ANONYMOUS: "", REVOKED: revoked, MALFORMED: tampered(tokens[ALICE]),
               EXPIRED: resigned(tokens[ALICE], settings.secret_keys[0], age=settings.token_ttl_seconds + 60),
               "other-key": resigned(tokens[ALICE], "not-the-secret-key", age=0)}
    # The expired token is refused for its age alone: signed now, the same claims are alice's.
    same = resigned(tokens[ALICE], settings.secret_keys[0], age=0)
    assert ok(client.get("/v1/me", headers=bearer(same)), 200, "re-signed token")["username"] == ALICE

    ok(client.put(f"/v1/groups/{PUBLIC}", json={"description": "open"}, headers=alice), 201, "public group")
    ok(client.put(f"/v1/groups/{PRIVATE}", json={"visibility": "private"}, headers=alice), 201, "private group")
    for group in (PUBLIC, PRIVATE):
        ok(client.put(f"/v1/groups/{group}/members/{BOB}", headers=alice), 201, f"bob joins {group}")
    ok(client.put(f"/v1/subscriptions/{ALICE_SUB}", json={"groups": [PRIVATE]}, headers=alice), 201, "alice-sub")
    ok(client.put(f"/v1/subscriptions/{BOB_SUB}", json={"groups": [PUBLIC]}, headers=bob), 201, "bob-sub")
    mail_id = ok(client.post("/v1/messages", json=MAIL_BODY, headers={**alice, "Idempotency-Key": ALICE_MAIL_KEY}),
                 202, "mail")["id"]
    ok(client.post(f"/v1/groups/{PUBLIC}/messages", json={"body": f"first in {PUBLIC}"}, headers=alice), 202, "post")
    vault_post_id = ok(client.post(f"/v1/groups/{PRIVATE}/messages", json={"body": f"first in {PRIVATE}"},
                                   headers={**alice, "Idempotency-Key": ALICE_POST_KEY}), 202, "post")["id"]

    probe = QueueProbe(broker.url)
    try:
        wait_until(lambda: client.get(f"/v1/messages/{mail_id}", headers=bob).status_code == 200,
                   what="the mail archived")
        for sid in (ALICE_SUB, BOB_SUB):
            queue = topology.subscription_queue(sid)
            wait_until(lambda: probe.count(queue) == 1, what=f"the post queued for {sid}")
        for running in (worker, post_worker):  # ask both, then wait for both
            running.loop.call_soon_threadsafe(running.consumer.request_stop)
        worker.stop()
        post_worker.stop()
        for spec in topology.QUEUES:
            assert probe.count(spec.name) in (0, None), f"{spec.name} did not drain"
        leased = ok(client.get(f"/v1/subscriptions/{BOB_SUB}/messages", headers=bob), 200, "bob pulls")["messages"]
        assert len(leased) == 1, leased
        yield World(client, database_proxy.obj, probe, tokens, mail_id, leased[0]["ack_id"], vault_post_id)
    finally:
        probe.close()
        drop_subscription_queues(broker.url, all_sids)


# -- the tests ------------------------------------------------------------------------------------


def run_case(world: World, method: str, rule: str, case: Case) -> list[str]:
    """Run one case; return how it went against the matrix (nothing when it held)."""
    what = f"{method} {rule} as {case.label()}"
    try:
        headers = world.headers_for(case)
    except AssertionError as exc:
        return [f"{what}: {exc}"]
    before = world.snapshot() if case.changes_nothing else None
    response = world.call(method, rule, case, headers)
    text = response.get_data()
    problems = []
    if response.status_code != case.status:
        problems.append(f"{what}: expected {case.status} {case.code or ''}, got {response.status_code} {text[:300]!r}")
    elif case.status >= 400:
        problem = response.get_json(silent=True) or {}
        if response.mimetype != "application/problem+json":
            problems.append(f"{what}: not problem+json but {response.mimetype}")
        if problem.get("status") != case.status or not all(
                isinstance(problem.get(key), str) and problem[key] for key in ("title", "detail", "code")):
            problems.append(f"{what}: incomplete problem {problem}")
        if problem.get("code") != case.code:
            problems.append(f"{what}: expected code {case.code!r}, got {problem.get('code')!r}")
    elif case.answer is not None and response.get_data(as_text=True) != case.answer:
        problems.append(f"{what}: expected {case.answer!r}, got {text[:100]!r}")
    elif case.check is not None:
        try:
            case.check(world, response)
        except AssertionError as exc:
            problems.append(f"{what}: {exc}")
    if before is not None:
        problems += [f"{what} changed {change}" for change in before.differences(world.snapshot())]
    return problems


def family_cases(family: str) -> list[tuple[str, str, Case]]:
    """The family's refusals in table order, then its allowed cases in table order."""
    rows = [(key, row) for key, row in MATRIX.items() if family_of(key[1]) == family]
    every = [(method, rule, c) for (method, rule), row in rows for c in row.cases]
    return [x for x in every if x[2].refused] + [x for x in every if not x[2].refused]


def _family_params() -> list:
    params = [pytest.param(name, "sqlite", id=f"{name}-sqlite") for name in FAMILIES]
    params += [pytest.param(name, "postgres", id=f"{name}-postgres") for name in ON_BOTH_DATABASES]
    return params


@pytest.mark.parametrize("family, database_url", _family_params(), indirect=["database_url"])
def test_matrix(world, family):
    """Every case of the family answers as the matrix says; every refusal changes nothing."""
    cases = family_cases(family)
    assert cases, f"no rows in family {family}"
    problems = [p for method, rule, c in cases for p in run_case(world, method, rule, c)]
    assert not problems, f"{len(problems)} of {len(cases)} cases went wrong:\n" + "\n".join(problems)


def refused_quietly(world: World, response_of: Callable[[], Any], status: int, code: str) -> None:
    """Assert the request answers the problem ``status``/``code`` and changes nothing."""
    before = world.snapshot()
    response = response_of()
    assert response.status_code == status and response.mimetype == "application/problem+json", response.get_data()
    assert response.get_json()["code"] == code, response.get_json()
    assert before.differences(world.snapshot()) == []


def broker_says(client: FlaskClient, username: str, queue: str, permission: str) -> str:
    """Ask the auth backend whether ``username`` may ``permission`` the queue."""
    form = {"username": username, "vhost": VHOST, "resource": "queue", "name": queue, "permission": permission}
    return client.post("/auth/rabbitmq/resource", data=form).get_data(as_text=True)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_subscriber_id_never_gets_the_queues_of_another(broker, client, people):
    """``feed.dead``'s queue has the name of ``feed``'s dead-letter queue: whoever holds one of
    the two ids must not get the other (and so read posts of groups they are not in), and the
    holder of ``feed.dead`` consumes their own queue over AMQP."""
    sids = ("feed", "feed.dead", "news", "news.dead")
    drop_subscription_queues(broker.url, sids)
    alice, bob, carol = people[ALICE], people[BOB], people[CAROL]
    ok(client.put(f"/v1/groups/{PRIVATE}", json={"visibility": "private"}, headers=alice), 201, "private group")
    ok(client.put(f"/v1/groups/{PRIVATE}/members/{BOB}", headers=alice), 201, "bob joins")
    ok(client.put("/v1/groups/corner", json={}, headers=carol), 201, "carol's group")
    probe = QueueProbe(broker.url)
    world = World(client, database_proxy.obj, probe, {}, "", "", probed_sids=sids)
    try:
        # bob's id first: carol may not take the id whose dead letters are bob's posts of vault
        ok(client.put("/v1/subscriptions/feed.dead", json={"groups": [PRIVATE]}, headers=bob), 201, "feed.dead")
        refused_quietly(world, lambda: client.put("/v1/subscriptions/feed", json={"groups": ["corner"]},
                                                  headers=carol), 403, "subscription_taken")
        queue = topology.subscription_queue("feed.dead")
        assert [broker_says(client, CAROL, queue, p) for p in ("read", "configure")] == ["deny", "deny"]
        assert [broker_says(client, BOB, queue, p) for p in ("read", "configure")] == ["allow", "allow"]
        # carol's id first: bob may not take the id whose queue is carol's dead letters
        ok(client.put("/v1/subscriptions/news", json={"groups": ["corner"]}, headers=carol), 201, "news")
        refused_quietly(world, lambda: client.put("/v1/subscriptions/news.dead", json={"groups": [PRIVATE]},
                                                  headers=bob), 403, "subscription_taken")
        dead = topology.subscription_dead_queue("news")
        assert (broker_says(client, CAROL, dead, "read"), broker_says(client, BOB, dead, "read")) == ("allow", "deny")
    finally:
        probe.close()
        drop_subscription_queues(broker.url, sids)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_endpoint_has_a_row(app):
    """A new endpoint must come with its row; a row must name an endpoint the app still serves;
    a row needs a token exactly when the view does."""
    served = served_endpoints(app)
    assert sorted(served - MATRIX.keys()) == [], "endpoints without a row in MATRIX"
    assert sorted(MATRIX.keys() - served) == [], "rows for endpoints the app does not serve"
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert getattr(view, "authenticated", False) == MATRIX[method, rule.rule].auth, f"{method} {rule}: auth"


def test_every_row_covers_every_caller():
    """Each row says what each of the six callers gets and belongs to a family; an endpoint that
    needs a token answers 401 to the three callers without a live one."""
    for (method, rule), row in MATRIX.items():
        assert family_of(rule) is not None, f"{method} {rule}: in no family of FAMILIES"
        callers = {c.caller for c in row.cases}
        assert callers >= set(CALLERS), f"{method} {rule}: no case for {set(CALLERS) - callers}"
        placeholders = set(re.findall(r"<(?:[^:<>]+:)?([^<>]+)>", rule))
        for c in row.cases:
            assert set(c.args) == placeholders, f"{method} {rule}: {c.label()} names {set(c.args)}"
            if row.auth and c.caller in TOKENLESS:
                assert (c.status, c.code) in ((401, "missing_token"), (401, "invalid_token")), f"{method} {rule}"
    refusals = sum(c.refused for row in MATRIX.values() for c in row.cases)
    assert refusals >= 60, refusals


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_openapi_documents_every_status_of_the_matrix(client):
    """The OpenAPI document lists each status the matrix expects of an operation it documents,
    and bearer security exactly where a token is needed."""
    paths = client.get("/openapi.json").get_json()["paths"]
    for (method, rule), row in MATRIX.items():
        operation = paths.get(re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule), {}).get(method.lower())
        if operation is None:
            continue  # undocumented (the document itself)
        missing = {str(c.status) for c in row.cases} - set(operation["responses"])
        assert not missing, f"{method} {rule}: statuses {sorted(missing)} are not documented"
        assert bool(operation.get("security")) == row.auth, f"{method} {rule}: security"

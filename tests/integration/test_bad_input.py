"""Bad input: the user, token and mail endpoints that take a body answer a 4xx problem+json
(never a 500) and store and publish nothing; bad query parameters of the mailbox, unknown
paths and wrong methods too.

Most cases share one app and SQLite database per module (``env``): there are hundreds of them,
and bad input stores nothing, which every case checks by comparing the whole database and the
archive queue before and after. The database does not matter to the answers; the cases that
reach the archive worker run on SQLite and PostgreSQL through the usual fixtures.
"""

from __future__ import annotations

import io
import json
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import peewee
import pika
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.store import schema
from app.store.db import database_proxy, open_database
from app.store.models import MODELS, Message, User
from config import topology
from config.settings import Settings
from support import register, wait_until

pytestmark = pytest.mark.integration

KiB = 1024
MiB = 1024 * KiB
JSON = "application/json"
PEOPLE = ("alice", "bob", "carol", "dave")
#: 101 more users, so that "too many recipients" is about the count, not unknown names.
CROWD = tuple(f"u{i:03}" for i in range(101))
#: A field value meaning "leave this field out".
DROP = object()


# -- the endpoints that take a body ------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A body-taking endpoint, a valid body for it, and where its text fields are."""

    method: str
    path: str  # "{id}" becomes a fresh UUID on every call
    user: str | None  # whose token the call carries; None: no Authorization
    valid: dict[str, Any]
    text_fields: tuple[str, ...]  # "to.0" is the first item of "to"
    success: int

    def url(self) -> str:
        """Return the path to call."""
        return self.path.replace("{id}", str(uuid.uuid4()))

    def body(self, **changes: Any) -> dict[str, Any]:
        """Return the valid body with ``changes`` (DROP removes a field)."""
        document = {**self.valid, **changes}
        return {key: value for key, value in document.items() if value is not DROP}

    def with_text(self, where: str, text: str) -> dict[str, Any]:
        """Return the valid body with ``text`` put at ``where``."""
        name, _, index = where.partition(".")
        if index:
            items = list(self.valid[name])
            items[int(index)] = text
            return self.body(**{name: items})
        return self.body(**{name: text})


MAIL = {"to": ["bob"], "cc": ["carol"], "bcc": ["dave"], "subject": "Lunch?", "body": "Noon.", "in_reply_to": None}
MAIL_TEXT = ("to.0", "cc.0", "bcc.0", "subject", "body")
ENDPOINTS = {
    "register": Endpoint("POST", "/v1/users", None,
                         {"username": "erin", "password": "long enough", "display_name": "Erin"},
                         ("username", "password", "display_name"), 201),
    "log_in": Endpoint("POST", "/v1/tokens", None, {"username": "alice", "password": "correct horse"},
                       ("username", "password"), 201),
    "send": Endpoint("POST", "/v1/messages", "alice", MAIL, MAIL_TEXT, 202),
    "send_with_id": Endpoint("PUT", "/v1/messages/{id}", "alice", MAIL, MAIL_TEXT, 202),
    "change_password": Endpoint("PUT", "/v1/me/password", "dave",
                                {"password": "correct horse", "new_password": "a new one"},
                                ("password", "new_password"), 204),
}
MAIL_ENDPOINTS = {name: ENDPOINTS[name] for name in ("send", "send_with_id")}

every_endpoint = pytest.mark.parametrize("endpoint", list(ENDPOINTS.values()), ids=list(ENDPOINTS))
mail_endpoints = pytest.mark.parametrize("endpoint", list(MAIL_ENDPOINTS.values()), ids=list(MAIL_ENDPOINTS))


def encode(document: Any) -> bytes:
    """Return ``document`` as JSON bytes, with \\u escapes for non-ASCII, as many clients send."""
    return json.dumps(document).encode("ascii")


def padded(data: bytes, size: int) -> bytes:
    """Return ``data`` followed by whitespace (still the same JSON) up to ``size`` bytes."""
    assert len(data) <= size
    return data + b" " * (size - len(data))


def text_with_bytes(endpoint: Endpoint, raw: bytes) -> bytes:
    """Return the valid body with ``raw`` bytes inside its first text field."""
    marker = "MARKER-7f3a"
    return encode(endpoint.with_text(endpoint.text_fields[0], marker)).replace(marker.encode(), raw)


def chunked(data: bytes) -> dict[str, Any]:
    """Return request arguments that stream ``data`` without a Content-Length, as gunicorn
    passes a ``Transfer-Encoding: chunked`` request on (``wsgi.input_terminated``)."""
    return {
        "input_stream": io.BytesIO(data),
        "headers": {"Transfer-Encoding": "chunked"},
        "environ_overrides": {"wsgi.input_terminated": True},
    }


# -- the shared app, and what "nothing stored" means -------------------------------------------


class QueueProbe:
    """Counts the messages waiting in a queue of the test broker (no consumer runs here)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: pika.BlockingConnection | None = None

    def count(self, name: str = topology.MAIL_ARCHIVE_QUEUE) -> int:
        """Return how many messages wait in ``name`` (0 if it was never declared)."""
        if self.connection is None or self.connection.is_closed:
            self.connection = pika.BlockingConnection(pika.URLParameters(self.url))
        channel = self.connection.channel()
        try:
            return channel.queue_declare(name, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return 0  # never declared: nothing was ever published there (a publish declares it)
            raise
        finally:
            if channel.is_open:
                channel.close()

    def close(self) -> None:
        """Close the connection."""
        if self.connection is not None and self.connection.is_open:
            self.connection.close()


@dataclass
class Env:
    """One app and database for many cases."""

    app: Flask
    client: FlaskClient
    database: peewee.Database
    people: dict[str, dict[str, str]]
    queues: QueueProbe

    def state(self) -> tuple[dict[str, list], int]:
        """Return every row of every table, and how many mails wait in the archive queue."""
        rows = {model.__name__: sorted(model.select().tuples(), key=repr) for model in MODELS}
        return rows, self.queues.count()

    def call(self, endpoint: Endpoint, **request: Any):
        """Send a request to ``endpoint`` as its user; ``request`` as for ``client.open``."""
        headers = {**(self.people[endpoint.user] if endpoint.user else {}), **request.pop("headers", {})}
        request.setdefault("content_type", JSON)
        return self.client.open(endpoint.url(), method=endpoint.method, headers=headers, **request)


def add_users(names: tuple[str, ...]) -> None:
    """Create users straight in the database (no password hashing: they never log in)."""
    with User._meta.database.atomic():
        User.insert_many([{"username": n, "display_name": n, "password_hash": "x"} for n in names]).execute()


@pytest.fixture(scope="module")
def shared_env(broker, tmp_path_factory) -> Iterator[Env]:
    """The module's app on a SQLite database, with PEOPLE registered and the CROWD added."""
    tmp = tmp_path_factory.mktemp("bad-input")
    url = f"sqlite:///{tmp}/postroom.db"
    database = open_database(url)
    schema.upgrade(database)
    database.close()
    settings = Settings(
        amqp_url=broker.url,
        database_url=url,
        var_dir=str(tmp / "var"),
        secret_keys=("test-secret-key",),
        password_time_cost=1,
        password_memory_cost_kib=64,
    )
    app = create_app(settings)
    client = app.test_client()
    env = Env(app, client, database_proxy.obj, {}, QueueProbe(broker.url))
    env.people = {name: register(client, name) for name in PEOPLE}
    add_users(CROWD)
    try:
        yield env
    finally:
        env.queues.close()
        app.extensions["postroom"].publisher.close()
        env.database.close()


@pytest.fixture
def env(shared_env: Env) -> Env:
    """The shared env, its database bound again (a test with its own app may have rebound it)."""
    database_proxy.initialize(shared_env.database)
    return shared_env


def assert_problem(response, status: int, code: str | None = None) -> dict:
    """Assert ``response`` is a problem+json of ``status`` (and ``code``); return it."""
    text = response.get_data()
    assert response.status_code == status, f"{response.status_code} {text[:400]!r}"
    assert response.mimetype == "application/problem+json", response.mimetype
    problem = response.get_json()
    assert problem["status"] == status
    for key in ("title", "detail", "code"):
        assert isinstance(problem.get(key), str) and problem[key], (key, problem)
    if code is not None:
        assert problem["code"] == code, problem
    assert b"Traceback" not in text and b"<html" not in text.lower()
    return problem


def assert_refused(env: Env, endpoint: Endpoint, status: int, code: str | None, **request: Any) -> dict:
    """Send a bad request; assert the problem and that nothing was stored or published."""
    before = env.state()
    problem = assert_problem(env.call(endpoint, **request), status, code)
    assert env.state() == before, "a refused request changed the database or published a message"
    return problem


# -- the valid bodies really are valid (so every refusal below is about the fault) ---------------


def restore(env: Env, endpoint: Endpoint) -> None:
    """Put the shared state back after ``endpoint`` accepted a valid body."""
    if endpoint == ENDPOINTS["register"]:
        User.delete().where(User.username == "erin").execute()
    elif endpoint == ENDPOINTS["change_password"]:
        # dave gets his password back, and a token: the change revoked all of his.
        hashed = env.app.extensions["postroom"].accounts.hasher.hash("correct horse")
        User.update(password_hash=hashed).where(User.username == "dave").execute()
        response = env.client.post("/v1/tokens", json={"username": "dave", "password": "correct horse"})
        env.people["dave"] = {"Authorization": f"Bearer {response.get_json()['token']}"}


@every_endpoint
def test_the_valid_body_is_accepted(env, endpoint):
    before_rows, before_queued = env.state()
    response = env.call(endpoint, data=encode(endpoint.valid))
    assert response.status_code == endpoint.success, response.get_json()
    after_rows, after_queued = env.state()
    if endpoint in MAIL_ENDPOINTS.values():
        assert after_queued == before_queued + 1  # the probe sees a publish
    else:
        assert after_rows != before_rows  # the state sees a stored or changed row
    restore(env, endpoint)


@every_endpoint
@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "application/json;charset=UTF-8", "application/json; charset=utf8"],
)
def test_utf8_charset_parameters_are_accepted(env, endpoint, content_type):
    response = env.call(endpoint, data=encode(endpoint.valid), content_type=content_type)
    assert response.status_code == endpoint.success, response.get_json()
    restore(env, endpoint)


# -- malformed bodies, for every endpoint ---------------------------------------------------------


def _raw(data: bytes) -> Callable[[Endpoint], dict]:
    return lambda e: {"data": data}


GENERIC = [
    # Not JSON.
    pytest.param(_raw(b"{not json"), 400, "invalid_json", id="not-json"),
    pytest.param(lambda e: {"data": encode(e.valid)[: len(encode(e.valid)) // 2]}, 400, "invalid_json", id="truncated"),
    pytest.param(lambda e: {"data": encode(e.valid)[:-1]}, 400, "invalid_json", id="missing-last-brace"),
    pytest.param(_raw(b""), 400, "invalid_json", id="empty"),
    pytest.param(_raw(b" \t\r\n" * 100_000), 400, "invalid_json", id="400k-of-whitespace-only"),
    pytest.param(lambda e: {"data": encode(e.valid) + b" x"}, 400, "invalid_json", id="trailing-garbage"),
    pytest.param(lambda e: {"data": encode(e.valid) + encode(e.valid)}, 400, "invalid_json", id="two-documents"),
    pytest.param(lambda e: {"data": encode(e.valid)[:-1] + b",}"}, 400, "invalid_json", id="trailing-comma"),
    pytest.param(lambda e: {"data": encode(e.valid).replace(b'"', b"'")}, 400, "invalid_json", id="single-quotes"),
    pytest.param(lambda e: {"data": b"\xef\xbb\xbf" + encode(e.valid)}, 400, "invalid_json", id="utf8-bom"),
    # Not UTF-8.
    pytest.param(lambda e: {"data": text_with_bytes(e, b"\xff")}, 400, "invalid_encoding", id="byte-ff"),
    pytest.param(lambda e: {"data": text_with_bytes(e, b"caf\xe9")}, 400, "invalid_encoding", id="latin-1-e-acute"),
    pytest.param(lambda e: {"data": text_with_bytes(e, b"\xc0\xaf")}, 400, "invalid_encoding", id="overlong-slash"),
    pytest.param(lambda e: {"data": text_with_bytes(e, b"\xed\xa0\x80")}, 400, "invalid_encoding",
                 id="encoded-surrogate"),
    pytest.param(lambda e: {"data": text_with_bytes(e, b"\xe2\x82")}, 400, "invalid_encoding", id="cut-sequence"),
    pytest.param(lambda e: {"data": text_with_bytes(e, b"\xf4\x90\x80\x80")}, 400, "invalid_encoding",
                 id="above-u10ffff"),
    pytest.param(lambda e: {"data": json.dumps(e.valid).encode("utf-16")}, 400, "invalid_encoding", id="utf-16"),
    # JSON, but not an object.
    pytest.param(_raw(b"[]"), 422, "invalid_request", id="empty-list"),
    pytest.param(lambda e: {"data": encode([e.valid])}, 422, "invalid_request", id="list-of-the-body"),
    pytest.param(_raw(b'"a string"'), 422, "invalid_request", id="string"),
    pytest.param(_raw(b"42"), 422, "invalid_request", id="number"),
    pytest.param(_raw(b"null"), 422, "invalid_request", id="null"),
    pytest.param(_raw(b"true"), 422, "invalid_request", id="true"),
    # Nested deeper than any parser should follow.
    pytest.param(_raw(b"[" * 100_000), 400, "invalid_json", id="100k-open-brackets"),
    pytest.param(_raw(b'{"a":' * 100_000), 400, "invalid_json", id="100k-open-objects"),
    pytest.param(lambda e: {"data": encode(e.valid)[:-1] + b',"deep":' + b"[" * 100_000 + b"]" * 100_000 + b"}"},
                 400, "invalid_json", id="100k-deep-but-closed"),
    # Unknown fields, and text rules in keys.
    pytest.param(lambda e: {"data": encode(e.body(unexpected=1))}, 422, "invalid_request", id="unknown-field"),
    pytest.param(lambda e: {"data": encode(e.body(**{"Username": "x"}))}, 422, "invalid_request", id="field-name-case"),
    pytest.param(lambda e: {"data": encode(e.body(**{"k\x00": 1}))}, 422, "invalid_character", id="nul-in-a-key"),
    pytest.param(lambda e: {"data": encode(e.body(**{"\ud800": 1}))}, 422, "invalid_character", id="surrogate-key"),
    # Larger than the whole-request limit (1 MiB), declared or streamed.
    pytest.param(lambda e: {"data": padded(encode(e.valid), MiB + 1)}, 413, "payload_too_large", id="1MiB+1"),
    pytest.param(lambda e: {"data": padded(encode(e.valid), 3 * MiB)}, 413, "payload_too_large", id="3MiB"),
    pytest.param(lambda e: chunked(padded(encode(e.valid), MiB + 1)), 413, "payload_too_large", id="chunked-1MiB+1"),
    pytest.param(lambda e: chunked(padded(encode(e.valid), 3 * MiB)), 413, "payload_too_large", id="chunked-3MiB"),
]


@every_endpoint
@pytest.mark.parametrize("build, status, code", GENERIC)
def test_malformed_body(env, endpoint, build, status, code):
    assert_refused(env, endpoint, status, code, **build(endpoint))


@every_endpoint
@pytest.mark.parametrize(
    "request_args",
    [
        pytest.param(lambda e: {"data": encode(e.valid), "content_type": "text/plain"}, id="text-plain"),
        pytest.param(lambda e: {"data": urllib.parse.urlencode(e.body(in_reply_to=DROP), doseq=True),
                                "content_type": "application/x-www-form-urlencoded"}, id="form-urlencoded"),
        pytest.param(lambda e: {"data": {"json": encode(e.valid).decode()}, "content_type": "multipart/form-data"},
                     id="multipart-form"),
        pytest.param(lambda e: {"data": encode(e.valid), "content_type": None}, id="no-content-type"),
        pytest.param(lambda e: {"data": encode(e.valid), "content_type": "application/xml"}, id="xml"),
        pytest.param(lambda e: {"data": encode(e.valid), "content_type": "application/jsonx"}, id="jsonx"),
        pytest.param(lambda e: {"data": encode(e.valid), "content_type": "json"}, id="bare-json"),
        pytest.param(lambda e: {"data": json.dumps(e.valid).encode("latin-1"),
                                "content_type": "application/json; charset=latin-1"}, id="charset-latin-1"),
        pytest.param(lambda e: {"data": json.dumps(e.valid).encode("utf-16"),
                                "content_type": "application/json; charset=utf-16"}, id="charset-utf-16"),
        pytest.param(lambda e: {"data": encode(e.valid), "content_type": "application/json; charset=us-ascii"},
                     id="charset-us-ascii"),
    ],
)
def test_wrong_content_type(env, endpoint, request_args):
    assert_refused(env, endpoint, 415, "unsupported_media_type", **request_args(endpoint))


BAD_TEXT = {
    "nul": "a\x00b",
    "only-nul": "\x00",
    "high-surrogate": "lone \ud800",
    "low-surrogate": "lone \udfff",
    "reversed-pair": "\udc00\ud800",
}
TEXT_CASES = [
    pytest.param(endpoint, where, text, id=f"{name}-{where}-{kind}")
    for name, endpoint in ENDPOINTS.items()
    for where in endpoint.text_fields
    for kind, text in BAD_TEXT.items()
]


@pytest.mark.parametrize("endpoint, where, text", TEXT_CASES)
def test_nul_and_lone_surrogates_are_invalid_characters(env, endpoint, where, text):
    # json.dumps writes them as \u0000 / \ud800 escapes: valid JSON syntax, invalid text.
    data = encode(endpoint.with_text(where, text))
    assert b"\\u" in data
    problem = assert_refused(env, endpoint, 422, "invalid_character", data=data)
    problem["detail"].encode("utf-8")  # the detail names the field without echoing a lone surrogate


@pytest.mark.parametrize("text", ["\x00", "\ud800"], ids=["nul", "surrogate"])
@mail_endpoints
def test_bad_characters_in_in_reply_to(env, endpoint, text):
    assert_refused(env, endpoint, 422, "invalid_character", data=encode(endpoint.body(in_reply_to=text)))


# -- wrong types, missing fields, broken rules: per endpoint ------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"username": DROP, "password": DROP, "display_name": DROP},
        {"username": DROP},
        {"password": DROP},
        {"username": 42},
        {"username": None},
        {"username": ["erin"]},
        {"password": 12345678},  # no coercion of numbers to text
        {"password": None},
        {"password": True},
        {"display_name": {"first": "Erin"}},
        {"display_name": 5},
        {"username": "Erin"},
        {"username": "e"},
        {"password": "seven77"},
        {"display_name": "x" * 201},
    ],
    ids=repr,
)
def test_register_refuses(env, changes):
    endpoint = ENDPOINTS["register"]
    problem = assert_refused(env, endpoint, 422, "invalid_request", data=encode(endpoint.body(**changes)))
    assert problem["errors"] and all(error["field"] and error["message"] for error in problem["errors"])


@pytest.mark.parametrize(
    "changes",
    [
        {"username": DROP, "password": DROP},
        {"username": DROP},
        {"password": DROP},
        {"username": 42},
        {"username": None},
        {"password": 12345678},
        {"password": None},
        {"password": ["correct horse"]},
    ],
    ids=repr,
)
def test_log_in_refuses(env, changes):
    assert_refused(env, ENDPOINTS["log_in"], 422, "invalid_request", data=encode(ENDPOINTS["log_in"].body(**changes)))


@pytest.mark.parametrize(
    "changes, status, code",
    [
        ({"password": DROP, "new_password": DROP}, 422, "invalid_request"),
        ({"new_password": DROP}, 422, "invalid_request"),
        ({"password": DROP}, 422, "invalid_request"),
        ({"new_password": 12345678}, 422, "invalid_request"),
        ({"password": None}, 422, "invalid_request"),
        ({"new_password": "seven77"}, 422, "invalid_request"),
        ({"new_password": ["a new one"]}, 422, "invalid_request"),
        ({"password": "not the password"}, 403, "wrong_password"),  # and no token is revoked
    ],
    ids=repr,
)
def test_change_password_refuses(env, changes, status, code):
    endpoint = ENDPOINTS["change_password"]
    assert_refused(env, endpoint, status, code, data=encode(endpoint.body(**changes)))
    assert env.client.get("/v1/me", headers=env.people["dave"]).status_code == 200


MAIL_CASES = [
    # Wrong types.
    pytest.param({"to": "bob"}, 422, "invalid_request", id="to-a-string"),
    pytest.param({"to": ["bob", 1]}, 422, "invalid_request", id="to-with-a-number"),
    pytest.param({"to": [1, 2]}, 422, "invalid_request", id="to-numbers"),
    pytest.param({"to": [None]}, 422, "invalid_request", id="to-with-null"),
    pytest.param({"to": {"bob": True}}, 422, "invalid_request", id="to-an-object"),
    pytest.param({"to": None}, 422, "invalid_request", id="to-null"),
    pytest.param({"to": [["bob"]]}, 422, "invalid_request", id="to-nested-list"),
    pytest.param({"cc": "carol"}, 422, "invalid_request", id="cc-a-string"),
    pytest.param({"bcc": 5}, 422, "invalid_request", id="bcc-a-number"),
    pytest.param({"subject": 5}, 422, "invalid_request", id="subject-a-number"),
    pytest.param({"subject": None}, 422, "invalid_request", id="subject-null"),
    pytest.param({"subject": ["Lunch?"]}, 422, "invalid_request", id="subject-a-list"),
    pytest.param({"body": {"text": "Noon."}}, 422, "invalid_request", id="body-an-object"),
    pytest.param({"body": ["Noon."]}, 422, "invalid_request", id="body-a-list"),
    pytest.param({"body": True}, 422, "invalid_request", id="body-true"),
    pytest.param({"body": 1.5}, 422, "invalid_request", id="body-a-number"),
    pytest.param({"in_reply_to": 5}, 422, "invalid_request", id="in-reply-to-a-number"),
    pytest.param({"in_reply_to": "not-an-id"}, 422, "invalid_message_id", id="in-reply-to-malformed"),
    pytest.param({"in_reply_to": ""}, 422, "invalid_message_id", id="in-reply-to-empty"),
    # No recipient.
    pytest.param({"to": DROP, "cc": DROP, "bcc": DROP}, 422, "no_recipients", id="no-recipient-fields"),
    pytest.param({"to": [], "cc": [], "bcc": []}, 422, "no_recipients", id="empty-recipients"),
    pytest.param({"to": [], "cc": DROP, "bcc": DROP}, 422, "no_recipients", id="empty-to-only"),
    # Unknown recipients.
    pytest.param({"to": ["bob", "nobody"]}, 422, "unknown_recipient", id="unknown-recipient"),
    pytest.param({"cc": ["Bob"]}, 422, "unknown_recipient", id="recipient-wrong-case"),
    pytest.param({"bcc": [""]}, 422, "unknown_recipient", id="empty-recipient-name"),
    # Limits: subject (characters), recipients (distinct users), body (UTF-8 bytes).
    pytest.param({"subject": "s" * 999}, 422, "subject_too_long", id="subject-999"),
    pytest.param({"subject": "𝔘" * 999}, 422, "subject_too_long", id="subject-999-astral"),
    pytest.param({"to": list(CROWD[:50]), "cc": list(CROWD[50:80]), "bcc": list(CROWD[80:])}, 422,
                 "too_many_recipients", id="101-recipients"),
    pytest.param({"to": list(CROWD) + ["bob"] * 3}, 422, "too_many_recipients", id="102-recipients-with-repeats"),
    pytest.param({"to": [f"nobody{i}" for i in range(5000)]}, 422, "too_many_recipients", id="5000-unknown-recipients"),
    pytest.param({"body": "x" * (256 * KiB + 1)}, 413, "payload_too_large", id="body-256KiB+1"),
    pytest.param({"body": "€" * 100_000}, 413, "payload_too_large", id="body-100k-3-byte-chars"),
    pytest.param({"body": "🌍" * (64 * KiB) + "x"}, 413, "payload_too_large", id="body-256KiB+1-of-4-byte-chars"),
    pytest.param({"body": "é" * (128 * KiB + 1)}, 413, "payload_too_large", id="body-256KiB+2-of-2-byte-chars"),
]


@mail_endpoints
@pytest.mark.parametrize("changes, status, code", MAIL_CASES)
def test_mail_refuses(env, endpoint, changes, status, code):
    problem = assert_refused(env, endpoint, status, code, data=encode(endpoint.body(**changes)))
    if code == "unknown_recipient":
        named = {name for field in ("to", "cc", "bcc") for name in changes.get(field, [])}
        assert problem["unknown_recipients"] == sorted(named - set(PEOPLE))


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\tkey", "ümlaut", "del\x7f"], ids=repr)
def test_malformed_idempotency_key(env, key):
    assert_refused(env, ENDPOINTS["send"], 422, "invalid_idempotency_key",
                   data=encode(MAIL), headers={"Idempotency-Key": key})


@pytest.mark.parametrize("path", ["/v1/messages/not-an-id", "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAI",
                                  "/v1/messages/6ba7b8109dad11d180b400c04fd430c8"])
def test_put_with_a_malformed_id(env, path):
    endpoint = Endpoint("PUT", path, "alice", MAIL, MAIL_TEXT, 202)
    assert_refused(env, endpoint, 422, "invalid_message_id", data=encode(MAIL))


@every_endpoint
def test_json_nested_just_below_and_above_the_parser_limit(env, endpoint):
    """Whatever depth, a valid but deep document is refused with a 4xx, never a crash."""
    for depth in (10, 100, 500, 900, 950, 970, 980, 985, 990, 995, 1000, 2000, 10_000):
        data = encode(endpoint.valid)[:-1] + b',"deep":' + b"[" * depth + b'"x"' + b"]" * depth + b"}"
        before = env.state()
        response = env.call(endpoint, data=data)
        assert response.status_code in (400, 422), (depth, response.status_code)
        assert_problem(response, response.status_code,
                       "invalid_json" if response.status_code == 400 else "invalid_request")
        assert env.state() == before


# -- the mailbox's query parameters -----------------------------------------------------------


@pytest.mark.parametrize("folder", ["inbox", "sent"])
@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=-1", "limit=abc", "limit=1.5", "limit=", "limit=1e3",
     "before=xyz", "before=-1", "before=1.5", "before=", "before=0x10",
     "after=-3", "after=abc", "after=", "after=1.5",
     "after=%C2%B2", "before=%C2%B9", "after=%D9%A3",  # '²', '¹', an Arabic-Indic three: digits, not integers
     "after=1&before=2", "unread=maybe"],
)
def test_bad_query_parameters(env, folder, query):
    response = env.client.get(f"/v1/mailbox/{folder}?{query}", headers=env.people["bob"])
    assert_problem(response, 400, "invalid_parameter")


@pytest.mark.parametrize("folder", ["inbox", "sent"])
@pytest.mark.parametrize("query", ["limit=100000", "limit=200", "limit=201", "limit=1", "after=0", "before=99999999",
                                   "unread=true", "unread=false", "after=5&unread=1"])
def test_good_query_parameters(env, folder, query):
    """In range, or a limit above 200 (clamped, see test_paging): not an error."""
    response = env.client.get(f"/v1/mailbox/{folder}?{query}", headers=env.people["bob"])
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"messages": [], "next": None}


# -- unknown paths and wrong methods ----------------------------------------------------------


@pytest.mark.parametrize("token", [False, True], ids=["no-token", "token"])
@pytest.mark.parametrize(
    "method, path",
    [("GET", "/"), ("GET", "/v1"), ("GET", "/v1/"), ("GET", "/v1/nope"), ("GET", "/v2/mailbox/inbox"),
     ("GET", "/v1/mailbox"), ("GET", "/v1/mailbox/trash"), ("GET", "/v1/messages/x/y"), ("POST", "/v1/nope"),
     ("DELETE", "/v1/users/alice/extra"), ("GET", "/v1/mailbox/inbox/"), ("GET", "/static/app.js"),
     ("PUT", "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV/unread")],
)
def test_unknown_paths_are_404_problems(env, token, method, path):
    headers = env.people["alice"] if token else {}
    response = env.client.open(path, method=method, headers=headers, data=b"{}", content_type=JSON)
    assert_problem(response, 404, "not_found")


@pytest.mark.parametrize("token", [False, True], ids=["no-token", "token"])
@pytest.mark.parametrize(
    "method, path",
    [("GET", "/v1/users"), ("DELETE", "/v1/users"), ("PUT", "/v1/users"), ("GET", "/v1/tokens"),
     ("PUT", "/v1/tokens"), ("GET", "/v1/tokens/current"), ("POST", "/v1/tokens/current"),
     ("GET", "/v1/messages"), ("DELETE", "/v1/messages"), ("POST", "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
     ("PATCH", "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV"), ("GET", "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV/read"),
     ("POST", "/v1/mailbox/inbox"), ("DELETE", "/v1/mailbox/sent"), ("POST", "/v1/me"), ("DELETE", "/v1/me"),
     ("POST", "/healthz"), ("DELETE", "/openapi.json")],
)
def test_wrong_methods_are_405_problems(env, token, method, path):
    headers = env.people["alice"] if token else {}
    response = env.client.open(path, method=method, headers=headers, data=b"{}", content_type=JSON)
    assert_problem(response, 405, "method_not_allowed")
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert allowed and method not in allowed


# -- with the worker, on both databases ----------------------------------------------------------


def fresh_state() -> dict[str, int]:
    """Return the number of rows of every table."""
    return {model.__name__: model.select().count() for model in MODELS}


def test_refused_mail_is_never_published_nor_archived(client, people, broker, request):
    """Every bad mail is refused; the archive queue stays empty; a worker started afterwards
    archives only the good mail sent last (uid 1), and dead-letters nothing."""
    queues = QueueProbe(broker.url)
    try:
        before = fresh_state()
        refused = 0
        for endpoint in MAIL_ENDPOINTS.values():
            bad = [encode(endpoint.body(**param.values[0])) for param in MAIL_CASES]
            bad += [args["data"] for args in (p.values[0](endpoint) for p in GENERIC) if "data" in args]
            bad += [encode(endpoint.with_text(where, text))
                    for where in endpoint.text_fields for text in BAD_TEXT.values()]
            for data in bad:
                response = client.open(endpoint.url(), method=endpoint.method, data=data, content_type=JSON,
                                       headers=people["alice"])
                assert 400 <= response.status_code < 500 and response.mimetype == "application/problem+json", (
                    data[:200], response.status_code)
                refused += 1
        assert refused > 100
        assert queues.count() == 0
        assert fresh_state() == before

        request.getfixturevalue("worker")
        good = client.post("/v1/messages", json={"to": ["bob"], "subject": "good", "body": "only me"},
                           headers=people["alice"])
        assert good.status_code == 202
        mid = good.get_json()["id"]
        wait_until(lambda: client.get(f"/v1/messages/{mid}", headers=people["bob"]).status_code == 200,
                   what="the good mail archived")
        inbox = client.get("/v1/mailbox/inbox", headers=people["bob"]).get_json()
        assert [(m["id"], m["uid"]) for m in inbox["messages"]] == [(mid, 1)]
        for name in ("carol", "dave"):
            assert client.get("/v1/mailbox/inbox", headers=people[name]).get_json()["messages"] == []
        assert [m["uid"] for m in client.get("/v1/mailbox/sent", headers=people["alice"]).get_json()["messages"]] == [1]
        assert Message.select().count() == 1
        assert queues.count(topology.MAIL_DEAD_QUEUE) == 0
        assert client.get("/v1/me", headers=people["bob"]).get_json()["unread"] == {"inbox": 1}
    finally:
        queues.close()


def test_exactly_at_the_limits_is_accepted_and_round_trips(client, people, worker):
    """Body of exactly 256 KiB of UTF-8, subject of exactly 998 characters, exactly 100
    recipients, a request of exactly 1 MiB (declared or streamed), an Idempotency-Key of 255."""
    add_users(CROWD[:96])
    hundred = ["bob", "carol", "dave", *CROWD[:96], "alice"]  # alice writes to herself too
    alice = people["alice"]
    base = {"to": ["bob"], "subject": "s", "body": "b"}
    cases = {
        "body-256KiB-ascii": {**base, "body": "x" * (256 * KiB)},
        "body-256KiB-4-byte": {**base, "body": "🌍" * (64 * KiB)},
        "body-256KiB-2-byte": {**base, "body": "é" * (128 * KiB)},
        "body-mixed": {**base, "body": "€" * 87_381 + "x"},  # 262 143 + 1 bytes
        "subject-998": {**base, "subject": "s" * 998},
        "subject-998-astral": {**base, "subject": "𝔘" * 998},
        "100-recipients": {"to": hundred[:40], "cc": hundred[40:70], "bcc": hundred[70:], "subject": "s", "body": "b"},
        "100-recipients-with-repeats": {"to": hundred[:60] + ["bob"], "cc": hundred[50:], "bcc": ["carol"],
                                        "subject": "s", "body": "b"},
    }
    assert len(cases["body-mixed"]["body"].encode()) == 256 * KiB
    accepted: dict[str, tuple[str, dict]] = {}
    for name, mail in cases.items():
        response = client.post("/v1/messages", json=mail, headers=alice)
        assert response.status_code == 202, (name, response.get_json())
        accepted[name] = (response.get_json()["id"], mail)
    exact = padded(encode({**base, "subject": "exactly 1 MiB"}), MiB)
    for name, request_args in (("request-1MiB", {"data": exact}), ("chunked-1MiB", chunked(exact))):
        response = client.post("/v1/messages", content_type=JSON, **{**request_args, "headers": {
            **alice, **request_args.get("headers", {})}})
        assert response.status_code == 202, (name, response.get_json())
        accepted[name] = (response.get_json()["id"], {**base, "subject": "exactly 1 MiB"})
    key = "k" * 255
    response = client.post("/v1/messages", json=base, headers={**alice, "Idempotency-Key": key})
    assert response.status_code == 202, response.get_json()
    accepted["idempotency-key-255"] = (response.get_json()["id"], base)

    for name, (mid, mail) in accepted.items():
        got = wait_until(lambda: (r := client.get(f"/v1/messages/{mid}", headers=alice)).status_code == 200 and r,
                         what=f"{name} archived").get_json()
        assert got["subject"] == mail["subject"] and got["body"] == mail["body"], name
        everyone = list(dict.fromkeys([*mail.get("to", []), *mail.get("cc", []), *mail.get("bcc", [])]))
        assert [*got["to"], *got["cc"], *got["bcc"]] == everyone, name
    hundredth = accepted["100-recipients"][0]
    assert client.get(f"/v1/messages/{hundredth}", headers=people["dave"]).status_code == 200

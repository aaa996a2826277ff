"""Users and tokens: registration, log in, every way a token stops working, and ``/v1/me``."""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from argon2 import PasswordHasher
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from app import create_app
from app.services.tokens import ACCESS_SALT
from app.store.db import database_proxy
from app.store.models import Token, User
from support import bearer, wait_until

pytestmark = pytest.mark.integration

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
PASSWORD = "correct horse"  # what support.register uses


def assert_problem(response, status: int, code: str) -> dict:
    """Assert ``response`` is a problem+json with ``status`` and ``code``; return it."""
    assert response.status_code == status, (response.status_code, response.get_data()[:300])
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["status"] == status and problem["code"] == code, problem
    assert problem["title"] and problem["detail"]
    return problem


def assert_unauthorized(response, code: str = "invalid_token") -> dict:
    """Assert a 401 problem with ``code`` and a Bearer challenge."""
    problem = assert_problem(response, 401, code)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return problem


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 UTC timestamp as the API writes them."""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def log_in(client, username: str, password: str = PASSWORD) -> str:
    """Log in and return the token."""
    response = client.post("/v1/tokens", json={"username": username, "password": password})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["token"]


def me(client, token: str):
    """Return the response of ``GET /v1/me`` with ``token``."""
    return client.get("/v1/me", headers=bearer(token))


@pytest.fixture
def make_app(settings):
    """Build more apps on the same database (a second process, or the next deploy)."""
    made = []

    def make(**changes):
        application = create_app(settings.replace(**changes))
        made.append((application, database_proxy.obj))
        return application

    yield make
    for application, database in made:
        application.extensions["postroom"].publisher.close()
        database.close()


# -- registration ---------------------------------------------------------------------------


@sqlite_only
def test_register(client):
    before = datetime.now(timezone.utc)
    response = client.post("/v1/users", json={"username": "erin", "password": "long enough"})
    assert response.status_code == 201
    user = response.get_json()
    assert user["username"] == "erin" and user["display_name"] == "erin"  # defaults to the username
    created = parse_time(user["created_at"])
    assert before - timedelta(seconds=5) <= created <= datetime.now(timezone.utc) + timedelta(seconds=5)
    assert not {"password", "password_hash"} & set(user)
    assert b"argon2" not in response.get_data() and b"long enough" not in response.get_data()

    named = client.post("/v1/users", json={"username": "zoe", "password": "long enough", "display_name": "Zoë 🌍 Ω"})
    assert named.status_code == 201 and named.get_json()["display_name"] == "Zoë 🌍 Ω"
    assert me(client, log_in(client, "zoe", "long enough")).get_json()["display_name"] == "Zoë 🌍 Ω"


def test_passwords_are_stored_as_salted_argon2id(client):
    for name in ("erin", "frank"):
        assert client.post("/v1/users", json={"username": name, "password": "the same one"}).status_code == 201
    hashes = [User.get_by_id(name).password_hash for name in ("erin", "frank")]
    assert all(h.startswith("$argon2id$") for h in hashes), hashes
    assert hashes[0] != hashes[1]  # salted
    assert PasswordHasher().verify(hashes[0], "the same one")
    assert "the same one" not in hashes[0]


@sqlite_only
@pytest.mark.parametrize("username", ["ab", "a" * 32, "0day", "a.b", "a_b", "a-b", "bob.smith-jr_2"])
def test_valid_usernames(client, username):
    assert client.post("/v1/users", json={"username": username, "password": "long enough"}).status_code == 201
    log_in(client, username, "long enough")


@sqlite_only
@pytest.mark.parametrize(
    "username",
    ["", "a", "a" * 33, "Alice", "alicE", "ALICE", ".alice", "_alice", "-alice", "al ice", "alice!", "al/ice",
     "al*ce", "älice", "alice\n", " alice", "alice@example.com"],
    ids=repr,
)
def test_invalid_usernames_are_422(client, username):
    response = client.post("/v1/users", json={"username": username, "password": "long enough"})
    problem = assert_problem(response, 422, "invalid_request")
    assert any(error["field"] == "username" for error in problem["errors"])
    assert User.select().count() == 0


@sqlite_only
@pytest.mark.parametrize("password, status", [("", 422), ("1234567", 422), ("é" * 7, 422), ("12345678", 201),
                                              ("é" * 8, 201), ("🌍" * 8, 201), ("        ", 201)], ids=repr)
def test_passwords_need_8_characters(client, password, status):
    response = client.post("/v1/users", json={"username": "erin", "password": password})
    assert response.status_code == status, response.get_json()
    if status == 201:
        log_in(client, "erin", password)
    else:
        assert_problem(response, 422, "invalid_request")
        assert User.select().count() == 0


def test_username_taken(client):
    assert client.post("/v1/users", json={"username": "erin", "password": "first password"}).status_code == 201
    response = client.post("/v1/users", json={"username": "erin", "password": "second password", "display_name": "X"})
    assert_problem(response, 409, "username_taken")
    # The first registration stands untouched.
    log_in(client, "erin", "first password")
    assert client.post("/v1/tokens", json={"username": "erin", "password": "second password"}).status_code == 401
    assert me(client, log_in(client, "erin", "first password")).get_json()["display_name"] == "erin"


def test_concurrent_registrations_of_one_name(app):
    """Racing registrations of one name: exactly one 201, the others 409 (never a 500)."""
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def attempt(index: int) -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post("/v1/users", json={"username": "zed", "password": f"password {index}"})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [201] + [409] * 7
    assert User.select().where(User.username == "zed").count() == 1


# -- log in ---------------------------------------------------------------------------------


def test_log_in(client, people, settings):
    before = datetime.now(timezone.utc)
    response = client.post("/v1/tokens", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 201
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["token"], str) and re.fullmatch(r"[A-Za-z0-9._-]+", body["token"])
    expected = before + timedelta(seconds=settings.token_ttl_seconds)
    assert abs((parse_time(body["expires_at"]) - expected).total_seconds()) < 10
    assert me(client, body["token"]).get_json()["username"] == "alice"
    # Every log in is a token of its own.
    assert log_in(client, "alice") != body["token"]


@sqlite_only
def test_invalid_credentials_are_the_same_for_unknown_users_and_wrong_passwords(client, people):
    answers = [
        client.post("/v1/tokens", json={"username": "alice", "password": "wrong password"}),
        client.post("/v1/tokens", json={"username": "nobody", "password": "wrong password"}),
        client.post("/v1/tokens", json={"username": "nobody", "password": PASSWORD}),
        client.post("/v1/tokens", json={"username": "alice", "password": ""}),
        client.post("/v1/tokens", json={"username": "Alice", "password": PASSWORD}),
        client.post("/v1/tokens", json={"username": "", "password": PASSWORD}),
        client.post("/v1/tokens", json={"username": "alice", "password": PASSWORD.upper()}),
    ]
    for response in answers:
        assert_unauthorized(response, "invalid_credentials")
    first = answers[0]
    for response in answers[1:]:
        assert response.get_json() == first.get_json()
        assert response.headers["WWW-Authenticate"] == first.headers["WWW-Authenticate"]
    assert Token.select().count() == 4  # only the people fixture's


# -- every way a token stops working ------------------------------------------------------------


def _authenticated_routes(app) -> list[tuple[str, str]]:
    """Return (method, url) of every route behind a bearer token, path parameters filled in."""
    routes = []
    for rule in app.url_map.iter_rules():
        if not getattr(app.view_functions[rule.endpoint], "authenticated", False):
            continue
        url = re.sub(r"<(?:[a-z_]+:)?message_id>", "01ARZ3NDEKTSV4RRFFQ69G5FAV", rule.rule)
        url = re.sub(r"<(?:[a-z_]+:)?[a-z_]+>", "sample-1", url)
        routes += [(method, url) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return routes


CONTRACT_AUTHENTICATED = {
    ("DELETE", "/v1/tokens/current"), ("DELETE", "/v1/tokens"), ("GET", "/v1/me"),
    ("POST", "/v1/messages"), ("PUT", "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
    ("GET", "/v1/mailbox/inbox"), ("GET", "/v1/mailbox/sent"), ("GET", "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
    ("PUT", "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV/read"), ("DELETE", "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV/read"),
    ("DELETE", "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
}


def _forged(token: str, key: str) -> str:
    """Return ``token``'s payload signed with another key."""
    payload = URLSafeTimedSerializer("test-secret-key", salt=ACCESS_SALT).loads(token)
    return URLSafeTimedSerializer(key, salt=ACCESS_SALT).dumps(payload)


def _as_bob(token: str) -> str:
    """Return alice's token with bob's name put in its payload (the signature left as it was)."""
    payload, timestamp, signature = token.split(".")
    claims = URLSafeTimedSerializer("test-secret-key", salt=ACCESS_SALT).loads(token)
    other = URLSafeTimedSerializer("x", salt=ACCESS_SALT).dumps({**claims, "u": "bob"}).split(".")[0]
    assert other != payload
    return ".".join((other, timestamp, signature))


BAD_AUTHORIZATION = [
    pytest.param(lambda token: {}, "missing_token", id="no-header"),
    pytest.param(lambda token: {"Authorization": ""}, "missing_token", id="empty-header"),
    pytest.param(lambda token: {"Authorization": "Bearer"}, "missing_token", id="bearer-without-token"),
    pytest.param(lambda token: {"Authorization": "Bearer    "}, "missing_token", id="bearer-blank"),
    pytest.param(lambda token: {"Authorization": f"Basic {token}"}, "missing_token", id="basic-scheme"),
    pytest.param(lambda token: {"Authorization": token}, "missing_token", id="no-scheme"),
    pytest.param(lambda token: {"Authorization": "Bearer garbage"}, "invalid_token", id="garbage"),
    pytest.param(lambda token: {"Authorization": "Bearer a.b.c"}, "invalid_token", id="three-dots"),
    pytest.param(lambda token: {"Authorization": f"Bearer {token[:-3]}"}, "invalid_token", id="truncated"),
    pytest.param(lambda token: {"Authorization": f"Bearer {token} extra"}, "invalid_token", id="trailing-words"),
    pytest.param(lambda token: {"Authorization": f"Bearer {_as_bob(token)}"}, "invalid_token", id="tampered-payload"),
    pytest.param(lambda token: {"Authorization": f"Bearer {_forged(token, 'another-key')}"}, "invalid_token",
                 id="signed-with-another-key"),
]


@sqlite_only
@pytest.mark.parametrize("authorization, code", BAD_AUTHORIZATION)
def test_every_authenticated_route_refuses_a_bad_token(app, client, people, authorization, code):
    routes = _authenticated_routes(app)
    assert CONTRACT_AUTHENTICATED <= set(routes)
    token = people["alice"]["Authorization"].split(" ", 1)[1]
    headers = authorization(token)
    for method, url in routes:
        response = client.open(url, method=method, headers=headers, json={})
        assert response.status_code == 401, (method, url, response.status_code)
        assert_unauthorized(response, code)


@sqlite_only
def test_every_authenticated_route_takes_a_good_token(app, client, people):
    """The control for the test above: the same calls with alice's token are not 401."""
    token = people["alice"]["Authorization"].split(" ", 1)[1]
    for headers in (people["alice"], {"Authorization": f"bearer {token}"}):  # the scheme is case-insensitive
        for method, url in _authenticated_routes(app):
            if (method, url) in {("DELETE", "/v1/tokens/current"), ("DELETE", "/v1/tokens")}:
                continue  # would log alice out
            response = client.open(url, method=method, headers=headers, json={"to": ["bob"]})
            assert response.status_code != 401, (method, url, response.get_json())


@sqlite_only
def test_revoke_current_token(client, people):
    first, second = log_in(client, "alice"), log_in(client, "alice")
    response = client.delete("/v1/tokens/current", headers=bearer(first))
    assert response.status_code == 204 and response.get_data() == b""
    assert_unauthorized(me(client, first))
    assert_unauthorized(client.delete("/v1/tokens/current", headers=bearer(first)))
    assert_unauthorized(client.get("/v1/mailbox/inbox", headers=bearer(first)))
    # Only that token: alice's other tokens and bob's keep working.
    assert me(client, second).status_code == 200
    assert client.get("/v1/me", headers=people["alice"]).status_code == 200
    assert client.get("/v1/me", headers=people["bob"]).status_code == 200


@sqlite_only
def test_revoke_all_tokens(client, people):
    tokens = [log_in(client, "alice") for _ in range(3)]
    response = client.delete("/v1/tokens", headers=bearer(tokens[0]))
    assert response.status_code == 204 and response.get_data() == b""
    for token in tokens:
        assert_unauthorized(me(client, token))
    assert_unauthorized(client.get("/v1/me", headers=people["alice"]))
    assert client.get("/v1/me", headers=people["bob"]).status_code == 200
    # Logging in again works, with a new token.
    assert me(client, log_in(client, "alice")).status_code == 200


def test_revocation_holds_across_app_instances(client, people, make_app):
    """Two API processes on one database: a token revoked through one is refused by the other."""
    other = make_app().test_client()
    current, spare = log_in(client, "alice"), log_in(client, "alice")
    assert me(other, current).status_code == 200
    assert client.delete("/v1/tokens/current", headers=bearer(current)).status_code == 204
    assert_unauthorized(me(other, current))
    assert me(other, spare).status_code == 200
    # The other way round, and for every token of the user.
    assert other.delete("/v1/tokens", headers=bearer(spare)).status_code == 204
    assert_unauthorized(me(client, spare))
    assert_unauthorized(client.get("/v1/me", headers=people["alice"]))
    assert client.get("/v1/me", headers=people["bob"]).status_code == 200


@sqlite_only
def test_expired_token(client, people, make_app):
    short = make_app(token_ttl_seconds=2).test_client()
    response = short.post("/v1/tokens", json={"username": "alice", "password": PASSWORD})
    token = response.get_json()["token"]
    assert abs((parse_time(response.get_json()["expires_at"]) - datetime.now(timezone.utc)).total_seconds() - 2) < 1
    assert me(short, token).status_code == 200
    wait_until(lambda: me(short, token).status_code == 401, timeout=8, interval=0.1, what="the token expired")
    assert_unauthorized(me(short, token))
    assert client.get("/v1/me", headers=people["alice"]).status_code == 200  # tokens of the usual TTL live on


def _signed_at(payload: dict, offset: float, key: str = "test-secret-key") -> str:
    """Sign ``payload`` as the API does, but dated ``offset`` seconds from now."""

    class Dated(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() + offset)

    return URLSafeTimedSerializer(key, salt=ACCESS_SALT, signer=Dated).dumps(payload)


@sqlite_only
def test_future_dated_token(client, people, settings):
    """A live token re-signed with the app's key: now and within the skew it works; an hour ahead not."""
    token = log_in(client, "alice")
    payload = URLSafeTimedSerializer(settings.secret_keys[0], salt=ACCESS_SALT).loads(token)
    assert me(client, _signed_at(payload, 0)).status_code == 200  # re-signing itself is sound
    assert me(client, _signed_at(payload, settings.token_clock_skew_seconds - 10)).status_code == 200
    problem = assert_unauthorized(me(client, _signed_at(payload, 3600)))
    assert "future" in problem["detail"]
    assert_unauthorized(me(client, _signed_at(payload, settings.token_clock_skew_seconds + 30)))


@sqlite_only
def test_a_token_for_an_unrecorded_id_is_refused(client, people, settings):
    """A well-signed token whose id the server never issued (or forgot) does not work."""
    forged = URLSafeTimedSerializer(settings.secret_keys[0], salt=ACCESS_SALT).dumps({"u": "alice", "t": "0" * 32})
    assert_unauthorized(me(client, forged))


@sqlite_only
def test_key_rotation(client, people, make_app):
    old_app = make_app(secret_keys=("old-key",)).test_client()
    old_token = log_in(old_app, "alice")
    assert me(old_app, old_token).status_code == 200

    rotated = make_app(secret_keys=("new-key", "old-key")).test_client()
    assert me(rotated, old_token).status_code == 200  # the old key still verifies while listed
    new_token = log_in(rotated, "alice")
    assert me(rotated, new_token).status_code == 200
    assert_unauthorized(me(old_app, new_token))  # the new key signs

    retired = make_app(secret_keys=("new-key",)).test_client()
    assert_unauthorized(me(retired, old_token))
    assert me(retired, new_token).status_code == 200


# -- /v1/me -----------------------------------------------------------------------------------


def test_me_and_the_unread_count(client, people, worker):
    alice, bob = people["alice"], people["bob"]
    assert client.get("/v1/me", headers=bob).get_json() == {"username": "bob", "display_name": "bob",
                                                             "unread": {"inbox": 0}}
    ids = []
    for n in range(3):
        response = client.post("/v1/messages", json={"to": ["bob"], "subject": f"s{n}", "body": "b"}, headers=alice)
        assert response.status_code == 202
        ids.append(response.get_json()["id"])
    wait_until(lambda: client.get("/v1/me", headers=bob).get_json()["unread"] == {"inbox": 3}, what="3 unread")
    assert client.put(f"/v1/messages/{ids[0]}/read", headers=bob).status_code == 204
    assert client.get("/v1/me", headers=bob).get_json()["unread"] == {"inbox": 2}
    assert client.delete(f"/v1/messages/{ids[1]}", headers=bob).status_code == 204
    assert client.get("/v1/me", headers=bob).get_json()["unread"] == {"inbox": 1}
    # The sender's sent copies are read: they never count.
    me_alice = client.get("/v1/me", headers=alice).get_json()
    assert me_alice["username"] == "alice" and me_alice["unread"] == {"inbox": 0}

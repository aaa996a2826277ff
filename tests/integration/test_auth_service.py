"""The auth service beyond log-in: password changes, send rate limits, remote token checks."""

from __future__ import annotations

import threading

import pytest
from werkzeug.serving import make_server

from app import create_app
from app.auth import create_app as create_auth_app
from support import bearer, register

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_password_change_revokes_every_token(client):
    first = register(client, "erin", "first password")
    second = bearer(client.post("/v1/tokens", json={"username": "erin", "password": "first password"})
                    .get_json()["token"])
    wrong = client.put("/v1/me/password", json={"password": "nope", "new_password": "another one"}, headers=first)
    assert wrong.status_code == 403 and wrong.get_json()["code"] == "wrong_password"
    assert client.get("/v1/me", headers=first).status_code == 200
    short = client.put("/v1/me/password", json={"password": "first password", "new_password": "short"}, headers=first)
    assert short.status_code == 422
    ok = client.put("/v1/me/password", json={"password": "first password", "new_password": "second password"},
                    headers=first)
    assert ok.status_code == 204
    assert client.get("/v1/me", headers=first).status_code == 401
    assert client.get("/v1/me", headers=second).status_code == 401
    assert client.post("/v1/tokens", json={"username": "erin", "password": "first password"}).status_code == 401
    assert client.post("/v1/tokens", json={"username": "erin", "password": "second password"}).status_code == 201


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_send_rate_limit_is_shared_across_processes(settings, people):
    limited = settings.replace(send_rate_limit=3, send_rate_window_seconds=3600)
    one, two = create_app(limited).test_client(), create_app(limited).test_client()
    mail = {"to": ["bob"], "subject": "s", "body": "b"}
    first = one.post("/v1/messages", json=mail, headers=people["alice"])
    assert first.status_code == 202
    assert first.headers["RateLimit-Limit"] == "3" and first.headers["RateLimit-Remaining"] == "2"
    assert two.post("/v1/messages", json=mail, headers=people["alice"]).headers["RateLimit-Remaining"] == "1"
    assert one.post("/v1/messages", json=mail, headers=people["alice"]).status_code == 202
    refused = two.post("/v1/messages", json=mail, headers=people["alice"])
    assert refused.status_code == 429 and refused.get_json()["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0 and refused.headers["RateLimit-Remaining"] == "0"
    # Another user has a budget of their own; reading is never limited.
    assert one.post("/v1/messages", json={**mail, "to": ["alice"]}, headers=people["bob"]).status_code == 202
    assert one.get("/v1/mailbox/sent", headers=people["alice"]).status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_api_can_ask_a_separate_auth_service(settings, client):
    auth = create_auth_app(settings)
    server = make_server("127.0.0.1", 0, auth, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = create_app(settings.replace(auth_url=f"http://127.0.0.1:{server.server_port}")).test_client()
        headers = register(client, "frank")
        assert remote.get("/v1/me", headers=headers).get_json()["username"] == "frank"
        assert remote.get("/v1/me", headers=bearer("garbage")).status_code == 401
        assert auth.test_client().delete("/v1/tokens/current", headers=headers).status_code == 204
        assert remote.get("/v1/me", headers=headers).status_code == 401
        # The stand-alone auth service serves accounts and the broker's questions, not mail.
        paths = {rule.rule for rule in auth.url_map.iter_rules()}
        assert "/auth/rabbitmq/user" in paths and "/v1/messages" not in paths
    finally:
        server.shutdown()
    unreachable = create_app(settings.replace(auth_url="http://127.0.0.1:9")).test_client()
    response = unreachable.get("/v1/me", headers=headers)
    assert response.status_code == 503 and response.get_json()["code"] == "auth_unavailable"

"""Holes a first-time user found by trying to break Postroom (each test fails on the hole)."""

from __future__ import annotations

import threading

import pika
import pytest

from config import topology
from support import register

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_service_broker_users_cannot_be_registered_or_logged_in_as(client, settings):
    # The archive trusts the service's broker user to send for anyone: no account may take it.
    [service_user] = settings.trusted_publishers()
    response = client.post("/v1/users", json={"username": service_user, "password": "correct horse"})
    assert response.status_code == 409 and response.get_json()["code"] == "username_taken"
    alice = register(client, "alice")
    token = alice["Authorization"].split(" ", 1)[1]
    assert client.post("/auth/rabbitmq/user", data={"username": service_user, "password": token}).data == b"deny"
    assert client.post("/auth/rabbitmq/user", data={"username": "alice", "password": token}).data == b"allow"


def queue_exists(url: str, name: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(name, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        connection.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_pulls_racing_a_delete_leave_no_orphan_queue(broker, client, people):
    bob = people["bob"]
    assert client.put("/v1/groups/lounge", json={}, headers=bob).status_code == 201
    assert client.put("/v1/subscriptions/racer", json={"groups": ["lounge"]}, headers=bob).status_code == 201
    results = []

    def pull():
        results.append(client.get("/v1/subscriptions/racer/messages?wait=2", headers=bob).status_code)

    pullers = [threading.Thread(target=pull) for _ in range(4)]
    for thread in pullers:
        thread.start()
    assert client.delete("/v1/subscriptions/racer", headers=bob).status_code == 204
    for thread in pullers:
        thread.join(10)
    assert set(results) <= {200, 404}, results
    assert client.get("/v1/subscriptions/racer/messages", headers=bob).status_code == 404
    assert client.get("/v1/subscriptions/racer", headers=bob).status_code == 404
    for name in (topology.subscription_queue("racer"), topology.subscription_dead_queue("racer")):
        assert not queue_exists(broker.url, name), name


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_too_many_topic_patterns_are_refused_before_any_binding(broker, client, people):
    bob = people["bob"]
    assert client.put("/v1/groups/lounge", json={}, headers=bob).status_code == 201
    topics = {"lounge": [f"t{n}" for n in range(51)]}
    response = client.put("/v1/subscriptions/wide", json={"groups": ["lounge"], "topics": topics}, headers=bob)
    assert response.status_code == 422
    assert not queue_exists(broker.url, topology.subscription_queue("wide"))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_no_content_has_no_content_type_and_413_closes_the_connection(client, people):
    alice = people["alice"]
    response = client.delete("/v1/tokens/current", headers=alice)
    assert response.status_code == 204 and "Content-Type" not in response.headers
    huge = client.post("/v1/users", data=b"{" + b" " * (1024 * 1024 + 10) + b"}",
                       content_type="application/json")
    assert huge.status_code == 413 and huge.headers["Connection"] == "close"
    assert huge.mimetype == "application/problem+json"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_long_polls_never_take_every_request_thread(client, people, monkeypatch):
    import threading as _threading

    from app.api import subscriptions as view

    bob = people["bob"]
    assert client.put("/v1/groups/lounge", json={}, headers=bob).status_code == 201
    assert client.put("/v1/subscriptions/patient", json={"groups": ["lounge"]}, headers=bob).status_code == 201
    monkeypatch.setattr(view, "LONG_POLL_SLOTS", _threading.BoundedSemaphore(1))
    holder = _threading.Thread(target=lambda: client.get("/v1/subscriptions/patient/messages?wait=3", headers=bob))
    holder.start()
    import time

    time.sleep(0.5)
    started = time.monotonic()
    second = client.get("/v1/subscriptions/patient/messages?wait=3", headers=bob)
    # No slot left: it answers at once instead of holding another thread for 3 s.
    assert second.status_code == 200 and second.get_json()["messages"] == []
    assert time.monotonic() - started < 1.5
    holder.join(10)
    assert [s["id"] for s in client.get("/v1/subscriptions", headers=bob).get_json()["subscriptions"]] == ["patient"]

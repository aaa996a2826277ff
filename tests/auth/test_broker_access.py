"""AMQP applications log in with their Postroom identity and RabbitMQ enforces what they may do.

Every refusal must be RabbitMQ's ACCESS_REFUSED (403) — except publishing under another
user_id, which RabbitMQ itself refuses with PRECONDITION_FAILED (406) before asking us —
and nothing is stored.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pika
import pika.exceptions
import pytest

from app.store.models import MailboxEntry, Message, Post
from config import topology
from support import WorkerThread, register, wait_until
from workers.mail import MailArchiveConsumer
from workers.posts import GroupPostConsumer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def client(auth_app):
    return auth_app.test_client()


@pytest.fixture(scope="module")
def workers(auth_settings, auth_app):
    running = [WorkerThread(auth_settings, kind).start() for kind in (MailArchiveConsumer, GroupPostConsumer)]
    yield running
    for worker in running:
        worker.stop()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def alice(client):
    name = unique("alice")
    return name, register(client, name)


@pytest.fixture
def bob(client):
    name = unique("bob")
    return name, register(client, name)


def token_of(headers: dict) -> str:
    return headers["Authorization"].split(" ", 1)[1]


def amqp(broker, username: str, password: str) -> pika.BlockingConnection:
    params = pika.ConnectionParameters(host=broker.host, port=broker.port,
                                       credentials=pika.PlainCredentials(username, password),
                                       connection_attempts=1, socket_timeout=5)
    return pika.BlockingConnection(params)


def mail_body(sender: str, to: list[str], body: str = "via AMQP") -> tuple[str, bytes]:
    mail_id = str(uuid.uuid4())
    document = {"v": 1, "kind": "mail", "id": mail_id, "from": sender, "to": to, "cc": [], "bcc": [],
                "subject": "amqp", "body": body, "in_reply_to": None,
                "sent_at": datetime.now(timezone.utc).isoformat()}
    return mail_id, json.dumps(document).encode()


def publish(channel, exchange: str, routing_key: str, body: bytes, message_id: str, user_id: str | None):
    channel.basic_publish(exchange, routing_key, body, mandatory=True, properties=pika.BasicProperties(
        delivery_mode=2, content_type="application/json", message_id=message_id, user_id=user_id))


def refused(error: pika.exceptions.AMQPChannelError | pika.exceptions.AMQPConnectionError) -> int:
    return error.args[0] if error.args else 0


def test_token_login_publishes_mail_as_itself(auth_broker, client, workers, alice, bob):
    (a, a_headers), (b, b_headers) = alice, bob
    connection = amqp(auth_broker, a, token_of(a_headers))
    channel = connection.channel()
    channel.confirm_delivery()
    mail_id, body = mail_body(a, [b])
    publish(channel, topology.MAIL_EXCHANGE, topology.MAIL_ROUTING_KEY, body, mail_id, user_id=a)
    connection.close()
    got = wait_until(lambda: (r := client.get(f"/v1/messages/{mail_id}", headers=b_headers)).status_code == 200 and r)
    assert got.get_json()["from"] == a and got.get_json()["body"] == "via AMQP"


@pytest.mark.parametrize("password", ["wrong", "", "x" * 300])
def test_bad_tokens_are_refused(auth_broker, alice, password):
    name, _ = alice
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        amqp(auth_broker, name, password)


def test_someone_elses_token_is_refused(auth_broker, alice, bob):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        amqp(auth_broker, alice[0], token_of(bob[1]))


def test_revoked_and_expired_tokens_are_refused(auth_broker, client, alice):
    name, headers = alice
    amqp(auth_broker, name, token_of(headers)).close()
    assert client.delete("/v1/tokens/current", headers=headers).status_code == 204
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        amqp(auth_broker, name, token_of(headers))
    from app.store.models import Token, utcnow

    fresh = client.post("/v1/tokens", json={"username": name, "password": "correct horse"}).get_json()["token"]
    Token.update(expires_at=utcnow()).where(Token.username == name).execute()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        amqp(auth_broker, name, fresh)


def test_publishing_as_someone_else_is_refused_and_stores_nothing(auth_broker, client, workers, alice, bob):
    (a, a_headers), (b, b_headers) = alice, bob
    connection = amqp(auth_broker, a, token_of(a_headers))
    channel = connection.channel()
    channel.confirm_delivery()
    mail_id, body = mail_body(b, [a], "forged")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        publish(channel, topology.MAIL_EXCHANGE, topology.MAIL_ROUTING_KEY, body, mail_id, user_id=b)
    assert refused(error.value) == 406  # RabbitMQ's own user_id check
    # Without user_id the broker lets it through, but the archive refuses an unverified sender.
    channel = connection.channel()
    channel.confirm_delivery()
    other_id, body = mail_body(b, [a], "forged again")
    publish(channel, topology.MAIL_EXCHANGE, topology.MAIL_ROUTING_KEY, body, other_id, user_id=None)
    connection.close()
    guest = pika.BlockingConnection(pika.URLParameters(auth_broker.url))
    dead = guest.channel()

    def dead_lettered():
        method, properties, _ = dead.basic_get(topology.MAIL_DEAD_QUEUE, auto_ack=True)
        return method is not None and properties.message_id == other_id and properties

    properties = wait_until(dead_lettered, what="the unverified mail in the dead-letter queue")
    assert properties.headers[topology.HEADER_DEAD_REASON] == "unverified_sender"
    guest.close()
    assert not Message.select().where(Message.id.in_([mail_id, other_id])).exists()
    assert client.get("/v1/mailbox/inbox", headers=a_headers).get_json()["messages"] == []


def test_consumes_only_its_own_subscription(auth_broker, client, workers, alice, bob):
    (a, a_headers), (b, b_headers) = alice, bob
    group = unique("g")
    assert client.put(f"/v1/groups/{group}", json={}, headers=a_headers).status_code == 201
    assert client.put(f"/v1/groups/{group}/members/{b}", headers=b_headers).status_code == 201
    assert client.put(f"/v1/subscriptions/{a}-sub", json={"groups": [group]}, headers=a_headers).status_code == 201
    assert client.put(f"/v1/subscriptions/{b}-sub", json={"groups": [group]}, headers=b_headers).status_code == 201
    post_id = client.post(f"/v1/groups/{group}/messages", json={"body": "hello"}, headers=b_headers).get_json()["id"]

    connection = amqp(auth_broker, a, token_of(a_headers))
    channel = connection.channel()
    got = wait_until(lambda: channel.basic_get(topology.subscription_queue(f"{a}-sub"))[0] is not None and True)
    assert got
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        channel.basic_get(topology.subscription_queue(f"{b}-sub"))
    assert refused(error.value) == 403
    connection.close()
    assert post_id


@pytest.mark.parametrize("action", [
    "declare_queue", "declare_exchange", "bind_own_queue", "default_exchange", "posts_exchange",
    "delete_other_queue", "purge_archive",
])
def test_configure_and_write_outside_its_rights_are_refused(auth_broker, client, alice, action):
    name, headers = alice
    sid = f"{name}-own"
    group = unique("g")
    client.put(f"/v1/groups/{group}", json={}, headers=headers)
    assert client.put(f"/v1/subscriptions/{sid}", json={"groups": [group]}, headers=headers).status_code == 201
    connection = amqp(auth_broker, name, token_of(headers))
    channel = connection.channel()
    channel.confirm_delivery()
    before = Message.select().count() + Post.select().count() + MailboxEntry.select().count()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        if action == "declare_queue":
            channel.queue_declare("mine", durable=True)
        elif action == "declare_exchange":
            channel.exchange_declare("mine", "fanout")
        elif action == "bind_own_queue":
            channel.queue_bind(topology.subscription_queue(sid), topology.POSTS_EXCHANGE, "#")
        elif action == "default_exchange":
            publish(channel, "", topology.MAIL_ARCHIVE_QUEUE, b"{}", str(uuid.uuid4()), name)
        elif action == "posts_exchange":
            publish(channel, topology.POSTS_EXCHANGE, f"{group}._", b"{}", str(uuid.uuid4()), name)
        elif action == "delete_other_queue":
            channel.queue_delete(topology.MAIL_ARCHIVE_QUEUE)
        elif action == "purge_archive":
            channel.queue_purge(topology.MAIL_ARCHIVE_QUEUE)
    assert refused(error.value) == 403, error.value
    connection.close()
    assert Message.select().count() + Post.select().count() + MailboxEntry.select().count() == before


def test_posts_only_to_groups_it_is_in(auth_broker, client, workers, alice, bob):
    (a, a_headers), (b, b_headers) = alice, bob
    mine, theirs = unique("mine"), unique("theirs")
    assert client.put(f"/v1/groups/{mine}", json={}, headers=a_headers).status_code == 201
    assert client.put(f"/v1/groups/{theirs}", json={}, headers=b_headers).status_code == 201

    def post_body(group: str) -> tuple[str, bytes]:
        post_id = str(uuid.uuid4())
        document = {"v": 1, "kind": "post", "id": post_id, "group": group, "topic": None, "from": a,
                    "subject": "", "body": "amqp post", "in_reply_to": None,
                    "sent_at": datetime.now(timezone.utc).isoformat()}
        return post_id, json.dumps(document).encode()

    connection = amqp(auth_broker, a, token_of(a_headers))
    channel = connection.channel()
    channel.confirm_delivery()
    ok_id, body = post_body(mine)
    publish(channel, topology.GROUPS_EXCHANGE, topology.post_routing_key(mine, None), body, ok_id, a)
    bad_id, body = post_body(theirs)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        publish(channel, topology.GROUPS_EXCHANGE, topology.post_routing_key(theirs, None), body, bad_id, a)
    assert refused(error.value) == 403
    connection.close()
    history = wait_until(lambda: client.get(f"/v1/groups/{mine}/messages", headers=a_headers).get_json()["messages"])
    assert [p["id"] for p in history] == [ok_id]
    assert not Post.select().where(Post.id == bad_id).exists()

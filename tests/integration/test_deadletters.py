"""The dead-letter tool: an operator lists, shows and requeues what could not be archived."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pika
import pytest
from click.testing import CliRunner

from app.cli import main as cli
from app.store.models import Message
from config import topology
from support import register, wait_until

pytestmark = pytest.mark.integration


def publish_mail(url: str, sender: str, to: list[str], user_id: str = "guest") -> str:
    mail_id = str(uuid.uuid4())
    body = {"v": 1, "kind": "mail", "id": mail_id, "from": sender, "to": to, "cc": [], "bcc": [],
            "subject": "s", "body": "repair me", "in_reply_to": None, "sent_at": datetime.now(timezone.utc).isoformat()}
    connection = pika.BlockingConnection(pika.URLParameters(url))

    def attempt() -> bool:  # unroutable until the worker has declared the topology
        channel = connection.channel()
        channel.confirm_delivery()
        try:
            channel.basic_publish(topology.MAIL_EXCHANGE, topology.MAIL_ROUTING_KEY, json.dumps(body).encode(),
                                  pika.BasicProperties(delivery_mode=2, message_id=mail_id, user_id=user_id,
                                                       content_type="application/json"), mandatory=True)
        except (pika.exceptions.UnroutableError, pika.exceptions.ChannelClosedByBroker):
            return False
        return True

    wait_until(attempt, what="the mail exchange routing to the archive")
    connection.close()
    return mail_id


@pytest.fixture
def admin_client(settings, app):
    from app import create_app

    application = create_app(settings.replace(admin_users=("root",)))
    yield application.test_client()
    application.extensions["postroom"].publisher.close()


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_operator_repairs_and_replays_a_dead_letter(broker, settings, admin_client, client, people, worker):
    root = register(admin_client, "root")
    mail_id = publish_mail(broker.url, "alice", ["bob", "newcomer"])

    def listed():
        letters = admin_client.get("/v1/admin/dead-letters?kind=mail", headers=root).get_json()["dead_letters"]
        return [l for l in letters if l["message_id"] == mail_id]

    [letter] = wait_until(listed, what="the mail in the dead letters")
    assert letter["reason"] == "unknown_recipient" and "newcomer" in letter["detail"]
    shown = admin_client.get(f"/v1/admin/dead-letters/{mail_id}?kind=mail", headers=root).get_json()
    assert json.loads(shown["body"])["id"] == mail_id
    # Listing did not consume it, and ordinary users may not look.
    assert listed()
    assert admin_client.get("/v1/admin/dead-letters", headers=people["alice"]).status_code == 403
    assert admin_client.post("/v1/admin/dead-letters/requeue", json={}, headers=people["alice"]).status_code == 403

    register(client, "newcomer")
    done = admin_client.post("/v1/admin/dead-letters/requeue", json={"kind": "mail", "message_ids": [mail_id]},
                             headers=root).get_json()
    assert done == {"requeued": [mail_id], "skipped": []}
    wait_until(lambda: client.get(f"/v1/messages/{mail_id}", headers=people["bob"]).status_code == 200)
    assert Message.select().where(Message.id == mail_id).count() == 1
    assert not listed()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cli_lists_and_requeues(broker, settings, client, people, worker, monkeypatch):
    monkeypatch.setenv("POSTROOM_AMQP_URL", broker.url)
    mail_id = publish_mail(broker.url, "alice", ["late"])
    forged = publish_mail(broker.url, "alice", ["bob"], user_id=None)
    runner = CliRunner()

    def dead_ids():
        result = runner.invoke(cli, ["dead", "list", "--kind", "mail"])
        assert result.exit_code == 0, result.output
        return {json.loads(line)["message_id"]: json.loads(line)["reason"]
                for line in result.output.splitlines() if line.startswith("{")}

    found = wait_until(lambda: (ids := dead_ids()).keys() >= {mail_id, forged} and ids)
    assert found[mail_id] == "unknown_recipient" and found[forged] == "unverified_sender"
    assert runner.invoke(cli, ["dead", "requeue"]).exit_code != 0  # needs --id or --all
    register(client, "late")
    result = runner.invoke(cli, ["dead", "requeue", "--all"])
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output[result.output.index("{"):])
    assert outcome["requeued"] == [mail_id]
    assert [s["message_id"] for s in outcome["skipped"]] == [forged]  # never trusted by a requeue
    wait_until(lambda: Message.select().where(Message.id == mail_id).exists())
    assert not Message.select().where(Message.id == forged).exists()

"""Mail end to end: API → RabbitMQ → archive worker → database → API."""

from __future__ import annotations

import uuid

import pytest

from support import wait_until

pytestmark = pytest.mark.integration


def send(client, headers, **mail):
    """POST a mail and return the response."""
    return client.post("/v1/messages", json=mail, headers=headers)


def archived(client, headers, message_id):
    """Wait until the caller can read ``message_id``; return the mail."""
    response = wait_until(
        lambda: (r := client.get(f"/v1/messages/{message_id}", headers=headers)).status_code == 200 and r,
        what=f"message {message_id} archived",
    )
    return response.get_json()


def inbox(client, headers, **params):
    """Return the caller's inbox page."""
    response = client.get("/v1/mailbox/inbox", headers=headers, query_string=params)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_send_and_read_roundtrip(client, people, worker):
    alice, bob = people["alice"], people["bob"]
    response = send(client, alice, to=["bob"], subject="Lunch?", body="Noon at the usual place.")
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "accepted"
    assert response.headers["Location"] == f"/v1/messages/{body['id']}"

    mail = archived(client, bob, body["id"])
    assert mail["from"] == "alice" and mail["to"] == ["bob"] and mail["cc"] == [] and mail["bcc"] == []
    assert mail["subject"] == "Lunch?" and mail["body"] == "Noon at the usual place."
    assert mail["read"] is False and mail["uid"] == 1
    assert mail["thread_id"] == body["id"] and mail["in_reply_to"] is None
    assert mail["sent_at"].endswith("Z")

    page = inbox(client, bob)
    assert [m["id"] for m in page["messages"]] == [body["id"]] and page["next"] is None
    sent = client.get("/v1/mailbox/sent", headers=alice).get_json()
    assert [m["id"] for m in sent["messages"]] == [body["id"]]
    assert sent["messages"][0]["read"] is True
    assert inbox(client, alice)["messages"] == []


def test_unread_count_and_read_flags_are_per_user(client, people, worker):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    mid = send(client, alice, to=["bob", "carol"], subject="s", body="b").get_json()["id"]
    archived(client, carol, mid)
    assert client.get("/v1/me", headers=bob).get_json()["unread"] == {"inbox": 1}

    assert client.put(f"/v1/messages/{mid}/read", headers=bob).status_code == 204
    assert client.get("/v1/me", headers=bob).get_json()["unread"] == {"inbox": 0}
    assert client.get(f"/v1/messages/{mid}", headers=bob).get_json()["read"] is True
    assert client.get(f"/v1/messages/{mid}", headers=carol).get_json()["read"] is False
    assert inbox(client, bob, unread="true")["messages"] == []
    assert [m["id"] for m in inbox(client, carol, unread="true")["messages"]] == [mid]

    assert client.delete(f"/v1/messages/{mid}/read", headers=bob).status_code == 204
    assert client.get("/v1/me", headers=bob).get_json()["unread"] == {"inbox": 1}
    # Someone who never got it: 404, not 403.
    assert client.put(f"/v1/messages/{mid}/read", headers=people["dave"]).status_code == 404


def test_delete_is_for_the_caller_only(client, people, worker):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    mid = send(client, alice, to=["bob"], cc=["carol"], subject="s", body="b").get_json()["id"]
    archived(client, carol, mid)

    assert client.delete(f"/v1/messages/{mid}", headers=bob).status_code == 204
    assert client.get(f"/v1/messages/{mid}", headers=bob).status_code == 404
    assert client.delete(f"/v1/messages/{mid}", headers=bob).status_code == 404
    assert inbox(client, bob)["messages"] == []
    assert client.get(f"/v1/messages/{mid}", headers=carol).status_code == 200
    assert client.get(f"/v1/messages/{mid}", headers=alice).status_code == 200
    # The sender deleting their sent copy leaves the recipients' copies alone.
    assert client.delete(f"/v1/messages/{mid}", headers=alice).status_code == 204
    assert client.get(f"/v1/messages/{mid}", headers=carol).get_json()["body"] == "b"


def test_bcc_is_seen_only_by_sender_and_the_bcc_recipient_themself(client, people, worker):
    alice = people["alice"]
    mid = send(client, alice, to=["bob"], bcc=["carol", "dave"], subject="s", body="b").get_json()["id"]
    assert archived(client, people["dave"], mid)["bcc"] == ["dave"]
    assert archived(client, people["carol"], mid)["bcc"] == ["carol"]
    assert archived(client, people["bob"], mid)["bcc"] == []
    assert archived(client, alice, mid)["bcc"] == ["carol", "dave"]
    for name in ("bob", "carol", "dave"):
        listed = inbox(client, people[name])["messages"][0]
        assert listed["bcc"] == ([] if name == "bob" else [name])
    assert client.get("/v1/mailbox/sent", headers=alice).get_json()["messages"][0]["bcc"] == ["carol", "dave"]


def test_unknown_recipients_reject_the_whole_mail(client, people, worker):
    response = send(client, people["alice"], to=["bob", "nobody"], cc=["ghost"], subject="s", body="b")
    assert response.status_code == 422
    problem = response.get_json()
    assert response.mimetype == "application/problem+json"
    assert problem["code"] == "unknown_recipient"
    assert problem["unknown_recipients"] == ["ghost", "nobody"]
    # Nothing was sent: a later mail is bob's first and only one.
    mid = send(client, people["alice"], to=["bob"], subject="s", body="b").get_json()["id"]
    archived(client, people["bob"], mid)
    assert [m["id"] for m in inbox(client, people["bob"])["messages"]] == [mid]


def test_recipient_named_twice_gets_one_copy_and_self_mail_is_in_both_folders(client, people, worker):
    alice, bob = people["alice"], people["bob"]
    mid = send(client, alice, to=["bob", "alice", "bob"], cc=["bob"], subject="s", body="b").get_json()["id"]
    archived(client, bob, mid)
    assert len(inbox(client, bob)["messages"]) == 1
    assert [m["id"] for m in inbox(client, alice)["messages"]] == [mid]
    assert [m["id"] for m in client.get("/v1/mailbox/sent", headers=alice).get_json()["messages"]] == [mid]
    # Deleting removes both of the caller's copies.
    assert client.delete(f"/v1/messages/{mid}", headers=alice).status_code == 204
    assert inbox(client, alice)["messages"] == []
    assert client.get("/v1/mailbox/sent", headers=alice).get_json()["messages"] == []
    assert client.get(f"/v1/messages/{mid}", headers=bob).status_code == 200


def test_no_recipient_is_422(client, people):
    response = send(client, people["alice"], to=[], subject="s", body="b")
    assert response.status_code == 422 and response.get_json()["code"] == "no_recipients"


def test_replies_share_the_thread(client, people, worker):
    alice, bob = people["alice"], people["bob"]
    first = send(client, alice, to=["bob"], subject="plan", body="1").get_json()["id"]
    archived(client, bob, first)
    second = send(client, bob, to=["alice"], subject="Re: plan", body="2", in_reply_to=first).get_json()["id"]
    reply = archived(client, alice, second)
    assert reply["in_reply_to"] == first and reply["thread_id"] == first
    third = send(client, alice, to=["bob"], subject="Re: plan", body="3", in_reply_to=second).get_json()["id"]
    assert archived(client, bob, third)["thread_id"] == first
    bad = send(client, alice, to=["bob"], subject="s", body="b", in_reply_to="not-an-id")
    assert bad.status_code == 422


def test_idempotency_key_retries_archive_once(client, people, worker):
    alice, bob = people["alice"], people["bob"]
    headers = {**alice, "Idempotency-Key": "order-42"}
    first = send(client, headers, to=["bob"], subject="s", body="b")
    again = send(client, headers, to=["bob"], subject="s", body="b")
    assert first.status_code == again.status_code == 202
    assert first.get_json()["id"] == again.get_json()["id"]
    archived(client, bob, first.get_json()["id"])
    other = send(client, headers, to=["bob"], subject="s", body="different")
    assert other.status_code == 422 and other.get_json()["code"] == "idempotency_key_reused"
    # The key is scoped to the sender: bob may use the same key for his own mail.
    bobs = send(client, {**bob, "Idempotency-Key": "order-42"}, to=["alice"], subject="s", body="b")
    assert bobs.status_code == 202 and bobs.get_json()["id"] != first.get_json()["id"]
    archived(client, alice, bobs.get_json()["id"])
    assert len(inbox(client, bob)["messages"]) == 1


def test_put_with_client_chosen_id(client, people, worker):
    alice, bob = people["alice"], people["bob"]
    mid = str(uuid.uuid4())
    mail = {"to": ["bob"], "subject": "s", "body": "b"}
    first = client.put(f"/v1/messages/{mid}", json=mail, headers=alice)
    assert first.status_code == 202 and first.get_json()["id"] == mid
    assert client.put(f"/v1/messages/{mid}", json=mail, headers=alice).status_code == 202
    assert archived(client, bob, mid)["id"] == mid
    assert client.put(f"/v1/messages/{mid}", json=mail, headers=alice).status_code == 202
    changed = client.put(f"/v1/messages/{mid}", json={**mail, "body": "other"}, headers=alice)
    assert changed.status_code == 409 and changed.get_json()["code"] == "id_conflict"
    stolen = client.put(f"/v1/messages/{mid}", json=mail, headers=bob)
    assert stolen.status_code == 409
    assert client.put("/v1/messages/not-a-valid-id", json=mail, headers=alice).status_code == 422
    assert len(inbox(client, bob)["messages"]) == 1


def test_put_conflict_before_archive(client, people):
    """A second PUT of a claimed id with other content is refused even before a worker ran."""
    mid = str(uuid.uuid4())
    mail = {"to": ["bob"], "subject": "s", "body": "b"}
    assert client.put(f"/v1/messages/{mid}", json=mail, headers=people["alice"]).status_code == 202
    response = client.put(f"/v1/messages/{mid}", json={**mail, "body": "x"}, headers=people["alice"])
    assert response.status_code == 409


def test_unicode_round_trips_exactly(client, people, worker):
    text = "Grüße 🌍 \u200b\t\r\n — ＡＢＣ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \\ \" '"
    mid = send(client, people["alice"], to=["bob"], subject=text[:40], body=text).get_json()["id"]
    mail = archived(client, people["bob"], mid)
    assert mail["body"] == text and mail["subject"] == text[:40]


def test_message_ids_from_get_are_404_for_strangers(client, people, worker):
    mid = send(client, people["alice"], to=["bob"], subject="s", body="b").get_json()["id"]
    archived(client, people["bob"], mid)
    for verb in ("get", "delete"):
        response = getattr(client, verb)(f"/v1/messages/{mid}", headers=people["carol"])
        assert response.status_code == 404 and response.get_json()["code"] == "message_not_found"
    assert client.get("/v1/messages/whatever", headers=people["carol"]).status_code == 404


def test_a_reply_to_a_mail_you_never_saw_learns_nothing_of_its_thread(client, people, worker):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    root = send(client, alice, to=["bob"], subject="plan", body="1").get_json()["id"]
    archived(client, bob, root)
    reply = send(client, bob, to=["alice"], subject="Re", body="2", in_reply_to=root).get_json()["id"]
    assert archived(client, alice, reply)["thread_id"] == root
    # carol was never in the thread: her reply does not reveal the thread's root.
    nosy = send(client, carol, to=["dave"], subject="Re", body="3", in_reply_to=reply).get_json()["id"]
    assert archived(client, carol, nosy)["thread_id"] == reply

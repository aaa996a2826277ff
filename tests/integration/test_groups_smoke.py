"""Groups and subscriptions end to end (first pass)."""

from __future__ import annotations

import pytest

from support import wait_until

pytestmark = pytest.mark.integration


def test_group_post_history_and_subscription(client, people, post_worker):
    alice, bob = people["alice"], people["bob"]
    assert client.put("/v1/groups/lounge", json={"description": "chat"}, headers=alice).status_code == 201
    assert client.put("/v1/groups/lounge/members/bob", headers=bob).status_code == 201
    sub = client.put("/v1/subscriptions/bob-reader", json={"groups": ["lounge"]}, headers=bob)
    assert sub.status_code == 201, sub.get_json()
    ids = []
    for n in range(3):
        r = client.post("/v1/groups/lounge/messages", json={"body": f"post {n}", "topic": "news"}, headers=alice)
        assert r.status_code == 202, r.get_json()
        ids.append(r.get_json()["id"])
    history = wait_until(lambda: (h := client.get("/v1/groups/lounge/messages", headers=bob).get_json())["messages"]
                         and len(h["messages"]) == 3 and h)
    assert [p["seq"] for p in history["messages"]] == [1, 2, 3]
    assert [p["id"] for p in history["messages"]] == ids
    assert client.get("/v1/groups/lounge", headers=bob).get_json()["unread"] == 3

    pulled = client.get("/v1/subscriptions/bob-reader/messages?max=10&wait=5", headers=bob).get_json()["messages"]
    got = list(pulled)
    while len(got) < 3:
        more = client.get("/v1/subscriptions/bob-reader/messages?max=10&wait=5", headers=bob).get_json()["messages"]
        assert more, "posts did not arrive"
        got += more
    assert sorted(p["seq"] for p in got) == [1, 2, 3]
    assert all(p["delivery_count"] == 1 for p in got)
    assert client.get("/v1/subscriptions/bob-reader", headers=bob).get_json()["backlog"] == 3
    acked = client.post("/v1/subscriptions/bob-reader/ack", json={"ack_ids": [p["ack_id"] for p in got] + ["nope"]},
                        headers=bob).get_json()
    assert sorted(acked["acked"]) == sorted(p["ack_id"] for p in got) and acked["expired"] == ["nope"]
    assert client.get("/v1/subscriptions/bob-reader", headers=bob).get_json()["backlog"] == 0

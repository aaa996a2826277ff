"""Discussion groups against the contract (shared/api-v1.md, "Groups" and "Precise rules"):
the group itself, listing, members, posting, the numbered history and read markers.

In process: the Flask test client, the session's RabbitMQ, the post archive worker in a
thread; SQLite and PostgreSQL unless a test is about input checks only.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from support import wait_until

pytestmark = pytest.mark.integration

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# -- helpers ----------------------------------------------------------------------------------


def put_group(client, who, name, expect=201, **body):
    response = client.put(f"/v1/groups/{quote(name, safe='')}", json=body, headers=who)
    assert response.status_code == expect, (response.status_code, response.get_json())
    return response.get_json()


def join(client, who, group, username, expect=201):
    response = client.put(f"/v1/groups/{group}/members/{username}", headers=who)
    assert response.status_code == expect, (response.status_code, response.get_json())


def post(client, who, group, body="hello", **fields):
    headers = dict(who)
    key = fields.pop("idempotency_key", None)
    if key is not None:
        headers["Idempotency-Key"] = key
    response = client.post(f"/v1/groups/{group}/messages", json={"body": body, **fields}, headers=headers)
    assert response.status_code == 202, (response.status_code, response.get_json())
    assert response.get_json()["status"] == "accepted"
    return response.get_json()["id"]


def high_seq(client, who, group):
    return client.get(f"/v1/groups/{group}", headers=who).get_json()["high_seq"]


def archived(client, who, group, n, timeout=15.0):
    """Wait until ``group`` has ``n`` archived posts; return the whole history."""
    wait_until(lambda: high_seq(client, who, group) >= n, timeout=timeout, what=f"{n} posts archived in {group}")
    return all_posts(client, who, group)


def all_posts(client, who, group, **params):
    """Follow ``next`` from after=0 to the end; return every post."""
    posts, after = [], None
    while True:
        query = dict(params, limit=params.get("limit", 200))
        if after is not None:
            query["after"] = after
        response = client.get(f"/v1/groups/{group}/messages", query_string=query, headers=who)
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        posts += page["messages"]
        if page["next"] is None:
            return posts
        after = page["next"]


def problem(response, status, code=None):
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    assert response.mimetype == "application/problem+json"
    document = response.get_json()
    if code is not None:
        assert document["code"] == code, document
    return document


# -- the group itself ---------------------------------------------------------------------------


def test_put_creates_then_the_owner_updates_only_the_fields_given(client, people):
    alice = people["alice"]
    created = put_group(client, alice, "lounge", description="chat")
    assert created["name"] == "lounge" and created["owner"] == "alice"
    assert created["visibility"] == "public"  # the default
    assert created["description"] == "chat"
    assert created["members"] == 1 and created["high_seq"] == 0
    assert created["unread"] == 0  # the owner is a member

    updated = put_group(client, alice, "lounge", expect=200, visibility="private")
    assert (updated["visibility"], updated["description"]) == ("private", "chat")
    updated = put_group(client, alice, "lounge", expect=200, description="quiet")
    assert (updated["visibility"], updated["description"]) == ("private", "quiet")
    updated = put_group(client, alice, "lounge", expect=200)
    assert (updated["visibility"], updated["description"]) == ("private", "quiet")
    assert client.get("/v1/groups/lounge", headers=alice).get_json()["description"] == "quiet"

    problem(client.put("/v1/groups/other", json={"visibility": "secret"}, headers=alice), 422)
    problem(client.put("/v1/groups/other", json={"colour": "red"}, headers=alice), 422)
    assert client.get("/v1/groups/other", headers=alice).status_code == 404


def test_put_by_a_non_owner_is_403_and_404_for_a_private_group_they_are_not_in(client, people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    put_group(client, alice, "pub", description="a")
    put_group(client, alice, "priv", visibility="private", description="b")
    join(client, alice, "priv", "bob")

    problem(client.put("/v1/groups/pub", json={"description": "mine"}, headers=bob), 403, "not_owner")
    problem(client.put("/v1/groups/pub", json={}, headers=bob), 403, "not_owner")
    problem(client.put("/v1/groups/priv", json={"description": "x"}, headers=bob), 403, "not_owner")  # member
    # Not a member: a private group does not exist for carol, also on PUT (no "taken" leak).
    problem(client.put("/v1/groups/priv", json={"description": "x"}, headers=carol), 404)
    problem(client.put("/v1/groups/priv", json={}, headers=carol), 404)
    assert client.get("/v1/groups/pub", headers=alice).get_json()["description"] == "a"
    assert client.get("/v1/groups/priv", headers=alice).get_json()["description"] == "b"


BAD_NAMES = ["#", "*", "a#b", "a*b", "a.b", "lounge.*", "lounge.#", "a b", " ab", "Lounge", "LOUNGE", "a",
             "x" * 65, "-ab", "_ab", "ab/", "é-ab", "ab\u00a0"]


@sqlite_only
def test_bad_group_names_are_422_and_never_reach_the_broker(client, people, broker):
    """C14: names become routing-key words; anything else is refused before it is used."""
    alice = people["alice"]
    for name in BAD_NAMES:
        response = client.put(f"/v1/groups/{quote(name, safe='')}", json={}, headers=alice)
        if name == "ab/":  # a slash ends the path segment: not this route at all
            assert response.status_code in (404, 405), name
            continue
        problem(response, 422, "invalid_group_name")
    # Boundaries that are fine: 2 and 64 characters, digits, _ and - after the first.
    for name in ("ab", "x" * 64, "0-a_b"):
        put_group(client, alice, name)
    assert sorted(g["name"] for g in client.get("/v1/groups", headers=alice).get_json()["groups"]) == sorted(
        ["ab", "x" * 64, "0-a_b"]
    )
    # A subscription naming such a group, or such a topic pattern, builds no binding either.
    for groups, topics in ((["a.b"], None), (["#"], None), (["ab.#"], None), (["ab"], {"ab": ["#"]}),
                           (["ab"], {"ab": ["a.b"]}), (["ab"], {"ab": ["news.*"]}), (["ab"], {"ab": ["News"]})):
        body = {"groups": groups} if topics is None else {"groups": groups, "topics": topics}
        response = client.put("/v1/subscriptions/c14-probe", json=body, headers=alice)
        assert response.status_code in (404, 422), (groups, topics, response.get_json())
    assert client.get("/v1/subscriptions/c14-probe", headers=alice).status_code == 404
    listed = broker.ctl("list_bindings", "source_name", "destination_name", "routing_key", "-q").stdout
    assert "postroom.sub.c14-probe" not in listed
    posts_keys = [line.split("\t")[2] for line in listed.splitlines() if line.startswith("postroom.posts\t")]
    assert not any("#" in key for key in posts_keys), posts_keys


# -- listing ------------------------------------------------------------------------------------


def test_list_shows_public_groups_and_the_callers_private_ones_with_paging(client, people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    for name in ("pub-a", "pub-b", "pub-c", "pub-d", "pub-e"):
        put_group(client, alice if name < "pub-c" else carol, name)
    put_group(client, alice, "priv-alice", visibility="private")
    put_group(client, bob, "priv-bob", visibility="private")

    def names(who, **params):
        found, cursor, pages = [], None, 0
        while True:
            query = dict(params)
            if cursor is not None:
                query["after"] = cursor
            response = client.get("/v1/groups", query_string=query, headers=who)
            assert response.status_code == 200, response.get_json()
            page = response.get_json()
            pages += 1
            if "limit" in params:
                assert len(page["groups"]) <= params["limit"]
            found += [g["name"] for g in page["groups"]]
            cursor = page["next"]
            if cursor is None:
                return found, pages

    public = ["pub-a", "pub-b", "pub-c", "pub-d", "pub-e"]
    assert names(bob) == (sorted(public + ["priv-bob"]), 1)
    assert names(alice)[0] == sorted(public + ["priv-alice"])
    assert names(carol)[0] == public
    found, pages = names(bob, limit=2)
    assert found == sorted(public + ["priv-bob"]) and pages == 3  # no repeats, nothing skipped
    assert names(bob, limit=6) == (sorted(public + ["priv-bob"]), 1)  # an exact fit ends with next=null
    join(client, alice, "priv-alice", "bob")
    assert "priv-alice" in names(bob)[0]
    assert names(bob, limit=500)[1] == 1  # clamped, not an error

    for bad in ({"limit": "0"}, {"limit": "-1"}, {"limit": "ten"}, {"after": "A.B"}, {"after": "#"}):
        problem(client.get("/v1/groups", query_string=bad, headers=bob), 400, "invalid_parameter")
    problem(client.get("/v1/groups"), 401)


def test_get_shows_unread_to_members_only_and_hides_private_groups(client, people, post_worker):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    put_group(client, alice, "pub")
    put_group(client, alice, "priv", visibility="private")
    join(client, bob, "pub", "bob")
    post(client, alice, "pub")
    archived(client, alice, "pub", 1)

    as_bob = client.get("/v1/groups/pub", headers=bob).get_json()
    assert as_bob["unread"] == 1 and as_bob["members"] == 2 and as_bob["high_seq"] == 1  # alice's post
    as_carol = client.get("/v1/groups/pub", headers=carol)
    assert as_carol.status_code == 200
    assert as_carol.get_json().get("unread") is None and as_carol.get_json()["high_seq"] == 1
    problem(client.get("/v1/groups/priv", headers=carol), 404, "group_not_found")
    problem(client.get("/v1/groups/nosuch", headers=carol), 404)
    problem(client.get("/v1/groups/A.B", headers=carol), 404)
    assert client.get("/v1/groups/pub", headers=alice).get_json()["unread"] == 0  # her own post
    assert client.get("/v1/groups/priv", headers=alice).get_json()["unread"] == 0


# -- delete ---------------------------------------------------------------------------------------


def test_delete_is_for_the_owner_and_takes_posts_and_subscriptions_with_it(client, people, post_worker):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    put_group(client, alice, "doomed")
    put_group(client, alice, "secret", visibility="private")
    put_group(client, alice, "kept")
    join(client, bob, "doomed", "bob")
    post(client, alice, "doomed", "one")
    post(client, bob, "doomed", "two")
    archived(client, alice, "doomed", 2)
    sub = client.put("/v1/subscriptions/del-bob", json={"groups": ["doomed", "kept"]}, headers=bob)
    assert sub.status_code == 201, sub.get_json()

    problem(client.delete("/v1/groups/doomed", headers=bob), 403, "not_owner")  # a member
    problem(client.delete("/v1/groups/doomed", headers=carol), 403, "not_owner")  # not a member, public
    problem(client.delete("/v1/groups/secret", headers=carol), 404)  # private, not a member
    problem(client.delete("/v1/groups/nosuch", headers=alice), 404)
    assert client.delete("/v1/groups/doomed", headers=alice).status_code == 204

    problem(client.get("/v1/groups/doomed", headers=alice), 404)
    problem(client.get("/v1/groups/doomed/messages", headers=bob), 404)
    problem(client.delete("/v1/groups/doomed", headers=alice), 404)
    assert client.get("/v1/subscriptions/del-bob", headers=bob).get_json()["groups"] == ["kept"]
    # The name is free again, and nothing of the old group comes back with it.
    created = put_group(client, carol, "doomed")
    assert created["high_seq"] == 0 and created["members"] == 1 and created["owner"] == "carol"
    assert all_posts(client, carol, "doomed") == []
    client.delete("/v1/subscriptions/del-bob", headers=bob)


# -- members --------------------------------------------------------------------------------------


def test_members_join_add_leave_and_remove_per_the_rules(client, people):
    alice, bob, carol, dave = people["alice"], people["bob"], people["carol"], people["dave"]
    put_group(client, alice, "pub")
    put_group(client, alice, "priv", visibility="private")

    join(client, bob, "pub", "bob", 201)  # anyone joins a public group
    join(client, bob, "pub", "bob", 200)  # already in
    problem(client.put("/v1/groups/pub/members/carol", headers=bob), 403, "not_owner")  # others: owner only
    join(client, alice, "pub", "carol", 201)  # the owner adds people to a public group too
    join(client, alice, "pub", "carol", 200)
    problem(client.put("/v1/groups/pub/members/nobody", headers=alice), 404, "user_not_found")

    problem(client.put("/v1/groups/priv/members/bob", headers=bob), 404)  # may not know it exists
    problem(client.put("/v1/groups/priv/members/carol", headers=bob), 404)
    problem(client.delete("/v1/groups/priv/members/alice", headers=bob), 404)
    join(client, alice, "priv", "bob", 201)
    join(client, alice, "priv", "bob", 200)
    problem(client.put("/v1/groups/priv/members/carol", headers=bob), 403, "not_owner")  # a member, not owner
    problem(client.put("/v1/groups/priv/members/nobody", headers=alice), 404, "user_not_found")
    assert client.get("/v1/groups/priv", headers=bob).get_json()["members"] == 2

    problem(client.delete("/v1/groups/pub/members/alice", headers=alice), 409, "owner_cannot_leave")
    problem(client.delete("/v1/groups/priv/members/alice", headers=alice), 409, "owner_cannot_leave")
    problem(client.delete("/v1/groups/pub/members/carol", headers=bob), 403)  # members remove only themselves
    problem(client.delete("/v1/groups/pub/members/alice", headers=bob), 403)
    problem(client.delete("/v1/groups/pub/members/dave", headers=alice), 404)  # not a member
    problem(client.delete("/v1/groups/pub/members/dave", headers=dave), 404)

    assert client.delete("/v1/groups/pub/members/bob", headers=bob).status_code == 204  # leaves
    assert client.delete("/v1/groups/pub/members/carol", headers=alice).status_code == 204  # removed
    assert client.get("/v1/groups/pub", headers=alice).get_json()["members"] == 1
    assert client.get("/v1/groups/pub", headers=bob).get_json().get("unread") is None
    assert client.delete("/v1/groups/priv/members/bob", headers=alice).status_code == 204
    problem(client.get("/v1/groups/priv", headers=bob), 404)  # gone from bob's view with the membership
    names = [g["name"] for g in client.get("/v1/groups", headers=bob).get_json()["groups"]]
    assert names == ["pub"]


# -- posting -------------------------------------------------------------------------------------


def test_only_members_post_and_topics_are_checked(client, people, post_worker):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    put_group(client, alice, "pub")
    put_group(client, alice, "priv", visibility="private")
    join(client, bob, "pub", "bob")

    problem(client.post("/v1/groups/pub/messages", json={"body": "x"}, headers=carol), 403, "not_a_member")
    problem(client.post("/v1/groups/priv/messages", json={"body": "x"}, headers=carol), 404)
    problem(client.post("/v1/groups/nosuch/messages", json={"body": "x"}, headers=carol), 404)
    for topic in ("a#b", "#", "*", "a.b", "news.*", "News", "", "-x", "x" * 65, "a b"):
        problem(client.post("/v1/groups/pub/messages", json={"body": "x", "topic": topic}, headers=bob),
                422, "invalid_topic")
    problem(client.post("/v1/groups/pub/messages", json={"body": "x", "in_reply_to": "nope"}, headers=bob), 422)
    problem(client.post("/v1/groups/pub/messages", json={"body": 5}, headers=bob), 422)
    problem(client.post("/v1/groups/pub/messages", json={"body": "a\u0000b"}, headers=bob), 422,
            "invalid_character")

    first = post(client, bob, "pub", "with topic", topic="x" * 64, subject="s")
    second = post(client, alice, "priv", "private", in_reply_to=first)
    history = archived(client, alice, "pub", 1)
    assert [(p["id"], p["topic"], p["from"], p["subject"]) for p in history] == [(first, "x" * 64, "bob", "s")]
    assert archived(client, alice, "priv", 1)[0]["in_reply_to"] == first and second


def test_idempotency_key_returns_the_same_id_and_archives_once(client, people, post_worker):
    alice = people["alice"]
    put_group(client, alice, "pub")
    put_group(client, alice, "other")
    first = post(client, alice, "pub", "once", idempotency_key="k-1")
    again = post(client, alice, "pub", "once", idempotency_key="k-1")
    assert again == first
    headers = {**alice, "Idempotency-Key": "k-1"}
    problem(client.post("/v1/groups/pub/messages", json={"body": "different"}, headers=headers), 422,
            "idempotency_key_reused")
    problem(client.post("/v1/groups/other/messages", json={"body": "once"}, headers=headers), 422,
            "idempotency_key_reused")
    marker = post(client, alice, "pub", "after")  # archived after the retries: they had their chance
    history = wait_until(lambda: (h := all_posts(client, alice, "pub")) and h[-1]["id"] == marker and h,
                         what="marker post")
    assert [p["id"] for p in history] == [first, marker]
    assert [p["seq"] for p in history] == [1, 2]


def test_body_and_request_size_limits(client, people, post_worker):
    alice = people["alice"]
    put_group(client, alice, "pub")
    limit = 256 * 1024
    at_limit = post(client, alice, "pub", "é" * (limit // 2))  # 2 bytes each: exactly the limit
    problem(client.post("/v1/groups/pub/messages", json={"body": "é" * (limit // 2) + "x"}, headers=alice), 413,
            "payload_too_large")
    problem(client.post("/v1/groups/pub/messages", json={"body": "x" * (limit + 1)}, headers=alice), 413,
            "payload_too_large")
    problem(client.post("/v1/groups/pub/messages", json={"body": "x", "in_reply_to": "y" * (1024 * 1024)},
                        headers=alice), 413, "payload_too_large")
    problem(client.post("/v1/groups/pub/messages", json={"body": "x", "subject": "s" * 999}, headers=alice), 422)
    history = archived(client, alice, "pub", 1)
    assert [p["id"] for p in history] == [at_limit] and history[0]["body"] == "é" * (limit // 2)


# -- history ----------------------------------------------------------------------------------------


def test_history_is_numbered_without_gaps_and_pages_by_seq(client, people, post_worker):
    alice, bob, carol, dave = people["alice"], people["bob"], people["carol"], people["dave"]
    put_group(client, alice, "pub")
    put_group(client, alice, "priv", visibility="private")
    join(client, bob, "pub", "bob")
    sent = []
    for n in range(7):
        who, name = (alice, "alice") if n % 2 == 0 else (bob, "bob")
        topic = ["news", "chat", None][n % 3]
        sent.append((post(client, who, "pub", f"post {n} ✓", topic=topic, subject=f"s{n}"), name, topic))
    history = archived(client, dave, "pub", 7)  # dave is not a member: public groups are readable
    assert [p["seq"] for p in history] == list(range(1, 8))
    assert [(p["id"], p["from"], p["topic"]) for p in history] == sent  # one sender at a time: posting order
    assert [p["body"] for p in history] == [f"post {n} ✓" for n in range(7)]
    assert all(p["group"] == "pub" and p["sent_at"].endswith("Z") and p["in_reply_to"] is None for p in history)
    assert set(history[0]) >= {"seq", "id", "group", "topic", "from", "subject", "body", "sent_at", "in_reply_to"}

    page = client.get("/v1/groups/pub/messages?after=2&limit=3", headers=carol).get_json()
    assert [p["seq"] for p in page["messages"]] == [3, 4, 5] and page["next"] is not None
    page = client.get(f"/v1/groups/pub/messages?after={page['next']}&limit=3", headers=carol).get_json()
    assert [p["seq"] for p in page["messages"]] == [6, 7] and page["next"] is None
    page = client.get("/v1/groups/pub/messages?after=7", headers=carol).get_json()
    assert page == {"messages": [], "next": None}
    assert [p["seq"] for p in all_posts(client, carol, "pub", limit=2)] == list(range(1, 8))
    news = all_posts(client, carol, "pub", topic="news", limit=1)
    assert [p["seq"] for p in news] == [1, 4, 7] and all(p["topic"] == "news" for p in news)
    page = client.get("/v1/groups/pub/messages?topic=chat&after=2", headers=carol).get_json()
    assert [p["seq"] for p in page["messages"]] == [5]

    for bad in ("after=-1", "after=x", "after=1.5", "limit=0", "limit=x", "topic=a.b", "topic=%23"):
        problem(client.get(f"/v1/groups/pub/messages?{bad}", headers=carol), 400, "invalid_parameter")
    problem(client.get("/v1/groups/priv/messages", headers=carol), 404)
    assert client.get("/v1/groups/priv/messages", headers=alice).get_json() == {"messages": [], "next": None}


# -- read markers and unread -----------------------------------------------------------------------


def test_read_marker_starts_at_high_seq_on_join_and_unread_skips_own_posts(client, people, post_worker):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    put_group(client, alice, "pub")
    post(client, alice, "pub", "1")
    post(client, alice, "pub", "2")
    archived(client, alice, "pub", 2)
    join(client, bob, "pub", "bob")
    joined = client.get("/v1/groups/pub", headers=bob).get_json()
    assert (joined["read_marker"], joined["unread"]) == (2, 0)
    for body in ("3", "4", "5"):
        post(client, alice, "pub", body)
    archived(client, alice, "pub", 5)
    post(client, bob, "pub", "6 (bob's own)")
    archived(client, alice, "pub", 6)

    def unread(who):
        return client.get("/v1/groups/pub", headers=who).get_json()["unread"]

    assert unread(bob) == 3  # 3, 4, 5; not his own 6
    assert unread(alice) == 1  # her marker is 0: only bob's post is unread to her

    def mark(who, seq, expect=204, code=None):
        response = client.put("/v1/groups/pub/read-marker", json={"seq": seq}, headers=who)
        if expect == 204:
            assert response.status_code == 204, response.get_json()
        else:
            problem(response, expect, code)

    mark(bob, 4)
    assert unread(bob) == 1
    mark(bob, 6)
    assert unread(bob) == 0
    mark(bob, 0)  # back to the start is allowed
    assert unread(bob) == 5
    mark(alice, 6)
    assert unread(alice) == 0
    for bad in (-1, 7, "3", 3.5, True, None):
        mark(bob, bad, 422)
    problem(client.put("/v1/groups/pub/read-marker", json={}, headers=bob), 422)
    problem(client.put("/v1/groups/pub/read-marker", data=json.dumps({"seq": 1}), headers=bob), 415)
    mark(carol, 1, 404)  # not a member
    problem(client.put("/v1/groups/nosuch/read-marker", json={"seq": 0}, headers=bob), 404)
    assert unread(bob) == 5  # the refused ones changed nothing

"""Paging of the mailbox folders: order, cursors, limits, unread filter, uids that are never
reused, and no mail skipped or repeated while new mail keeps arriving."""

from __future__ import annotations

import re
import threading
from datetime import datetime, timezone

import pytest

from app import rules, wire
from app.store.archive import archive_mails
from app.store.models import MailboxEntry
from support import wait_until

pytestmark = pytest.mark.integration

CURSOR_RE = re.compile(r"[A-Za-z0-9._~-]+")  # URL-safe, so it goes back unescaped


def archive(sender: str, to: list[str], count: int, subject: str = "m") -> list[str]:
    """Archive ``count`` mails as the worker would (one batch, uids in this order); return their ids."""
    mails = [
        wire.Mail(rules.new_message_id(), sender, tuple(to), subject=f"{subject}{n}", body=f"body {n}",
                  sent_at=datetime.now(timezone.utc))
        for n in range(count)
    ]
    assert {o.status for o in archive_mails(mails)} == {"stored"}
    return [m.id for m in mails]


def page(client, headers, folder: str = "inbox", **params) -> dict:
    """GET one page of a folder; check the shape of the answer."""
    response = client.get(f"/v1/mailbox/{folder}", headers=headers, query_string=params)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert isinstance(body["messages"], list)
    cursor = body["next"]
    assert cursor is None or (isinstance(cursor, str) and CURSOR_RE.fullmatch(cursor)), cursor
    return body


def walk(client, headers, order: str, folder: str = "inbox", **params) -> list[list[dict]]:
    """Follow ``next`` from the first page to the end; return the pages.

    ``order`` "newest" pages with ``before`` (starting without it), "oldest" with ``after``
    (starting from ``after=0`` unless given)."""
    cursor_name = "before" if order == "newest" else "after"
    if order == "oldest":
        params.setdefault("after", 0)
    pages = []
    while True:
        body = page(client, headers, folder, **params)
        pages.append(body["messages"])
        if body["next"] is None:
            return pages
        assert body["messages"], "a page that has a next cursor is not empty"
        assert len(pages) < 5000, "paging does not end"
        params[cursor_name] = body["next"]


def uids(pages: list[list[dict]]) -> list[list[int]]:
    """Return the uids of each page."""
    return [[mail["uid"] for mail in messages] for messages in pages]


# -- order, cursors and limits --------------------------------------------------------------


def test_newest_first_by_default_with_a_before_cursor(client, people):
    ids = archive("alice", ["bob"], 7)
    first = page(client, people["bob"], limit=3)
    assert [m["uid"] for m in first["messages"]] == [7, 6, 5]
    assert [m["id"] for m in first["messages"]] == ids[::-1][:3]
    assert isinstance(first["next"], str)
    second = page(client, people["bob"], limit=3, before=first["next"])
    assert [m["uid"] for m in second["messages"]] == [4, 3, 2]
    third = page(client, people["bob"], limit=3, before=second["next"])
    assert [m["uid"] for m in third["messages"]] == [1] and third["next"] is None
    assert uids(walk(client, people["bob"], "newest", limit=3)) == [[7, 6, 5], [4, 3, 2], [1]]


def test_oldest_first_with_after(client, people):
    archive("alice", ["bob"], 7)
    assert uids(walk(client, people["bob"], "oldest", limit=3)) == [[1, 2, 3], [4, 5, 6], [7]]
    # after=<uid> starts just above that uid.
    assert uids(walk(client, people["bob"], "oldest", limit=3, after=4)) == [[5, 6, 7]]
    assert uids(walk(client, people["bob"], "oldest", limit=2, after=6)) == [[7]]
    for beyond in (7, 8, 10**12):
        assert page(client, people["bob"], after=beyond) == {"messages": [], "next": None}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_before_a_uid(client, people):
    archive("alice", ["bob"], 7)
    assert uids(walk(client, people["bob"], "newest", before=5)) == [[4, 3, 2, 1]]
    assert uids(walk(client, people["bob"], "newest", before=2, limit=1)) == [[1]]
    assert uids(walk(client, people["bob"], "newest", before=10**12)) == [[7, 6, 5, 4, 3, 2, 1]]
    for nothing_below in (1, 0):
        assert page(client, people["bob"], before=nothing_below) == {"messages": [], "next": None}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_next_is_null_exactly_when_nothing_is_left(client, people):
    assert page(client, people["bob"]) == {"messages": [], "next": None}
    archive("alice", ["bob"], 6)
    # A last page that is exactly full still says nothing is left (no empty page to fetch).
    assert uids(walk(client, people["bob"], "newest", limit=3)) == [[6, 5, 4], [3, 2, 1]]
    assert uids(walk(client, people["bob"], "oldest", limit=3)) == [[1, 2, 3], [4, 5, 6]]
    assert page(client, people["bob"], limit=6)["next"] is None
    assert page(client, people["bob"], limit=5)["next"] is not None
    assert page(client, people["bob"], limit=5, after=0)["next"] is not None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("limit", [1, 2, 4, 9, 10, 11])
def test_limit_is_honoured(client, people, limit):
    archive("alice", ["bob"], 10)
    for order in ("newest", "oldest"):
        pages = walk(client, people["bob"], order, limit=limit)
        assert all(len(p) == limit for p in pages[:-1]) and 1 <= len(pages[-1]) <= limit
        flat = [uid for p in uids(pages) for uid in p]
        assert flat == (list(range(10, 0, -1)) if order == "newest" else list(range(1, 11)))


def test_default_limit_is_50_and_at_most_200(client, people):
    archive("alice", ["bob"], 205)
    default = page(client, people["bob"])
    assert len(default["messages"]) == 50 and default["next"] is not None
    assert [m["uid"] for m in default["messages"]] == list(range(205, 155, -1))
    for huge in (201, 100_000):
        clamped = page(client, people["bob"], limit=huge)
        assert len(clamped["messages"]) == 200 and clamped["next"] is not None
        rest = page(client, people["bob"], limit=huge, before=clamped["next"])
        assert [m["uid"] for m in rest["messages"]] == [5, 4, 3, 2, 1] and rest["next"] is None
    assert len(page(client, people["bob"], limit=200, after=0)["messages"]) == 200
    assert uids(walk(client, people["bob"], "oldest", limit=100_000)) == [list(range(1, 201)), list(range(201, 206))]


def test_unread_only_pages(client, people):
    ids = archive("alice", ["bob"], 10)
    for uid in (2, 3, 5, 8):
        assert client.put(f"/v1/messages/{ids[uid - 1]}/read", headers=people["bob"]).status_code == 204
    bob = people["bob"]
    assert uids(walk(client, bob, "newest", limit=2, unread="true")) == [[10, 9], [7, 6], [4, 1]]
    assert uids(walk(client, bob, "oldest", limit=2, unread="true")) == [[1, 4], [6, 7], [9, 10]]
    assert uids(walk(client, bob, "oldest", limit=3, unread="true", after=4)) == [[6, 7, 9], [10]]
    assert all(not m["read"] for p in walk(client, bob, "newest", limit=4, unread="true") for m in p)
    # Without the filter, the read ones are there too.
    assert [m["uid"] for m in page(client, bob, limit=50)["messages"]] == list(range(10, 0, -1))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sent_folder_pages_with_its_own_uids(client, people):
    to_carol = archive("alice", ["carol"], 3)
    to_bob = archive("alice", ["bob"], 5)
    alice = people["alice"]
    pages = walk(client, alice, "newest", folder="sent", limit=3)
    assert uids(pages) == [[8, 7, 6], [5, 4, 3], [2, 1]]
    assert [m["id"] for p in pages for m in p] == (to_carol + to_bob)[::-1]
    assert all(m["read"] and m["from"] == "alice" for p in pages for m in p)
    assert uids(walk(client, alice, "oldest", folder="sent", limit=5)) == [[1, 2, 3, 4, 5], [6, 7, 8]]
    # Each folder numbers its own mails.
    assert uids(walk(client, people["bob"], "oldest")) == [[1, 2, 3, 4, 5]]
    assert uids(walk(client, people["carol"], "oldest")) == [[1, 2, 3]]
    assert page(client, alice)["messages"] == []  # alice's inbox is empty


def test_uids_are_never_reused_and_deletes_do_not_disturb_paging(client, people):
    bob = people["bob"]
    ids = archive("alice", ["bob"], 5)
    for uid in (5, 3):  # the newest one included
        assert client.delete(f"/v1/messages/{ids[uid - 1]}", headers=bob).status_code == 204
    newer = archive("alice", ["bob"], 1)
    assert uids(walk(client, bob, "newest")) == [[6, 4, 2, 1]]
    assert client.get(f"/v1/messages/{newer[0]}", headers=bob).get_json()["uid"] == 6

    # Deleting the mail a cursor points at, mid-walk, neither skips nor repeats anything.
    first = page(client, bob, limit=2)
    assert [m["uid"] for m in first["messages"]] == [6, 4]
    assert client.delete(f"/v1/messages/{ids[3]}", headers=bob).status_code == 204  # uid 4
    assert [m["uid"] for m in page(client, bob, limit=2, before=first["next"])["messages"]] == [2, 1]
    forward = page(client, bob, limit=2, after=0)
    assert [m["uid"] for m in forward["messages"]] == [1, 2]
    assert client.delete(f"/v1/messages/{ids[1]}", headers=bob).status_code == 204  # uid 2
    assert [m["uid"] for m in page(client, bob, limit=2, after=forward["next"])["messages"]] == [6]

    # The sender's copies are numbered in their own folder, untouched by bob's deletes.
    assert uids(walk(client, people["alice"], "oldest", folder="sent")) == [[1, 2, 3, 4, 5, 6]]
    # And a delete of everything still leaves the numbering where it was.
    for message_id in (ids[0], newer[0]):
        assert client.delete(f"/v1/messages/{message_id}", headers=bob).status_code == 204
    assert page(client, bob) == {"messages": [], "next": None}
    archive("alice", ["bob"], 1)
    assert uids(walk(client, bob, "newest")) == [[7]]


# -- paging while mail keeps arriving ------------------------------------------------------------


def test_paging_never_skips_or_repeats_while_mail_arrives(app, client, people, worker):
    """A reader walks bob's inbox in both orders, again and again, while alice keeps sending
    to bob through the API and the worker archives. Every walk is checked:

    - newest first (``before``): strictly decreasing uids, every uid from the first page's
      top down to 1 (so nothing that existed when the walk began is missed), none twice;
    - oldest first (``after``): 1, 2, 3 … without a gap up to the end, which is at least
      what existed when the walk began;
    - a uid always names the same mail.
    At the end, both orders give exactly the mails sent."""
    total = 120
    sent_ids: list[str] = []
    started, done = threading.Event(), threading.Event()
    errors: list[str] = []

    def send_all() -> None:
        sender = app.test_client()
        try:
            started.wait(10)
            for n in range(total):
                response = sender.post("/v1/messages", json={"to": ["bob"], "subject": f"n{n}", "body": "b"},
                                       headers=people["alice"])
                if response.status_code != 202:
                    errors.append(f"send {n}: {response.status_code} {response.get_json()}")
                    return
                sent_ids.append(response.get_json()["id"])
        finally:
            done.set()

    def existing_uids() -> set[int]:
        query = MailboxEntry.select(MailboxEntry.uid).where(
            (MailboxEntry.owner == "bob") & (MailboxEntry.folder == "inbox"))
        return {row.uid for row in query}

    id_of: dict[int, str] = {}

    def check_ids(pages: list[list[dict]]) -> None:
        for mail in (m for p in pages for m in p):
            assert id_of.setdefault(mail["uid"], mail["id"]) == mail["id"], f"uid {mail['uid']} changed its mail"

    bob = people["bob"]
    thread = threading.Thread(target=send_all, name="sender")
    thread.start()
    walks_while_sending = {"newest": 0, "oldest": 0}
    grew = 0
    try:
        started.set()
        order = "newest"
        while not done.is_set():
            before = existing_uids()
            pages = walk(client, bob, order, limit=7)
            seen = [uid for p in uids(pages) for uid in p]
            check_ids(pages)
            if order == "newest":
                assert seen == sorted(set(seen), reverse=True), f"not strictly newest first: {seen}"
                if seen:
                    assert set(seen) == set(range(1, seen[0] + 1)), f"gap in a newest-first walk: {seen}"
                assert before <= set(seen), f"missed {sorted(before - set(seen))}"
            else:
                assert seen == list(range(1, len(seen) + 1)), f"gap or repeat in an oldest-first walk: {seen}"
                assert before <= set(seen), f"missed {sorted(before - set(seen))}"
            grew += len(existing_uids()) > len(before)
            if not done.is_set():
                walks_while_sending[order] += 1
            order = "oldest" if order == "newest" else "newest"
    finally:
        thread.join(60)
    assert not errors, errors
    assert len(sent_ids) == total
    assert min(walks_while_sending.values()) >= 2 and grew >= 2, (walks_while_sending, grew)

    wait_until(lambda: len(existing_uids()) == total, what="every mail archived")
    newest = walk(client, bob, "newest", limit=7)
    oldest = walk(client, bob, "oldest", limit=7)
    check_ids(newest)
    check_ids(oldest)
    assert [uid for p in uids(newest) for uid in p] == list(range(total, 0, -1))
    assert [uid for p in uids(oldest) for uid in p] == list(range(1, total + 1))
    assert sorted(m["id"] for p in oldest for m in p) == sorted(sent_ids)

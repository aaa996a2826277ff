"""Archive a batch of group posts in one transaction, numbering each group's posts in commit order."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from datetime import timezone
from typing import Sequence

from app import wire
from app.store.archive import DUPLICATE, STORED, Outcome
from app.store.models import Group, Membership, Post, utcnow

INSERT_CHUNK = 100


def stored_post(row: Post) -> wire.Post:
    """Return the wire form of an archived post (with its ``seq``)."""
    return wire.Post(row.id, row.group, row.sender, row.body, row.subject, row.topic, row.in_reply_to,
                     row.sent_at.replace(tzinfo=timezone.utc), row.seq)


def _reserve_seqs(database, wanted: Counter) -> dict[str, int]:
    """Take ``n`` sequence numbers from each group; return the first of each range.

    The row lock taken by the UPDATE is held until commit, so a later seq of a group can
    never commit before an earlier one: a reader paging with ``after=<seq>`` skips nothing,
    however many workers write. Groups are locked in name order so workers never deadlock.
    """
    first = {}
    for group in sorted(wanted):
        cursor = database.execute_sql(
            'UPDATE "group" SET high_seq = high_seq + %s WHERE name = %s RETURNING high_seq'.replace(
                "%s", database.param
            ),
            (wanted[group], group),
        )
        row = cursor.fetchone()
        first[group] = row[0] - wanted[group] + 1
    return first


def archive_posts(posts: Sequence[wire.Post]) -> list[Outcome]:
    """Store ``posts`` idempotently; return per post its outcome, whose value is the numbered post."""
    database = Post._meta.database
    with database.atomic():
        ids = list({p.id for p in posts})
        known = {row.id: row for row in Post.select().where(Post.id.in_(ids))}
        groups = {p.group for p in posts}
        existing_groups = {g.name for g in Group.select(Group.name).where(Group.name.in_(list(groups)))}
        members = defaultdict(set)
        query = Membership.select(Membership.group, Membership.username).where(Membership.group.in_(list(groups)))
        for row in query:
            members[row.group].add(row.username)
        results: list[Outcome] = []
        accepted: list[tuple[int, wire.Post]] = []
        batch_hashes: dict[str, str] = {}
        for index, post in enumerate(posts):
            if post.id in known:
                row = known[post.id]
                same = row.content_hash == post.content_hash()
                results.append(Outcome("duplicate", value=stored_post(row)) if same else
                               Outcome("rejected", "id_conflict", f"post id {post.id} exists with other content"))
            elif post.id in batch_hashes:
                same = batch_hashes[post.id] == post.content_hash()
                results.append(DUPLICATE if same else
                               Outcome("rejected", "id_conflict", f"post id {post.id} repeated with other content"))
            elif post.group not in existing_groups:
                results.append(Outcome("rejected", "unknown_group", f"no group {post.group!r}"))
            elif post.sender not in members[post.group]:
                results.append(Outcome("rejected", "not_a_member", f"{post.sender!r} is not a member of {post.group!r}"))
            else:
                batch_hashes[post.id] = post.content_hash()
                accepted.append((index, post))
                results.append(STORED)
        if accepted:
            numbered = _store(database, [post for _, post in accepted])
            for (index, _), post in zip(accepted, numbered):
                results[index] = Outcome("stored", value=post)
    return results


def _store(database, posts: list[wire.Post]) -> list[wire.Post]:
    first = _reserve_seqs(database, Counter(p.group for p in posts))
    next_seq = dict(first)
    numbered = []
    for post in posts:
        seq = next_seq[post.group]
        next_seq[post.group] = seq + 1
        numbered.append(dataclasses.replace(post, seq=seq))
    now = utcnow()
    rows = [
        {
            "id": p.id, "group": p.group, "seq": p.seq, "topic": p.topic, "sender": p.sender,
            "subject": p.subject, "body": p.body, "in_reply_to": p.in_reply_to,
            "sent_at": p.sent_at.astimezone(timezone.utc).replace(tzinfo=None), "archived_at": now,
            "content_hash": p.content_hash(),
        }
        for p in numbered
    ]
    for start in range(0, len(rows), INSERT_CHUNK):
        Post.insert_many(rows[start : start + INSERT_CHUNK]).execute()
    return numbered

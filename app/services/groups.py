"""Use cases of discussion groups: create, list, members, post, history, read markers."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Callable

from app import rules, wire
from app.publisher import Outgoing, Publisher
from app.services import sending
from app.services.errors import Conflict, Forbidden, Invalid, NotFound
from app.store import accounts, groups
from app.store.models import Group
from app.store.post_archive import stored_post
from config import topology

VISIBILITIES = ("public", "private")


@dataclasses.dataclass(frozen=True)
class PostDraft:
    """What a member asks to post (already schema-checked by the API)."""

    body: str
    subject: str = ""
    topic: str | None = None
    in_reply_to: str | None = None


def group_json(group: Group, caller: str) -> dict:
    """Return the contract's group object, with ``unread`` for a member."""
    document = {
        "name": group.name,
        "description": group.description,
        "visibility": group.visibility,
        "owner": group.owner,
        "members": groups.member_count(group.name),
        "high_seq": group.high_seq,
    }
    membership = groups.find_membership(group.name, caller)
    document["member"] = membership is not None
    if membership is not None:
        document["unread"] = groups.unread_count(group.name, caller, membership.read_marker)
        document["read_marker"] = membership.read_marker
    return document


class GroupService:
    """Owns the rules of who may see, join, post to and manage a group."""

    def __init__(self, publisher: Publisher, limits: wire.Limits, idempotency_ttl_seconds: int) -> None:
        self.publisher = publisher
        self.limits = limits
        self.idempotency_ttl_seconds = idempotency_ttl_seconds
        # Set by the factory: subscriptions stop delivering a group to whoever lost access.
        self.on_member_removed: Callable[[str, str], None] = lambda group, username: None
        self.on_group_deleted: Callable[[str, list[str]], None] = lambda group, sids: None

    # -- visibility ---------------------------------------------------------------------------

    def visible(self, caller: str, name: str) -> Group:
        """Return the group if the caller may know it exists, else NotFound."""
        group = groups.find_group(name) if rules.is_group_name(name) else None
        if group is None or (group.visibility == "private" and groups.find_membership(name, caller) is None):
            raise NotFound("group_not_found", f"no group {name!r}")
        return group

    def _member(self, caller: str, name: str) -> Group:
        group = self.visible(caller, name)
        if groups.find_membership(name, caller) is None:
            raise Forbidden("not_a_member", f"you are not a member of {name!r}")
        return group

    # -- the group itself -----------------------------------------------------------------------

    def put(self, caller: str, name: str, description: str | None, visibility: str | None) -> tuple[Group, bool]:
        """Create a group (caller owns it) or update the given fields as its owner."""
        if not rules.is_group_name(name):
            raise Invalid("invalid_group_name", "a group name is 2-64 of a-z 0-9 _ - and starts with a letter or digit")
        if visibility is not None and visibility not in VISIBILITIES:
            raise Invalid("invalid_request", "visibility is 'public' or 'private'")
        existing = groups.find_group(name)
        if existing is None and groups.create_group(name, caller, description or "", visibility or "public"):
            return groups.find_group(name), True
        group = self.visible(caller, name)
        if group.owner != caller:
            raise Forbidden("not_owner", f"only the owner of {name!r} may change it")
        changes = {k: v for k, v in (("description", description), ("visibility", visibility)) if v is not None}
        going_private = visibility == "private" and group.visibility != "private"
        if going_private:
            self._forget_non_members(name)
        groups.update_group(name, **changes)
        if going_private:
            self._forget_non_members(name)  # whoever subscribed while it was still public
        return groups.find_group(name), False

    def _forget_non_members(self, name: str) -> None:
        """Stop delivering a group that turns private to the subscriptions of non-members."""
        for username in groups.subscribers_not_members(name):
            self.on_member_removed(name, username)

    def list(self, caller: str, after: str | None, limit: int) -> tuple[list[dict], str | None]:
        """Return a page of the groups the caller may see."""
        rows, more = groups.visible_groups(caller, after, limit)
        return [group_json(g, caller) for g in rows], (rows[-1].name if more and rows else None)

    def delete(self, caller: str, name: str) -> None:
        """Delete a group (owner only) with its posts and its place in every subscription."""
        group = self.visible(caller, name)
        if group.owner != caller:
            raise Forbidden("not_owner", f"only the owner of {name!r} may delete it")
        # Unbind first: a subscription must never outlive the group's rules.
        self.on_group_deleted(name, groups.subscriptions_with(name))
        groups.delete_group(name)

    # -- members --------------------------------------------------------------------------------

    def add_member(self, caller: str, name: str, username: str) -> bool:
        """Add a member; anyone joins a public group, only the owner adds others. True if new."""
        group = self.visible(caller, name)
        if username != caller and group.owner != caller:
            raise Forbidden("not_owner", "only the owner adds other people")
        if groups.find_membership(name, username) is not None:
            return False
        if group.visibility == "private" and group.owner != caller:
            raise Forbidden("not_owner", "only the owner adds people to a private group")
        if accounts.find_user(username) is None:
            raise NotFound("user_not_found", f"no user {username!r}")
        return groups.add_member(name, username)

    def remove_member(self, caller: str, name: str, username: str) -> None:
        """Remove a member: themself, or anyone but the owner by the owner."""
        group = self.visible(caller, name)
        if username != caller and group.owner != caller:
            raise Forbidden("not_owner", "only the owner removes other people")
        if groups.find_membership(name, username) is None:
            raise NotFound("member_not_found", f"{username!r} is not a member of {name!r}")
        if username == group.owner:
            raise Conflict("owner_cannot_leave", "the owner cannot leave; delete the group instead")
        # Unbind first, so that no post reaches the removed member's subscriptions after this.
        self.on_member_removed(name, username)
        groups.remove_member(name, username)

    # -- posts ----------------------------------------------------------------------------------

    def post(self, caller: str, name: str, draft: PostDraft, idempotency_key: str | None) -> str:
        """Publish a post to the group (members only); return its id once confirmed."""
        self._member(caller, name)
        if draft.topic is not None and not rules.is_topic(draft.topic):
            raise Invalid("invalid_topic", "a topic is 1-64 of a-z 0-9 _ - and starts with a letter or digit")
        post = wire.Post(rules.new_message_id(), name, caller, draft.body, draft.subject, draft.topic,
                         sending.reply_target(draft.in_reply_to), datetime.now(timezone.utc))
        try:
            wire.check_post_limits(post, self.limits)
        except rules.RuleError as exc:
            raise sending.limit_error(exc) from None
        if idempotency_key is not None:
            original = sending.keyed_id(caller, idempotency_key, post.content_hash(), post.id,
                                        self.idempotency_ttl_seconds)
            if original != post.id and groups.post_archived(original):
                # A retry of a post that is archived, so already on its way to subscribers
                # (the worker publishes it before its ack): publishing it again would deliver
                # it to every subscriber id a second time.
                return original
            post = dataclasses.replace(post, id=original)
        sending.publish(self.publisher, Outgoing(topology.GROUPS_EXCHANGE, topology.post_routing_key(name, post.topic),
                                                 wire.encode_post(post), post.id, wire.POST_TYPE))
        return post.id

    def history(self, caller: str, name: str, after: int, limit: int, topic: str | None) -> tuple[list[dict], str | None]:
        """Return posts above ``after`` in seq order (anyone for public groups)."""
        self.visible(caller, name)
        rows, more = groups.list_posts(name, after, limit, topic)
        return [stored_post(row).to_json() for row in rows], (str(rows[-1].seq) if more and rows else None)

    def set_read_marker(self, caller: str, name: str, seq: object) -> None:
        """Move the caller's read marker (members only)."""
        group = self.visible(caller, name)
        if groups.find_membership(name, caller) is None:
            raise NotFound("member_not_found", f"you are not a member of {name!r}")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= group.high_seq:
            raise Invalid("invalid_seq", f"seq is an integer from 0 to the group's high_seq ({group.high_seq})")
        groups.set_read_marker(name, caller, seq)

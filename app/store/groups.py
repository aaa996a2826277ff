"""Groups, memberships, read markers and the numbered history of posts."""

from __future__ import annotations

from app.store.models import Group, Membership, Post, Subscription, SubscriptionGroup


def find_group(name: str) -> Group | None:
    """Return the group called ``name``, or None."""
    return Group.get_or_none(Group.name == name)


def find_membership(group: str, username: str) -> Membership | None:
    """Return ``username``'s membership of ``group``, or None."""
    return Membership.get_or_none((Membership.group == group) & (Membership.username == username))


def create_group(name: str, owner: str, description: str, visibility: str) -> bool:
    """Create a group with its owner as first member; return False if the name exists."""
    with Group._meta.database.atomic():
        created = (
            Group.insert(name=name, owner=owner, description=description, visibility=visibility)
            .on_conflict_ignore()
            .as_rowcount()
            .execute()
        )
        if created:
            Membership.create(group=name, username=owner, read_marker=0)
        return bool(created)


def update_group(name: str, **fields: str) -> None:
    """Change the given fields of a group."""
    if fields:
        with Group._meta.database.atomic():
            Group.update(**fields).where(Group.name == name).execute()


def member_count(group: str) -> int:
    """Return how many members ``group`` has."""
    return Membership.select().where(Membership.group == group).count()


def visible_groups(username: str, after: str | None, limit: int) -> tuple[list[Group], bool]:
    """Return public groups and ``username``'s private ones, by name, and whether more follow."""
    mine = Membership.select(Membership.group).where(Membership.username == username)
    query = Group.select().where((Group.visibility == "public") | Group.name.in_(mine))
    if after is not None:
        query = query.where(Group.name > after)
    rows = list(query.order_by(Group.name).limit(limit + 1))
    return rows[:limit], len(rows) > limit


def add_member(group: str, username: str) -> bool:
    """Add a member whose read marker starts at the group's high_seq; False if already in."""
    with Group._meta.database.atomic():
        high = Group.select(Group.high_seq).where(Group.name == group).scalar() or 0
        return bool(
            Membership.insert(group=group, username=username, read_marker=high)
            .on_conflict_ignore()
            .as_rowcount()
            .execute()
        )


def remove_member(group: str, username: str) -> bool:
    """Remove a member; return whether they were one."""
    with Membership._meta.database.atomic():
        return bool(
            Membership.delete().where((Membership.group == group) & (Membership.username == username)).execute()
        )


def subscriptions_with(name: str) -> list[str]:
    """Return the subscriber ids whose groups include ``name``."""
    return [row.subscription for row in SubscriptionGroup.select().where(SubscriptionGroup.group == name)]


def subscribers_not_members(name: str) -> list[str]:
    """Return the owners of subscriptions that include ``name`` who are not members of it."""
    members = Membership.select(Membership.username).where(Membership.group == name)
    query = (
        Subscription.select(Subscription.owner)
        .join(SubscriptionGroup, on=(SubscriptionGroup.subscription == Subscription.id))
        .where((SubscriptionGroup.group == name) & Subscription.owner.not_in(members))
        .distinct()
    )
    return sorted(row.owner for row in query)


def delete_group(name: str) -> None:
    """Delete a group with its posts, memberships and place in subscriptions."""
    with Group._meta.database.atomic():
        SubscriptionGroup.delete().where(SubscriptionGroup.group == name).execute()
        Post.delete().where(Post.group == name).execute()
        Membership.delete().where(Membership.group == name).execute()
        Group.delete().where(Group.name == name).execute()


def list_posts(group: str, after: int, limit: int, topic: str | None) -> tuple[list[Post], bool]:
    """Return posts with ``seq`` above ``after`` in order, and whether more follow."""
    query = Post.select().where((Post.group == group) & (Post.seq > after))
    if topic is not None:
        query = query.where(Post.topic == topic)
    rows = list(query.order_by(Post.seq).limit(limit + 1))
    return rows[:limit], len(rows) > limit


def post_archived(post_id: str) -> bool:
    """Return whether a post with this id is archived."""
    return Post.select().where(Post.id == post_id).exists()


def unread_count(group: str, username: str, marker: int) -> int:
    """Return how many posts above ``marker`` were sent by someone other than ``username``."""
    return Post.select().where((Post.group == group) & (Post.seq > marker) & (Post.sender != username)).count()


def set_read_marker(group: str, username: str, seq: int) -> None:
    """Move a member's read marker."""
    with Membership._meta.database.atomic():
        Membership.update(read_marker=seq).where(
            (Membership.group == group) & (Membership.username == username)
        ).execute()


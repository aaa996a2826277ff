"""Discussion groups: ``/v1/groups`` (create, list, members, posts, read marker)."""

from __future__ import annotations

from flask import Blueprint, request

from app import rules
from app.api.openapi import documented
from app.api.requests import authenticated, rate_limited, caller, idempotency_key, int_param, json_body, limit_param, services
from app.api.schemas import Accepted, GroupIn, GroupOut, GroupPage, NewPost, PostPage, ReadMarker
from app.services.errors import BadRequest
from app.services.groups import PostDraft, group_json

bp = Blueprint("groups", __name__, url_prefix="/v1/groups")


@bp.put("/<name>")
@authenticated
@documented("Create a group (you own it) or, as its owner, change the fields given", body=GroupIn,
            responses={201: GroupOut, 200: GroupOut}, errors=(403, 404))
def put_group(name: str):
    """Create or update a group."""
    data = json_body(GroupIn)
    group, created = services().groups.put(caller().username, name, data.description, data.visibility)
    return group_json(group, caller().username), 201 if created else 200


@bp.get("")
@authenticated
@documented("Public groups and your private ones, by name", responses={200: GroupPage}, errors=(400,),
            query={"limit": "page size, default 50, at most 200", "after": "the `next` of the previous page"})
def list_groups():
    """Return a page of groups."""
    after = request.args.get("after")
    if after is not None and not rules.is_group_name(after):
        raise BadRequest("invalid_parameter", "'after' must be the 'next' of a previous page")
    found, cursor = services().groups.list(caller().username, after, limit_param())
    return {"groups": found, "next": cursor}


@bp.get("/<name>")
@authenticated
@documented("A group, with your unread count if you are a member", responses={200: GroupOut}, errors=(404,))
def get_group(name: str):
    """Describe a group."""
    return group_json(services().groups.visible(caller().username, name), caller().username)


@bp.delete("/<name>")
@authenticated
@documented("Delete a group with its posts (owner only)", responses={204: None}, errors=(403, 404))
def delete_group(name: str):
    """Delete a group."""
    services().groups.delete(caller().username, name)
    return "", 204


@bp.put("/<name>/members/<username>")
@authenticated
@documented("Join a public group, or (owner) add someone", responses={201: None, 200: None}, errors=(403, 404))
def add_member(name: str, username: str):
    """Add a member."""
    added = services().groups.add_member(caller().username, name, username)
    return {"group": name, "username": username}, 201 if added else 200


@bp.delete("/<name>/members/<username>")
@authenticated
@documented("Leave a group, or (owner) remove someone", responses={204: None}, errors=(403, 404, 409))
def remove_member(name: str, username: str):
    """Remove a member."""
    services().groups.remove_member(caller().username, name, username)
    return "", 204


@bp.post("/<name>/messages")
@authenticated
@documented("Post to a group (members only)", body=NewPost, responses={202: Accepted}, errors=(403, 404, 503),
            headers={"Idempotency-Key": "retries with the same key return the same id and post once"})
@rate_limited
def post(name: str):
    """Accept a post for the group."""
    key = idempotency_key()
    data = json_body(NewPost)
    draft = PostDraft(data.body, data.subject, data.topic, data.in_reply_to)
    post_id = services().groups.post(caller().username, name, draft, key)
    return {"id": post_id, "status": "accepted"}, 202


@bp.get("/<name>/messages")
@authenticated
@documented("The group's posts in seq order", responses={200: PostPage}, errors=(400, 404),
            query={"after": "a seq (default 0)", "limit": "default 50, at most 200", "topic": "only this topic"})
def history(name: str):
    """Return posts above ``after``."""
    topic = request.args.get("topic")
    if topic is not None and not rules.is_topic(topic):
        raise BadRequest("invalid_parameter", "'topic' must be a topic name")
    after = int_param("after") or 0
    posts, cursor = services().groups.history(caller().username, name, after, limit_param(), topic)
    return {"messages": posts, "next": cursor}


@bp.put("/<name>/read-marker")
@authenticated
@documented("Move your read marker; unread counts posts above it", body=ReadMarker, responses={204: None},
            errors=(404,))
def read_marker(name: str):
    """Set the caller's read marker."""
    data = json_body(ReadMarker)
    services().groups.set_read_marker(caller().username, name, data.seq)
    return "", 204

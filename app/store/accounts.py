"""Users and issued tokens in the archive."""

from __future__ import annotations

from datetime import datetime
from typing import Callable, Iterable

import peewee

from app.store.models import Token, User, utcnow

# SQL of the two lookups every send makes (token check, recipients), rendered by Peewee once
# per database class and then executed with fresh parameters: rendering it anew took ~170
# and ~100 µs per request, the queries themselves ~30 µs (bench/README.md, "Tuning").
_SQL: dict[tuple, str] = {}


def _fetch(key: tuple, build: Callable[[], peewee.Query], params: list) -> list[tuple]:
    """Run the query ``build()`` makes, as SQL cached under ``key``, with ``params`` (in the
    SQL's order: checked against Peewee's own rendering the first time)."""
    database = Token._meta.database.obj
    sql_key = (type(database), *key)
    sql = _SQL.get(sql_key)
    if sql is None:
        sql, rendered = database.get_sql_context().sql(build()).query()
        if list(rendered) != list(params):  # not the shape we expect: never cache it
            return list(database.execute_sql(sql, rendered).fetchall())
        _SQL[sql_key] = sql
    return list(database.execute_sql(sql, params).fetchall())


class UsernameTaken(Exception):
    """The username already belongs to someone."""


def create_user(username: str, display_name: str, password_hash: str) -> User:
    """Insert a user; raise UsernameTaken if the name exists."""
    try:
        with User._meta.database.atomic():
            return User.create(username=username, display_name=display_name, password_hash=password_hash)
    except peewee.IntegrityError:
        raise UsernameTaken(username) from None


def find_user(username: str) -> User | None:
    """Return the user called ``username``, or None."""
    return User.get_or_none(User.username == username)


def set_password_hash(username: str, password_hash: str) -> None:
    """Replace a user's password hash."""
    with User._meta.database.atomic():
        User.update(password_hash=password_hash).where(User.username == username).execute()


def existing_usernames(names: Iterable[str]) -> set[str]:
    """Return which of ``names`` are users."""
    wanted = list(set(names))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        query = lambda: User.select(User.username).where(User.username.in_(chunk))  # noqa: E731,B023
        found.update(row[0] for row in _fetch(("existing_usernames", len(chunk)), query, chunk))
    return found


def record_token(token_id: str, username: str, issued_at: datetime, expires_at: datetime) -> None:
    """Remember an issued token so that it can be revoked."""
    with Token._meta.database.atomic():
        Token.create(id=token_id, username=username, issued_at=issued_at, expires_at=expires_at)


def token_is_live(token_id: str, username: str) -> bool:
    """Return whether the token was issued to ``username`` and is neither revoked nor expired."""
    now = utcnow()
    query = lambda: (  # noqa: E731
        Token.select(Token.id)
        .where(
            (Token.id == token_id)
            & (Token.username == username)
            & Token.revoked_at.is_null()
            & (Token.expires_at > now)
        )
        .limit(1)
    )
    params = [Token.id.db_value(token_id), Token.username.db_value(username), Token.expires_at.db_value(now), 1]
    return bool(_fetch(("token_is_live",), query, params))


def revoke_token(token_id: str) -> None:
    """Revoke one token."""
    with Token._meta.database.atomic():
        Token.update(revoked_at=utcnow()).where((Token.id == token_id) & Token.revoked_at.is_null()).execute()


def revoke_all_tokens(username: str) -> int:
    """Revoke every live token of ``username``; return how many."""
    with Token._meta.database.atomic():
        return (
            Token.update(revoked_at=utcnow())
            .where((Token.username == username) & Token.revoked_at.is_null())
            .execute()
        )

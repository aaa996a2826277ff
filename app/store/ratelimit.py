"""Count sends per user in fixed windows, shared by every API process through the database."""

from __future__ import annotations

from app.store.models import RateCounter


def count_send(username: str, window: int) -> int:
    """Count one send of ``username`` in the window starting at ``window``; return the total."""
    database = RateCounter._meta.database
    with database.atomic():
        cursor = database.execute_sql(
            'INSERT INTO rate_counter (username, "window", count) VALUES (%s, %s, 1) '
            'ON CONFLICT (username, "window") DO UPDATE SET count = rate_counter.count + 1 '
            "RETURNING count".replace("%s", database.param),
            (username, window),
        )
        return cursor.fetchone()[0]


def forget_before(window: int) -> int:
    """Delete counters of windows older than ``window``; return how many."""
    with RateCounter._meta.database.atomic():
        return RateCounter.delete().where(RateCounter.window < window).execute()


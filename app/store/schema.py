"""Create and migrate the archive's schema (``postroom db upgrade``)."""

from __future__ import annotations

from pathlib import Path

import peewee
from playhouse.migrations import Runner

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def upgrade(database: peewee.Database) -> list[str]:
    """Apply every pending migration to ``database``; return the names applied."""
    with database.connection_context():
        return Runner(database, str(MIGRATIONS_DIR)).up()


def pending(database: peewee.Database) -> list[str]:
    """Return the names of migrations not yet applied."""
    with database.connection_context():
        return [m.name for m in Runner(database, str(MIGRATIONS_DIR)).status() if m.applied is None]

"""The ``postroom`` command: database setup and operations."""

from __future__ import annotations

import logging
import sys

import click

from app.store import maintenance, schema
from app.store.db import open_database, redact
from config.logs import configure_logging
from config.settings import Settings


@click.group()
def main() -> None:
    """Postroom administration."""
    configure_logging(Settings.from_env().log_level)


@main.group()
def db() -> None:
    """Database schema."""


@db.command()
def upgrade() -> None:
    """Create the database schema or migrate it to the newest version."""
    settings = Settings.from_env()
    database = open_database(settings.database_url)
    applied = schema.upgrade(database)
    click.echo(f"database {redact(settings.database_url)}: " + (f"applied {', '.join(applied)}" if applied else "up to date"))


@db.command()
def prune() -> None:
    """Delete idempotency keys, id claims and tokens past their lifetime."""
    settings = Settings.from_env()
    open_database(settings.database_url)
    counts = maintenance.prune(settings.idempotency_ttl_seconds)
    click.echo(", ".join(f"{name}: {count}" for name, count in counts.items()))


@db.command()
def status() -> None:
    """List migrations not yet applied (exit 1 if any)."""
    database = open_database(Settings.from_env().database_url)
    waiting = schema.pending(database)
    click.echo("\n".join(waiting) if waiting else "up to date")
    sys.exit(1 if waiting else 0)


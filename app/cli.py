"""The ``postroom`` command: database setup and operations."""

from __future__ import annotations

import json
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


@main.group()
def dead() -> None:
    """Dead letters: list, show, requeue."""


def _dead_letter_tool():
    from app.publisher import Publisher
    from app.services.deadletters import DeadLetterService

    settings = Settings.from_env()
    publisher = Publisher(settings.amqp_url, settings.publish_timeout_seconds, name="postroom-cli")
    return publisher, DeadLetterService(publisher, ())


@dead.command("list")
@click.option("--kind", type=click.Choice(["mail", "posts"]), default="mail", show_default=True)
@click.option("--limit", default=100, show_default=True)
def dead_list(kind: str, limit: int) -> None:
    """List dead letters with their reasons (they stay in the queue)."""
    publisher, tool = _dead_letter_tool()
    try:
        for letter in tool.list(kind, limit):
            click.echo(json.dumps(letter, ensure_ascii=False))
    finally:
        publisher.close()


@dead.command("show")
@click.argument("message_id")
@click.option("--kind", type=click.Choice(["mail", "posts"]), default="mail", show_default=True)
def dead_show(message_id: str, kind: str) -> None:
    """Show one dead letter with its body."""
    publisher, tool = _dead_letter_tool()
    try:
        click.echo(json.dumps(tool.show(kind, message_id), ensure_ascii=False, indent=2))
    finally:
        publisher.close()


@dead.command("requeue")
@click.option("--kind", type=click.Choice(["mail", "posts"]), default="mail", show_default=True)
@click.option("--id", "message_ids", multiple=True, help="only these message ids (repeatable)")
@click.option("--all", "everything", is_flag=True, help="every dead letter of the kind")
def dead_requeue(kind: str, message_ids: tuple[str, ...], everything: bool) -> None:
    """Send dead letters back to be archived again, once their cause is repaired."""
    if not message_ids and not everything:
        raise click.UsageError("name --id MESSAGE_ID (repeatable) or --all")
    publisher, tool = _dead_letter_tool()
    try:
        click.echo(json.dumps(tool.requeue(kind, None if everything else list(message_ids)), indent=2))
    finally:
        publisher.close()


@db.command()
def status() -> None:
    """List migrations not yet applied (exit 1 if any)."""
    database = open_database(Settings.from_env().database_url)
    waiting = schema.pending(database)
    click.echo("\n".join(waiting) if waiting else "up to date")
    sys.exit(1 if waiting else 0)


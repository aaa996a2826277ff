"""The mail archive worker: stores every mail and a copy per recipient and per sender."""

from __future__ import annotations

from collections.abc import Sequence

from app import wire
from app.store.archive import Outcome, archive_mails
from config import topology
from workers.consumer import BatchConsumer, register


@register("mail")
class MailArchiveConsumer(BatchConsumer[wire.Mail]):
    """Reads ``postroom.mail.archive``; AMQP applications may publish there too, so every
    body is validated like API input before it reaches the archive."""

    queue_name = topology.MAIL_ARCHIVE_QUEUE
    dead_routing_key = topology.MAIL_DEAD_ROUTING_KEY

    def parse(self, body: bytes) -> wire.Mail:
        """Parse the version-1 mail schema."""
        return wire.decode_mail(body, self.limits)

    def store(self, items: Sequence[wire.Mail]) -> list[Outcome]:
        """Archive a batch of mails in one transaction."""
        return archive_mails(items)

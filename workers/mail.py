"""The mail archive worker: stores every mail and a copy per recipient and per sender."""

from __future__ import annotations

from collections.abc import Sequence

import aio_pika.abc

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

    def decode(self, message: aio_pika.abc.AbstractIncomingMessage) -> wire.Mail:
        """Parse the version-1 mail schema."""
        limits = wire.Limits(
            self.settings.max_body_bytes, self.settings.max_subject_chars, self.settings.max_recipients
        )
        mail = wire.decode_mail(message.body, limits)
        if message.message_id is not None and message.message_id != mail.id:
            raise wire.WireError("id_mismatch", "the AMQP message_id differs from the body's id")
        self.check_sender(message, mail.sender)
        return mail

    def store(self, items: Sequence[wire.Mail]) -> list[Outcome]:
        """Archive a batch of mails in one transaction."""
        return archive_mails(items)

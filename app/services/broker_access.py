"""What a Postroom user may do on RabbitMQ, asked by RabbitMQ's HTTP auth backend.

An AMQP application logs in with its Postroom username and a bearer token as password.
It may then, and only then:

- publish mail to ``postroom.mail`` (the broker makes ``user_id`` equal the login, and the
  archive only accepts mail whose sender is that ``user_id``);
- publish posts to ``postroom.groups`` with routing key ``<group>.<topic>`` for groups it
  is a member of (topic authorisation);
- consume (read) and declare (configure) its own subscriber queues ``postroom.sub.<sid>``
  and ``postroom.sub.<sid>.dead``.

Everything else (other queues, binding, declaring, the default exchange, the posts
exchange) is refused, which the broker reports to the client as ``ACCESS_REFUSED``.
"""

from __future__ import annotations

from dataclasses import dataclass

from app import rules
from app.services.accounts import AccountService
from app.services.errors import Unauthorized
from app.store import accounts, groups, subscriptions
from config import topology

ALLOW, DENY = "allow", "deny"

_SUB_PREFIX = "postroom.sub."


@dataclass(frozen=True)
class BrokerAccess:
    """Answers the four questions of ``rabbitmq_auth_backend_http``."""

    accounts: AccountService
    vhost: str = "/"

    def user(self, username: str, password: str) -> str:
        """May ``username`` log in with this token as password? Never as a service user."""
        if username in self.accounts.reserved:
            return DENY
        try:
            caller = self.accounts.authenticate(password)
        except Unauthorized:
            return DENY
        return ALLOW if caller.username == username else DENY

    def vhost_access(self, username: str, vhost: str) -> str:
        """May ``username`` use ``vhost`` (Postroom's only)?"""
        return ALLOW if vhost == self.vhost and accounts.find_user(username) is not None else DENY

    def resource(self, username: str, vhost: str, kind: str, name: str, permission: str) -> str:
        """May ``username`` configure/write/read the exchange or queue ``name``?"""
        if vhost != self.vhost:
            return DENY
        if kind == "exchange":
            writable = (topology.MAIL_EXCHANGE, topology.GROUPS_EXCHANGE)
            return ALLOW if permission == "write" and name in writable else DENY
        if kind == "queue" and permission in ("read", "configure"):
            return ALLOW if _owns_queue(username, name) else DENY
        return DENY

    def topic(self, username: str, vhost: str, exchange: str, permission: str, routing_key: str) -> str:
        """May ``username`` publish to ``exchange`` with ``routing_key``?"""
        if vhost != self.vhost or permission != "write":
            return DENY
        if exchange == topology.GROUPS_EXCHANGE:
            group, _, topic = routing_key.partition(".")
            well_formed = rules.is_group_name(group) and (topic == topology.NO_TOPIC or rules.is_topic(topic))
            member = well_formed and groups.find_membership(group, username) is not None
            return ALLOW if member else DENY
        return DENY


def _owns_queue(username: str, queue: str) -> bool:
    if not queue.startswith(_SUB_PREFIX):
        return False
    sid = queue[len(_SUB_PREFIX):]
    # The queue of a subscriber id ending in ".dead" before the dead letters of the id without it.
    found = subscriptions.find_subscription(sid) if rules.is_subscriber_id(sid) else None
    if found is None and sid.endswith(".dead"):
        sid = sid[: -len(".dead")]
        found = subscriptions.find_subscription(sid) if rules.is_subscriber_id(sid) else None
    return found is not None and found.owner == username

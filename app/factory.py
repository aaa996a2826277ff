"""Build the Flask app: settings, database, services, blueprints, error handlers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from argon2 import PasswordHasher
from flask import Flask

from app import wire
from app.publisher import Publisher
from app.services.accounts import AccountService
from app.services.broker_access import BrokerAccess
from app.services.deadletters import DeadLetterService
from app.services.groups import GroupService
from app.services.mail import MailService
from app.services.ratelimit import SendLimiter
from app.services.remote_auth import RemoteAccountService
from app.services.subscriptions import SubscriptionService
from app.services.tokens import TokenSigner
from app.store.db import open_database
from config.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """What the views use; one instance per app, shared by its threads."""

    settings: Settings
    publisher: Publisher
    accounts: AccountService
    mail: MailService
    groups: GroupService
    subscriptions: SubscriptionService
    broker_access: BrokerAccess
    limiter: SendLimiter
    deadletters: DeadLetterService
    needs_broker: bool = True


def build_services(settings: Settings, publisher: Publisher | None = None) -> Services:
    """Wire the services for ``settings`` (no connection is opened here)."""
    publisher = publisher or Publisher(settings.amqp_url, settings.publish_timeout_seconds)
    signer = TokenSigner(settings.secret_keys, settings.token_ttl_seconds, settings.token_clock_skew_seconds)
    hasher = PasswordHasher(time_cost=settings.password_time_cost, memory_cost=settings.password_memory_cost_kib)
    reserved = settings.trusted_publishers()
    if settings.auth_url:
        accounts = RemoteAccountService(settings.auth_url, signer, hasher, reserved)
    else:
        accounts = AccountService(signer, hasher, reserved)
    limits = wire.Limits(settings.max_body_bytes, settings.max_subject_chars, settings.max_recipients)
    groups = GroupService(publisher, limits, settings.idempotency_ttl_seconds)
    subscriptions = SubscriptionService(publisher, groups, settings.lease_seconds)
    # Losing access to a group (removed, or the group deleted) unbinds it from subscriptions.
    groups.on_member_removed = subscriptions.forget_group_for
    groups.on_group_deleted = subscriptions.forget_group
    return Services(
        settings=settings,
        publisher=publisher,
        accounts=accounts,
        mail=MailService(publisher, limits, settings.idempotency_ttl_seconds),
        groups=groups,
        subscriptions=subscriptions,
        broker_access=BrokerAccess(accounts, amqp_vhost(settings.amqp_url)),
        limiter=SendLimiter(settings.send_rate_limit, settings.send_rate_window_seconds),
        deadletters=DeadLetterService(publisher, settings.admin_users),
    )


def amqp_vhost(url: str) -> str:
    """Return the virtual host named by an AMQP URL (``/`` when none)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def create_app(settings: Settings | None = None, parts: str = "all") -> Flask:
    """Create the API app (``parts="auth"``: only the auth service's endpoints).

    The broker connection opens on first use in each process, never here.
    """
    settings = (settings or Settings.from_env()).with_secret_keys()
    app = Flask("postroom", static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        JSON_SORT_KEYS=False,
        POSTROOM=settings,
    )
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    open_database(settings.database_url)
    app.extensions["postroom"] = build_services(settings)

    from app.api import admin, groups, health, mailbox, messages, openapi, problems, subscriptions, tokens, users
    from app.auth import rabbitmq, verify

    problems.init_app(app)
    modules = [users, tokens, verify, rabbitmq, health, openapi]
    if parts == "all":
        modules += [messages, mailbox, groups, subscriptions, admin]
    else:
        app.extensions["postroom"].needs_broker = False
    for module in modules:
        app.register_blueprint(module.bp)
    return app

"""The auth service: users, passwords, tokens, and the broker's questions about them.

Mounted in the API app, and runnable as its own process::

    gunicorn -c config/gunicorn.py 'app.auth:create_app()'

It serves ``/v1/users``, ``/v1/tokens``, ``/auth/v1/verify`` (token checks for API
processes configured with ``POSTROOM_AUTH_URL``) and ``/auth/rabbitmq/*`` (RabbitMQ's
HTTP auth backend).
"""

from __future__ import annotations

from flask import Flask

from config.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Create the stand-alone auth service app."""
    from app.factory import create_app as create_full_app

    return create_full_app(settings, parts="auth")

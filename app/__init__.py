"""Postroom's HTTP API and auth service. ``gunicorn 'app:create_app()'`` serves it."""

from app.factory import create_app

__all__ = ["create_app"]

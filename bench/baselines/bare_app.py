"""Baseline (c): a bare Flask view returning a small JSON, run under config/gunicorn.py."""

from __future__ import annotations

from flask import Flask, request


def create_app() -> Flask:
    app = Flask("bench-bare")

    @app.post("/send")
    def send():
        request.get_json()  # parse the same 1 KiB body Postroom gets
        return {"id": "0", "status": "accepted"}, 202

    return app

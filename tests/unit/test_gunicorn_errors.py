"""Requests gunicorn rejects before the app runs still get problem+json, never HTML."""

from __future__ import annotations

import json
import socket

from config import gunicorn_errors


def test_gunicorn_error_pages_are_problem_json():
    import config.gunicorn  # noqa: F401  (loading the settings installs the writer)
    from gunicorn import util

    assert util.write_error is gunicorn_errors.write_problem
    server, client = socket.socketpair()
    with server, client:
        util.write_error(server, 431, "Request Header Fields Too Large", "Error parsing headers: 'x\u00ff'")
        head, _, body = client.recv(65536).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert b"Content-Type: application/problem+json" in head and b"Connection: close" in head
    problem = json.loads(body)
    assert problem["status"] == 431 and problem["code"] == "header_too_large" and problem["title"]
    assert int(dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])[b"Content-Length"]) == len(body)

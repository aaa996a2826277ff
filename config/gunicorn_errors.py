"""Errors gunicorn answers itself (bad request line, header too large, ...) as problem+json.

gunicorn writes an HTML page for requests it cannot parse, before the app ever sees them;
the contract says every error is ``application/problem+json``. gunicorn has no setting for
this, so its one writer of such pages is replaced when gunicorn loads ``config/gunicorn.py``.
"""

from __future__ import annotations

import json
import re

_CODES = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed",
          431: "header_too_large", 500: "internal_error", 501: "not_implemented"}


def write_problem(sock, status_int: int, reason: str, mesg: str) -> None:
    """Write a problem+json response and let gunicorn close the connection."""
    from gunicorn import util

    body = json.dumps({
        "type": "about:blank",
        "status": status_int,
        "title": reason,
        # gunicorn's message may echo the raw request; keep it short and printable.
        "detail": re.sub(r"[^\x20-\x7e]", "?", str(mesg))[:200],
        "code": _CODES.get(status_int, "bad_request"),
    }).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin1") + body)


def install() -> None:
    """Make gunicorn write problem+json instead of its HTML error page."""
    from gunicorn import util

    util.write_error = write_problem

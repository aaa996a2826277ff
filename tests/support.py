"""Small helpers the tests share (import as ``support``)."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def bearer(token: str) -> dict[str, str]:
    """Return the Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


def register(client: Any, username: str, password: str = "correct horse") -> dict[str, str]:
    """Create a user and log in; return their auth headers."""
    response = client.post("/v1/users", json={"username": username, "password": password})
    assert response.status_code == 201, response.get_json()
    response = client.post("/v1/tokens", json={"username": username, "password": password})
    assert response.status_code == 201, response.get_json()
    return bearer(response.get_json()["token"])

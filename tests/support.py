"""Small helpers the tests share (import as ``support``)."""

from __future__ import annotations

import time
import asyncio
import threading
from typing import Any, Callable

from workers.mail import MailArchiveConsumer


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


class WorkerThread:
    """A worker running on its own event loop in a thread of the test process."""

    def __init__(self, settings: Any, kind: type = MailArchiveConsumer) -> None:
        self.consumer = kind(settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="archive-worker", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.consumer.run())

    def start(self) -> "WorkerThread":
        """Start consuming."""
        self.thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        """Ask the worker to stop and wait for it."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.consumer.request_stop)
            self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop"

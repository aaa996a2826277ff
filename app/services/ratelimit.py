"""Per-user send limits: a fixed window counted in the database, so every process agrees."""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.services.errors import ServiceError
from app.store import ratelimit as store


class RateLimited(ServiceError):
    """Too many sends in the current window."""

    status = 429
    title = "Too many requests"


@dataclass(frozen=True)
class Quota:
    """Where a user stands in the current window (for the RateLimit-* headers)."""

    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        """Return the RateLimit headers of the IETF draft (and Retry-After when spent)."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if self.remaining == 0:
            headers["Retry-After"] = str(self.reset_seconds)
        return headers


class SendLimiter:
    """Allows ``limit`` sends (mail and posts together) per user per ``window_seconds``; 0 = off."""

    def __init__(self, limit: int, window_seconds: int) -> None:
        self.limit = limit
        self.window_seconds = max(1, window_seconds)

    @property
    def enabled(self) -> bool:
        """Return whether sends are limited."""
        return self.limit > 0

    def charge(self, username: str) -> Quota:
        """Count one send; raise RateLimited (429) when the window is spent."""
        now = int(time.time())
        window = now - now % self.window_seconds
        count = store.count_send(username, window)
        reset = window + self.window_seconds - now
        quota = Quota(self.limit, max(0, self.limit - count), reset)
        if count > self.limit:
            error = RateLimited("rate_limited", f"at most {self.limit} sends per {self.window_seconds} s; "
                                f"retry in {reset} s")
            error.headers = quota.headers()
            raise error
        return quota

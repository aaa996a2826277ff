"""Settings read from ``POSTROOM_*`` environment variables."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping
from urllib.parse import unquote, urlsplit

DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/"
DEFAULT_VAR_DIR = "var"


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(env.get(name, default))


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return float(env.get(name, default))


@dataclass(frozen=True)
class Settings:
    """Every tunable of Postroom, with the defaults a single machine wants."""

    amqp_url: str = DEFAULT_AMQP_URL
    database_url: str = f"sqlite:///{DEFAULT_VAR_DIR}/postroom.db"
    var_dir: str = DEFAULT_VAR_DIR
    # Newest first: the first key signs, every key verifies (rotation).
    secret_keys: tuple[str, ...] = field(default_factory=tuple)
    token_ttl_seconds: int = 24 * 3600
    token_clock_skew_seconds: int = 30
    publish_timeout_seconds: float = 5.0
    max_body_bytes: int = 256 * 1024
    max_request_bytes: int = 1024 * 1024
    max_subject_chars: int = 998
    max_recipients: int = 100
    idempotency_ttl_seconds: int = 24 * 3600
    lease_seconds: float = 30.0
    send_rate_limit: int = 0  # sends (mail + posts) per user per window; 0 = unlimited
    send_rate_window_seconds: int = 60
    # argon2id cost; tests lower it, production keeps the library's defaults.
    password_time_cost: int = 3
    password_memory_cost_kib: int = 65536
    worker_prefetch: int = 512
    worker_batch_size: int = 200
    worker_batch_wait_seconds: float = 0.005
    worker_delivery_limit: int = 10
    db_retry_max_seconds: float = 5.0
    log_level: str = "INFO"
    # Broker users whose messages may carry any sender (Postroom's own processes).
    # Empty: the user of amqp_url.
    service_users: tuple[str, ...] = ()
    # Users who may use the operator endpoints (/v1/admin/...).
    admin_users: tuple[str, ...] = ()
    # Base URL of a separate auth service that checks tokens (empty: in-process).
    auth_url: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from ``POSTROOM_*`` variables (``os.environ`` by default)."""
        env = os.environ if env is None else env
        var_dir = env.get("POSTROOM_VAR_DIR", DEFAULT_VAR_DIR)
        keys = tuple(k.strip() for k in env.get("POSTROOM_SECRET_KEYS", "").split(",") if k.strip())
        return cls(
            amqp_url=env.get("POSTROOM_AMQP_URL", DEFAULT_AMQP_URL),
            database_url=env.get("POSTROOM_DATABASE_URL", f"sqlite:///{var_dir}/postroom.db"),
            var_dir=var_dir,
            secret_keys=keys,
            token_ttl_seconds=_int(env, "POSTROOM_TOKEN_TTL", cls.token_ttl_seconds),
            token_clock_skew_seconds=_int(env, "POSTROOM_TOKEN_CLOCK_SKEW", cls.token_clock_skew_seconds),
            publish_timeout_seconds=_float(env, "POSTROOM_PUBLISH_TIMEOUT", cls.publish_timeout_seconds),
            max_body_bytes=_int(env, "POSTROOM_MAX_BODY_BYTES", cls.max_body_bytes),
            max_request_bytes=_int(env, "POSTROOM_MAX_REQUEST_BYTES", cls.max_request_bytes),
            max_subject_chars=_int(env, "POSTROOM_MAX_SUBJECT_CHARS", cls.max_subject_chars),
            max_recipients=_int(env, "POSTROOM_MAX_RECIPIENTS", cls.max_recipients),
            idempotency_ttl_seconds=_int(env, "POSTROOM_IDEMPOTENCY_TTL", cls.idempotency_ttl_seconds),
            lease_seconds=_float(env, "POSTROOM_LEASE_SECONDS", cls.lease_seconds),
            send_rate_limit=_int(env, "POSTROOM_SEND_RATE_LIMIT", cls.send_rate_limit),
            send_rate_window_seconds=_int(env, "POSTROOM_SEND_RATE_WINDOW", cls.send_rate_window_seconds),
            password_time_cost=_int(env, "POSTROOM_PASSWORD_TIME_COST", cls.password_time_cost),
            password_memory_cost_kib=_int(env, "POSTROOM_PASSWORD_MEMORY_KIB", cls.password_memory_cost_kib),
            worker_prefetch=_int(env, "POSTROOM_WORKER_PREFETCH", cls.worker_prefetch),
            worker_batch_size=_int(env, "POSTROOM_WORKER_BATCH_SIZE", cls.worker_batch_size),
            worker_batch_wait_seconds=_float(env, "POSTROOM_WORKER_BATCH_WAIT", cls.worker_batch_wait_seconds),
            worker_delivery_limit=_int(env, "POSTROOM_WORKER_DELIVERY_LIMIT", cls.worker_delivery_limit),
            db_retry_max_seconds=_float(env, "POSTROOM_DB_RETRY_MAX", cls.db_retry_max_seconds),
            log_level=env.get("POSTROOM_LOG_LEVEL", cls.log_level),
            auth_url=env.get("POSTROOM_AUTH_URL", ""),
            admin_users=tuple(u.strip() for u in env.get("POSTROOM_ADMIN_USERS", "").split(",") if u.strip()),
            service_users=tuple(u.strip() for u in env.get("POSTROOM_SERVICE_USERS", "").split(",") if u.strip()),
        )

    def with_secret_keys(self) -> "Settings":
        """Return settings whose keys are set, creating ``var/secret_key`` on first use."""
        if self.secret_keys:
            return self
        path = Path(self.var_dir) / "secret_key"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # O_EXCL: when several gunicorn workers race, exactly one writes the key.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_urlsafe(48))
        key = ""
        for _ in range(50):  # the writer may not have flushed yet
            key = path.read_text().strip()
            if key:
                break
            import time

            time.sleep(0.01)
        return replace(self, secret_keys=(key,))

    def trusted_publishers(self) -> frozenset[str]:
        """Return the broker users allowed to publish messages on behalf of any sender."""
        if self.service_users:
            return frozenset(self.service_users)
        return frozenset({unquote(urlsplit(self.amqp_url).username or "guest")})

    def replace(self, **changes: object) -> "Settings":
        """Return a copy with ``changes`` applied."""
        return replace(self, **changes)

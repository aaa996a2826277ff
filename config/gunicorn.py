"""gunicorn settings for ``make run`` and the Procfile (override with GUNICORN_CMD_ARGS)."""

import multiprocessing
import os

from config import gunicorn_errors

# Requests gunicorn rejects itself get problem+json too, never an HTML page.
gunicorn_errors.install()

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# gthread: each process runs several request threads that share one broker connection
# (the publisher's), so many publishes are in flight per process at once.
worker_class = "gthread"
workers = int(os.environ.get("POSTROOM_WEB_PROCESSES", multiprocessing.cpu_count() + 1))
threads = int(os.environ.get("POSTROOM_WEB_THREADS", 16))
# A publish waits at most the publish timeout (5 s); never let gunicorn kill a request first.
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = None
# gunicorn's control socket has one default path per user: the web and auth processes of
# `make run` would fight over it, and nothing here uses it.
control_socket_disable = True
errorlog = "-"
loglevel = os.environ.get("POSTROOM_LOG_LEVEL", "info").lower()
# The publisher connects lazily in each worker after fork, so preload is safe (case C6).
preload_app = os.environ.get("POSTROOM_PRELOAD", "0") == "1"


def post_fork(server, worker):
    """Configure logging in each worker process."""
    from config.logs import configure_logging

    configure_logging(os.environ.get("POSTROOM_LOG_LEVEL", "INFO"))


def post_worker_init(worker):
    """Open this process's broker connection now rather than on its first request."""
    services = getattr(worker.wsgi, "extensions", {}).get("postroom")
    if services is not None and services.needs_broker:
        services.publisher.start()

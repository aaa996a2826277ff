"""``python -m workers <name>``: run one registered worker until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from app.store.db import open_database
from config.logs import configure_logging
from config.settings import Settings
from workers import mail  # noqa: F401  (registers the mail worker)
from workers.consumer import REGISTRY

logger = logging.getLogger("workers")


async def _serve(name: str, settings: Settings) -> None:
    consumer = REGISTRY[name](settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, consumer.request_stop)
    await consumer.run()
    logger.info("worker %s stopped: %s", name, consumer.stats)


def main(argv: list[str] | None = None) -> int:
    """Run the worker named on the command line."""
    parser = argparse.ArgumentParser(prog="python -m workers", description="Run a Postroom worker.")
    parser.add_argument("name", choices=sorted(REGISTRY), help="which worker to run")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    open_database(settings.database_url)
    asyncio.run(_serve(args.name, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

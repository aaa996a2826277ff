"""``python -m workers <name>...``: run registered workers in one process until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from app.store.db import open_database
from config.logs import configure_logging
from config.settings import Settings
from workers import leases, mail, posts  # noqa: F401  (they register themselves)
from workers.consumer import REGISTRY

logger = logging.getLogger("workers")


async def _serve(names: list[str], settings: Settings) -> None:
    workers = {name: REGISTRY[name](settings) for name in names}
    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        for worker in workers.values():
            worker.request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_all)
    await asyncio.gather(*(worker.run() for worker in workers.values()))
    for name, worker in workers.items():
        logger.info("worker %s stopped: %s", name, worker.stats)


def main(argv: list[str] | None = None) -> int:
    """Run the worker named on the command line."""
    parser = argparse.ArgumentParser(prog="python -m workers", description="Run a Postroom worker.")
    parser.add_argument("names", nargs="+", choices=sorted(REGISTRY), metavar="name",
                        help=f"which workers to run in this process: {', '.join(sorted(REGISTRY))}")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    open_database(settings.database_url)
    asyncio.run(_serve(list(dict.fromkeys(args.names)), settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

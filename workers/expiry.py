"""The expiry worker: `python -m workers.expiry [-c config.toml]`.

Settles prompts soon after they expire unanswered (pushauth/expiry.py), so `ignored_prompts` alerts and
the lockout count do not wait for the user's next sign-in. Several may run; each prompt is claimed once.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import structlog

from pushauth.alerts.store import AlertStore
from pushauth.challenges import ASSERTION_LIFE_S
from pushauth.config import load_settings
from pushauth.errors import PushAuthError
from pushauth.expiry import ExpirySweeper
from pushauth.logs import configure
from pushauth.store import KeySpace, open_redis

log = structlog.get_logger("workers.expiry")


async def run(config: Path | None) -> None:
    settings = load_settings(config)
    configure(settings.logging.level, settings.logging.format)
    if settings.embedded:
        raise PushAuthError("the expiry worker needs store.redis_url: with the embedded store the server "
                            "runs it itself")
    redis = open_redis(settings.store)
    keyspace = KeySpace(settings.store.prefix)
    store = AlertStore(redis, keyspace, settings, assertion_life_s=ASSERTION_LIFE_S)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("expiry_worker_started")
    try:
        await ExpirySweeper(redis, keyspace, store).run(stop)
    finally:
        await redis.aclose()
        log.info("expiry_worker_stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.expiry", description="pushauth expiry worker")
    parser.add_argument("-c", "--config", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        asyncio.run(run(args.config))
    except PushAuthError as exc:
        print(f"expiry worker: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

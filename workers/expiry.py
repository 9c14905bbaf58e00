"""The expiry worker: `python -m workers.expiry [-c config.toml] [--name N] [--metrics-port P]`.

Settles prompts soon after they expire unanswered (pushauth/challenges/expiry.py), so `ignored_prompts` alerts
and
the lockout count do not wait for the user's next sign-in. Several may run; each prompt is claimed once.
"""

from __future__ import annotations

import asyncio
import sys

import structlog

from pushauth.alerts.store import AlertStore
from pushauth.challenges.expiry import ExpirySweeper
from pushauth.challenges.service import ASSERTION_LIFE_S
from pushauth.config import load_settings
from pushauth.errors import PushAuthError
from pushauth.logs import configure
from pushauth.store import KeySpace, open_redis
from workers._common import WorkerArgs, heartbeat, main_for, stop_on_signals

log = structlog.get_logger("workers.expiry")


async def run(args: WorkerArgs) -> None:
    settings = load_settings(args.config)
    configure(settings.logging.level, settings.logging.format)
    if settings.embedded:
        raise PushAuthError("the expiry worker needs store.redis_url: with the embedded store the server "
                            "runs it itself")
    redis = open_redis(settings.store)
    keyspace = KeySpace(settings.store.prefix)
    store = AlertStore(redis, keyspace, settings, assertion_life_s=ASSERTION_LIFE_S)
    stop = stop_on_signals()
    log.info("expiry_worker_started", name=args.name)
    try:
        await asyncio.gather(ExpirySweeper(redis, keyspace, store).run(stop),
                             heartbeat(redis, keyspace, "expiry", args.name, stop))
    finally:
        await redis.aclose()
        log.info("expiry_worker_stopped", name=args.name)


def main(argv: list[str] | None = None) -> int:
    return main_for("expiry", "pushauth expiry worker", run, argv)


if __name__ == "__main__":
    sys.exit(main())

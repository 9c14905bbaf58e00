"""The alert delivery worker: `python -m workers.alerts [-c config.toml] [--name N] [--metrics-port P]`.

Consumes the alert stream (pushauth/alerts/delivery.py) and delivers every alert to every configured sink
([[alerts.sinks]]), at least once, retrying on the hours-long schedule in `alerts.retry_schedule_s`.
Also sweeps the per-user outboxes for alerts a crashed server wrote but did not announce
(pushauth/alerts/store.py). Run one or more, anywhere: they share the stream through a consumer group and
take over a crashed worker's entries. On SIGTERM it stops reading, finishes the deliveries in flight and
exits; anything unfinished stays pending and is reclaimed.
"""

from __future__ import annotations

import asyncio
import sys

import structlog

from pushauth.alerts.delivery import AlertDelivery, sweep_loop
from pushauth.alerts.sinks import close_sinks, open_sinks
from pushauth.alerts.store import AlertStore
from pushauth.challenges.service import ASSERTION_LIFE_S
from pushauth.config import load_settings
from pushauth.errors import PushAuthError
from pushauth.logs import configure
from pushauth.store import KeySpace, open_redis
from workers._common import WorkerArgs, heartbeat, main_for, stop_on_signals

log = structlog.get_logger("workers.alerts")


async def run(args: WorkerArgs) -> None:
    settings = load_settings(args.config)
    configure(settings.logging.level, settings.logging.format)
    if settings.embedded:
        raise PushAuthError("the alert worker needs store.redis_url: with the embedded store the server "
                            "runs the alert worker itself")
    sinks = open_sinks(settings.alerts.sinks, console_url=settings.alerts.console_url)
    if not sinks:
        raise PushAuthError("no alert sink is configured ([[alerts.sinks]])")
    redis = open_redis(settings.store)
    keyspace = KeySpace(settings.store.prefix)
    store = AlertStore(redis, keyspace, settings, assertion_life_s=ASSERTION_LIFE_S)
    delivery = AlertDelivery(redis, keyspace, store, settings.alerts, sinks,
                             {s.name: s for s in settings.alerts.sinks})
    stop = stop_on_signals()
    log.info("alert_worker_started", consumer=args.name, sinks=sorted(sinks))
    try:
        await asyncio.gather(delivery.consumer_for(args.name).run(stop),
                             sweep_loop(store, settings.alerts.sweep_interval_s, stop),
                             heartbeat(redis, keyspace, "alerts", args.name, stop))
    finally:
        await close_sinks(sinks)
        await redis.aclose()
        log.info("alert_worker_stopped", consumer=args.name)


def main(argv: list[str] | None = None) -> int:
    return main_for("alerts", "pushauth alert delivery worker", run, argv)


if __name__ == "__main__":
    sys.exit(main())

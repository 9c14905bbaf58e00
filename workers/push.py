"""The push worker: `python -m workers.push [-c config.toml] [--name N] [--metrics-port P]`.

Consumes the push stream (see pushauth/push/dispatch.py and pushauth/store/streams.py). Run as many as the
load needs, on any hosts: they share the stream through a consumer group, and a crashed worker's entries
are reclaimed by the others. On SIGTERM it stops reading, finishes the pushes in flight, stores their
outcomes and acks, and exits; what it had not finished stays pending and is reclaimed. It beats like the
other workers, so the servers' /readyz and `pushauth check` see it alive.
"""

from __future__ import annotations

import asyncio
import gc
import sys

import structlog

from pushauth.config import load_settings
from pushauth.errors import PushAuthError
from pushauth.logs import configure
from pushauth.push.dispatch import PushDelivery
from pushauth.push.registry import close_providers, open_providers
from pushauth.store import KeySpace, open_redis
from workers._common import WorkerArgs, heartbeat, main_for, stop_on_signals

log = structlog.get_logger("workers.push")


async def run(args: WorkerArgs) -> None:
    settings = load_settings(args.config)
    configure(settings.logging.level, settings.logging.format)
    if settings.embedded:
        raise PushAuthError("the push worker needs store.redis_url: with the embedded store the server "
                            "runs the push worker itself")
    if not settings.push.enabled:
        raise PushAuthError("no push provider is enabled ([push.fcm] or [push.apns] enabled = true)")
    # No idle-connection PING before commands: the worker sends a few pipelines per batch of pushes, and a
    # connection Redis closed (a restart) is replaced when the pool hands it out (see open_redis).
    redis = open_redis(settings.store, health_check_interval_s=0)
    providers = open_providers(settings.push)
    keyspace = KeySpace(settings.store.prefix)
    delivery = PushDelivery(redis, keyspace, settings.push, settings.server.base_url, providers)
    stop = stop_on_signals()
    consumer = delivery.consumer_for(args.name)
    # Everything alive now (the imported libraries, the clients) lives as long as the process: move it out
    # of the collector's reach, so a full collection walks only what pushes create (a full collection of
    # the ~65k objects the provider SDKs bring stopped every push for ~60 ms).
    gc.collect()
    gc.freeze()
    log.info("push_worker_started", consumer=args.name, providers=sorted(providers))
    try:
        await asyncio.gather(consumer.run(stop), heartbeat(redis, keyspace, "push", args.name, stop))
    finally:
        await close_providers(providers)
        await redis.aclose()
        log.info("push_worker_stopped", consumer=args.name)


def main(argv: list[str] | None = None) -> int:
    return main_for("push", "pushauth push worker", run, argv)


if __name__ == "__main__":
    sys.exit(main())

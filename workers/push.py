"""The push worker: `python -m workers.push [-c config.toml]`.

Consumes the push stream (see pushauth/delivery.py and pushauth/store/streams.py). Run as many as the
load needs, on any hosts: they share the stream through a consumer group, and a crashed worker's entries
are reclaimed by the others. On SIGTERM it stops reading, finishes the pushes in flight, stores their
outcomes and acks, and exits; what it had not finished stays pending and is reclaimed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import socket
import sys
from pathlib import Path

import structlog

from pushauth.config import load_settings
from pushauth.delivery import PushDelivery
from pushauth.errors import PushAuthError
from pushauth.logs import configure
from pushauth.push.registry import close_providers, open_providers
from pushauth.store import KeySpace, open_redis

log = structlog.get_logger("workers.push")


async def run(config: Path | None, name: str | None) -> None:
    settings = load_settings(config)
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
    consumer_name = name or f"{socket.gethostname()}-{os.getpid()}"
    delivery = PushDelivery(redis, KeySpace(settings.store.prefix), settings.push, settings.server.base_url,
                            providers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = delivery.consumer_for(consumer_name)
    # Everything alive now (the imported libraries, the clients) lives as long as the process: move it out
    # of the collector's reach, so a full collection walks only what pushes create (a full collection of
    # the ~65k objects the provider SDKs bring stopped every push for ~60 ms).
    gc.collect()
    gc.freeze()
    log.info("push_worker_started", consumer=consumer_name, providers=sorted(providers))
    try:
        await consumer.run(stop)
    finally:
        await close_providers(providers)
        await redis.aclose()
        log.info("push_worker_stopped", consumer=consumer_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.push", description="pushauth push worker")
    parser.add_argument("-c", "--config", type=Path, default=None)
    parser.add_argument("--name", default=None, help="consumer name (default: host-pid)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(run(args.config, args.name))
    except PushAuthError as exc:
        print(f"push worker: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

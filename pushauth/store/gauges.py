"""Queue depths and live workers as Prometheus gauges, read from Redis when /metrics is scraped, so any
instance reports the whole deployment's queues."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from pushauth.metrics import (
    REDIS_ERRORS,
    STREAM_DEAD,
    STREAM_DELAYED,
    STREAM_LAG,
    STREAM_PENDING,
    WORKERS_ALIVE,
)
from pushauth.store.connection import STORE_DOWN_ERRORS
from pushauth.store.heartbeats import live_workers
from pushauth.store.keyspace import KeySpace
from pushauth.store.streams import StreamNames

STREAMS = ("push", "alerts")


async def refresh_store_gauges(redis: aioredis.Redis, keyspace: KeySpace) -> None:
    """Queue depths and live workers, for a scrape. A Redis outage leaves the last values."""
    try:
        for name in STREAMS:
            names = StreamNames.for_(keyspace.prefix, name)
            lag = pending = 0
            if await redis.exists(names.stream):
                # No consumer group yet (no worker ever started): every entry is unread.
                lag = int(await redis.xlen(names.stream))
                groups: list[dict[str, Any]] = await redis.xinfo_groups(names.stream)
                for group in groups:
                    if group.get("name") == names.group:
                        lag = int(group.get("lag") or 0)
                        pending = int(group.get("pending") or 0)
            STREAM_LAG.labels(name).set(lag)
            STREAM_PENDING.labels(name).set(pending)
            STREAM_DELAYED.labels(name).set(int(await redis.zcard(names.delayed)))
            STREAM_DEAD.labels(name).set(int(await redis.xlen(names.dead)))
        for kind, alive in (await live_workers(redis, keyspace)).items():
            WORKERS_ALIVE.labels(kind).set(len(alive))
    except STORE_DOWN_ERRORS:
        REDIS_ERRORS.labels("metrics").inc()

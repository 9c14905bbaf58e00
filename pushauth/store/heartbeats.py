"""Worker heartbeats: each worker process writes its name and the time into its kind's hash every few
seconds; the API servers' /readyz, `pushauth check` and the `pushauth_workers_alive` gauge read them."""

from __future__ import annotations

import time
from typing import cast

import redis.asyncio as aioredis

from pushauth.store.keyspace import KeySpace

WORKER_KINDS = ("push", "alerts", "expiry")
HEARTBEAT_TTL_S = 30


def heartbeat_key(keyspace: KeySpace, kind: str) -> str:
    return f"{keyspace.prefix}:{{workers}}:hb:{kind}"


async def beat(redis: aioredis.Redis, keyspace: KeySpace, kind: str, name: str) -> None:
    """A worker is alive: its entry in the kind's heartbeat hash (name -> Unix time)."""
    await redis.hset(heartbeat_key(keyspace, kind), name, int(time.time()))


async def live_workers(redis: aioredis.Redis, keyspace: KeySpace) -> dict[str, list[str]]:
    """Worker names per kind whose heartbeat is fresh; entries older than a day are removed."""
    now = time.time()
    out: dict[str, list[str]] = {}
    for kind in WORKER_KINDS:
        key = heartbeat_key(keyspace, kind)
        beats = cast(dict[str, str], await redis.hgetall(key))
        out[kind] = sorted(n for n, t in beats.items() if now - int(t) <= HEARTBEAT_TTL_S)
        old = [n for n, t in beats.items() if now - int(t) > 86400]
        if old:
            await redis.hdel(key, *old)
    return out

"""Worker heartbeats: each worker process writes its name and the time into its kind's hash every few
seconds (pushauth/runtime/worker.py); the API servers' /readyz, `pushauth check`, `python -m workers.<kind>
--check` and the `pushauth_workers_alive` gauge read them. A name is alive while its time is at most
HEARTBEAT_TTL_S old; the hash itself expires KEY_TTL_S after the last beat of any worker of its kind, so a
kind nobody runs any more leaves nothing behind."""

from __future__ import annotations

import time
from typing import cast

import redis.asyncio as aioredis

from pushauth.store.keyspace import KeySpace

WORKER_KINDS = ("push", "alerts", "expiry", "radius")
# Listed by `live_workers` only while one is alive: a deployment runs `pushauth radius` only if it has RADIUS
# clients, so an empty list would say nothing.
OPTIONAL_KINDS = frozenset({"radius"})
HEARTBEAT_TTL_S = 30
KEY_TTL_S = 2 * HEARTBEAT_TTL_S  # longer than any entry can be alive: the expiry never hides a live worker


async def beat(redis: aioredis.Redis, keyspace: KeySpace, kind: str, name: str) -> None:
    """A worker is alive: its entry in the kind's heartbeat hash (name -> Unix time)."""
    key = keyspace.worker_heartbeats(kind)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, name, int(time.time()))
        pipe.expire(key, KEY_TTL_S)
        await pipe.execute()


async def live_workers(redis: aioredis.Redis, keyspace: KeySpace) -> dict[str, list[str]]:
    """Worker names per kind whose heartbeat is fresh; entries older than a day are removed."""
    now = time.time()
    out: dict[str, list[str]] = {}
    for kind in WORKER_KINDS:
        key = keyspace.worker_heartbeats(kind)
        beats = cast(dict[str, str], await redis.hgetall(key))
        alive = sorted(n for n, t in beats.items() if now - int(t) <= HEARTBEAT_TTL_S)
        if alive or kind not in OPTIONAL_KINDS:
            out[kind] = alive
        old = [n for n, t in beats.items() if now - int(t) > 86400]
        if old:
            await redis.hdel(key, *old)
    return out

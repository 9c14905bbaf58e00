"""The notification outbox's claim (pushauth/oidc/lua/claim_notifications.lua) on a real Redis: of servers
sweeping at once, each notification whose lease has ended is adopted by exactly one, and a live lease is
left alone."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from pushauth.oidc.outbox import CLAIM
from pushauth.store import KeySpace


async def test_concurrent_sweeps_adopt_each_notification_once(redis_url: str) -> None:
    keyspace = KeySpace("pa")
    async with aioredis.Redis.from_url(redis_url) as redis:
        now = time.time()
        ended = {f"n{i:03}": now - 1 for i in range(200)}
        await redis.zadd(keyspace.notify_due, {**ended, "held": now + 30})
        claims = await asyncio.gather(*(CLAIM(redis, [keyspace.notify_due], [now, now + 30, 50])
                                        for _ in range(8)))
        adopted = [nid.decode() for claim in claims for nid in claim]
        assert sorted(adopted) == sorted(ended)  # every one, once; "held" by a live lease is not among them
        scores = [await redis.zscore(keyspace.notify_due, nid) for nid in ended]
        assert scores == [now + 30] * len(ended)  # each with its new lease

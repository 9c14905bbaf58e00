"""Typed reads. The client is opened with decode_responses=True, so replies are str; redis-py's stubs
cannot know that, and these wrappers say it once instead of a cast at every call site."""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis


async def hgetall(redis: aioredis.Redis, key: str) -> dict[str, str]:
    return cast(dict[str, str], await redis.hgetall(key))


async def get(redis: aioredis.Redis, key: str) -> str | None:
    return cast(str | None, await redis.get(key))


async def hget(redis: aioredis.Redis, key: str, field: str) -> str | None:
    return cast(str | None, await redis.hget(key, field))


async def smembers(redis: aioredis.Redis, key: str) -> set[str]:
    return cast(set[str], await redis.smembers(key))

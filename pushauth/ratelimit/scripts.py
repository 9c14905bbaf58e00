"""The ratelimit package's Lua scripts (`lua/`), each behind one typed wrapper: ARGV built by name, the
reply decoded. Nothing else runs them; `pushauth.ratelimit.limiter.RateLimiter` calls the wrappers.

A bucket is one hash (`KeySpace.rate_bucket`) and the only key each script touches.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import redis.asyncio as aioredis

from pushauth.store.scripts import Script

RATE_LIMIT = Script.load("pushauth.ratelimit", "rate_limit.lua")
RATE_AUTH_FAILURE = Script.load("pushauth.ratelimit", "rate_auth_failure.lua")
RATE_LEASE = Script.load("pushauth.ratelimit", "rate_lease.lua")


class Limit(StrEnum):
    OK = "ok"
    REQUESTS = "requests"  # over the request quota
    AUTH_FAILURES = "auth_failures"  # the address is inside its auth-failure block


@dataclass(frozen=True, slots=True)
class Checked:
    """A rate-limit check's answer: passed (OK), or refused and for how long (seconds; 0 when OK)."""

    result: Limit
    retry_after_s: int


async def rate_limit(redis: aioredis.Redis, bucket: str, *, now: int, quota: int, window_s: int,
                     auth_failures: int) -> Checked:
    """Meter one request against `bucket` (`quota` per `window_s`, 0: not metered) and refuse it inside
    an auth-failure block (`auth_failures` allowed, 0: not checked) (rate_limit.lua)."""
    reply = await RATE_LIMIT(redis, [bucket], [now, quota, window_s, auth_failures])
    return Checked(Limit(reply[0]), int(reply[1]) if len(reply) > 1 else 0)


@dataclass(frozen=True, slots=True)
class Leased:
    """A lease's answer: `granted` requests (>= 1) when OK, else refused and for how long (seconds)."""

    result: Limit
    granted: int
    retry_after_s: int


async def rate_lease(redis: aioredis.Redis, bucket: str, *, now: int, quota: int, window_s: int,
                     auth_failures: int, want: int) -> Leased:
    """Take up to `want` requests from `bucket` at once, metered as that many `rate_limit` checks
    (rate_lease.lua); refused as `rate_limit` would refuse one."""
    reply = await RATE_LEASE(redis, [bucket], [now, quota, window_s, auth_failures, want])
    if reply[0] == Limit.OK:
        return Leased(Limit.OK, int(reply[1]), 0)
    return Leased(Limit(reply[0]), 0, int(reply[1]))


async def rate_auth_failure(redis: aioredis.Redis, bucket: str, *, now: int, window_s: int) -> int:
    """Count an authentication failure in `bucket`, opening a `window_s` window if none is open
    (rate_auth_failure.lua). Returns the failures counted in the open window."""
    return int(await RATE_AUTH_FAILURE(redis, [bucket], [now, window_s]))

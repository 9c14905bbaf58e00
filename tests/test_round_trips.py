"""Each leg of a sign-in reaches Redis once (issue 22), watched with MONITOR on the real redis-server: the
commands a client sent (not those a script ran inside Redis) while the leg was in flight. The rate limits
are on at their defaults; their leases (rate_lease.lua) are counted apart, and a busy bucket takes one only
now and then."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from support import LoginFlow, RunningServer

from pushauth.phone import Phone
from pushauth.ratelimit.scripts import RATE_LEASE

USER = "alice@nhs.net"


class Watch:
    """Collects the commands clients send to Redis (MONITOR), minus this watcher's own."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def take(self) -> list[str]:
        taken, self.commands = self.commands, []
        return taken


@contextlib.asynccontextmanager
async def monitor(redis_url: str) -> AsyncIterator[Watch]:
    watch = Watch()
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    started = asyncio.Event()

    async def listen() -> None:
        async with client.monitor() as m:
            started.set()
            async for event in m.listen():
                if event.get("client_type") != "lua":
                    watch.commands.append(str(event["command"]))

    task = asyncio.create_task(listen())
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.05)
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await client.aclose()


async def settled(watch: Watch) -> list[str]:
    await asyncio.sleep(0.05)  # MONITOR's feed trails the replies a little
    return watch.take()


def split(commands: list[str]) -> tuple[list[str], int]:
    """(the leg's own commands, how many rate-limit leases)."""
    leases = [c for c in commands if RATE_LEASE.sha in c]
    return [c.split(" ", 1)[0].upper() for c in commands if RATE_LEASE.sha not in c], len(leases)


async def test_each_leg_is_one_round_trip(server: RunningServer, login: LoginFlow, redis_url: str,
                                          http: aiohttp.ClientSession) -> None:
    phone = await Phone.enroll(await login.enroll_uri(USER), session=http)
    first = await login.create(USER)  # loads the scripts (EVALSHA, NOSCRIPT, EVAL) before watching
    assert await phone.approve(await phone.fetch(first["id"]), first["number"]) == "approved"
    legs: dict[str, list[list[str]]] = {"create": [], "status": [], "fetch": [], "respond": []}
    leases = 0
    async with monitor(redis_url) as watch:

        async def leg(name: str, aw: Callable[[], Awaitable[Any]]) -> Any:
            nonlocal leases
            await settled(watch)
            result = await aw()
            own, n = split(await settled(watch))
            legs[name].append(own)
            leases += n
            return result

        for _ in range(12):
            created = await leg("create", lambda: login.create(USER))
            ch = await leg("fetch", lambda: phone.fetch(created["id"]))  # noqa: B023
            assert await leg("respond", lambda: phone.approve(ch, created["number"])) == "approved"  # noqa: B023
            assert (await leg("status", lambda: login.status(created["id"])))["status"] == "approved"  # noqa: B023
    # One script or read per leg (the push queue is off in the test settings).
    for name, seen in legs.items():
        assert all(len(commands) == 1 for commands in seen), (name, seen)
    assert {c[0] for c in legs["status"]} == {"HGETALL"}
    assert {c[0] for commands in (legs["create"], legs["fetch"], legs["respond"]) for c in commands} == {
        "EVALSHA"}
    # Leases: two buckets (the application's, the address's), each doubling while spent within a second;
    # at this test's slow pace (MONITOR, ~0.4 s per cycle) they run out now and then, still well under one
    # per two requests. (A busy server takes one per up to 256.)
    assert leases < 48 / 2, leases

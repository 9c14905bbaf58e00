"""Each leg of a sign-in reaches Redis once (issue 22), watched with MONITOR on the real redis-server: the
commands a client sent (not those a script ran inside Redis) while the leg was in flight. Push is on, as in
every real deployment: the new challenge's push-stream entry is written by create_challenge.lua itself (on
a single Redis or Sentinel; on Cluster the stream is in another slot and costs its own XADD). The rate
limits are on at their defaults; their leases (rate_lease.lua) are counted apart, and a busy bucket takes
one only now and then. The expiry index's batched ZADD (`ExpiryIndex`: one per 50 ms per process, not per
leg) is counted apart too, by its key."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import aiohttp
import pytest
import redis.asyncio as aioredis
from support import LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Phone
from pushauth.push.dispatch import STREAM
from pushauth.ratelimit.scripts import RATE_LEASE
from pushauth.store import KeySpace
from pushauth.store.streams import StreamNames

USER = "alice@nhs.net"
# FCM on, so that every new challenge is queued for the push worker; no worker runs here (nothing reads the
# service account file): what is counted is the API's side.
PUSH = {"fcm": {"enabled": True, "service_account_file": "unused-no-worker-runs-here.json"}}


@pytest.fixture
async def server(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    running = await start_server(make_settings(redis_url, free_port(), push=PUSH), keyring)
    yield running
    await running.close()


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


class Split:
    """A window's commands sorted: the leg's own, the rate-limit leases, and the expiry index's batched
    ZADDs (`ExpiryIndex`, by their key: written 50 ms after a create for every create of those 50 ms,
    so they land in whichever window is open then, and belong to no leg)."""

    def __init__(self, commands: list[str], expiry_key: str) -> None:
        def expiry_write(c: str) -> bool:
            return c.upper().startswith("ZADD ") and expiry_key in c

        self.leases = sum(RATE_LEASE.sha in c for c in commands)
        self.expiry_writes = [c for c in commands if expiry_write(c)]
        self.own = [c.split(" ", 1)[0].upper() for c in commands
                    if RATE_LEASE.sha not in c and not expiry_write(c)]


async def test_each_leg_is_one_round_trip(server: RunningServer, login: LoginFlow, redis_url: str,
                                          http: aiohttp.ClientSession) -> None:
    assert server.settings.push.enabled
    keyspace = KeySpace(server.settings.store.prefix)
    stream = StreamNames.for_(keyspace.prefix, STREAM).stream
    phone = await Phone.enroll(await login.enroll_uri(USER), session=http, push_provider="fcm",
                               push_token="fcm-token-alice")
    first = await login.create(USER)  # loads the scripts (EVALSHA, NOSCRIPT, EVAL) before watching
    assert await phone.approve(await phone.fetch(first["id"]), first["number"]) == "approved"
    legs: dict[str, list[list[str]]] = {"create": [], "status": [], "fetch": [], "respond": []}
    leases = 0
    expiry_writes: list[str] = []
    created_ids: list[str] = []
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as redis:
        queued = await redis.xlen(stream)
    async with monitor(redis_url) as watch:

        def count(commands: list[str]) -> list[str]:
            nonlocal leases
            window = Split(commands, keyspace.expiry_due)
            leases += window.leases
            expiry_writes.extend(window.expiry_writes)
            return window.own

        async def leg(name: str, aw: Callable[[], Awaitable[Any]]) -> Any:
            between = count(await settled(watch))  # what trailed the previous leg's window
            assert not between, (name, between)
            result = await aw()
            legs[name].append(count(await settled(watch)))
            return result

        for _ in range(12):
            created = await leg("create", lambda: login.create(USER))
            created_ids.append(created["id"])
            ch = await leg("fetch", lambda: phone.fetch(created["id"]))  # noqa: B023
            assert await leg("respond", lambda: phone.approve(ch, created["number"])) == "approved"  # noqa: B023
            assert (await leg("status", lambda: login.status(created["id"])))["status"] == "approved"  # noqa: B023
    # One command per leg: create's push-stream entry is written by its script, not by an XADD of its own.
    for name, seen in legs.items():
        assert all(len(commands) == 1 for commands in seen), (name, seen)
    assert {c[0] for c in legs["status"]} == {"HGETALL"}
    assert {c[0] for commands in (legs["create"], legs["fetch"], legs["respond"]) for c in commands} == {
        "EVALSHA"}
    # Leases: two buckets (the application's, the address's), each doubling while spent within a second;
    # at this test's slow pace (MONITOR, ~0.4 s per cycle) they run out now and then, still well under one
    # per two requests. (A busy server takes one per up to 256.)
    assert leases < 48 / 2, leases
    # What was left out of the counts was the expiry index: every create's id went into it, batched.
    assert all(any(f" {cid} " in f"{c} " for c in expiry_writes) for cid in created_ids), expiry_writes
    assert len(expiry_writes) <= len(created_ids) + 1, expiry_writes  # (+1: the unwatched first create's)
    # And every create was queued for the push worker, once, in order.
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as redis:
        entries = cast(list[tuple[str, dict[str, str]]], await redis.xrange(stream, "-", "+"))
    assert [fields["c"] for _, fields in entries[queued:]] == created_ids, entries[queued:]

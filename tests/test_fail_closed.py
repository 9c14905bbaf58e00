"""Redis down means fail closed (503, nothing approved, no hanging), and Redis back means the server recovers
by itself: no pushauth restart, pending challenges kept (AOF), pub/sub listener reconnected, Lua scripts
re-sent after NOSCRIPT.

Every test here has a redis-server of its own (`private_redis`, appendonly) that it kills and restarts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis
from support import LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.challenges.scripts import CREATE_CHALLENGE, RESPOND
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.devices.scripts import DEVICE_GATE
from pushauth.phone import Challenge, Phone, ServerRejected
from pushauth.web.app import EVENTS
from testkit.redis_server import RedisServer

USER = "carol@nhs.net"
REQUEST_LIMIT_S = 3.0  # store timeouts are 0.5 s (connect) and 1 s (socket) in the test settings


@pytest.fixture
async def server(private_redis: RedisServer, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    running = await start_server(make_settings(private_redis.url, free_port()), keyring)
    yield running
    await running.close()


@pytest.fixture
async def phone(login: LoginFlow, http: aiohttp.ClientSession) -> Phone:
    """Enrolled for this module's USER (conftest's `login` already talks to the `server` above)."""
    return await Phone.enroll(await login.enroll_uri(USER), session=http)


# -- helpers ----------------------------------------------------------------------------------------------


async def _quick(aw: Awaitable[Any], limit: float = REQUEST_LIMIT_S) -> Any:
    """Run one request; it must answer (not hang) within `limit` seconds."""
    start = time.monotonic()
    result = await asyncio.wait_for(aw, 10)
    took = time.monotonic() - start
    assert took < limit, f"request took {took:.2f} s with Redis down"
    return result


async def _raw(login: LoginFlow, method: str, path: str,
               json: Any = None) -> tuple[int, dict[str, str], Any]:
    async with login.http.request(method, login.url + path, json=json, headers=login.headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def _assert_unavailable(login: LoginFlow, method: str, path: str, json: Any = None) -> None:
    status, headers, body = await _quick(_raw(login, method, path, json))
    assert status == 503, body
    assert body["error"] == "unavailable"
    assert body["message"]
    assert int(headers["Retry-After"]) > 0


async def _eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.05)


async def _true(value: bool) -> bool:
    return value


async def _burst(login: LoginFlow, cid: str, n: int = 30) -> list[int]:
    """n concurrent reads of a challenge: status codes."""

    async def one() -> int:
        status, _, _ = await _raw(login, "GET", f"/v1/challenges/{cid}")
        return status

    return list(await asyncio.gather(*[one() for _ in range(n)]))


async def _all_ok(login: LoginFlow, cid: str) -> bool:
    # Concurrent requests, so that every pooled Redis connection is used (see
    # test_no_spurious_503_once_redis_is_back on connections that died with the old Redis).
    return await _burst(login, cid) == [200] * 30


async def _park_waiter(server: RunningServer, login: LoginFlow, cid: str,
                       wait: int) -> asyncio.Task[tuple[int, Any]]:
    before = server.app[EVENTS].waiting
    task = asyncio.create_task(login.call("GET", f"/v1/challenges/{cid}?wait={wait}"))
    await _eventually(lambda: _true(server.app[EVENTS].waiting > before), 3, "waiter parked")
    return task


async def _kill_and_fail_closed(private_redis: RedisServer, server: RunningServer, login: LoginFlow,
                                phone: Phone) -> tuple[dict[str, Any], Challenge]:
    """A pending challenge, a long-poll in flight, Redis killed: every kind of request fails closed."""
    created = await login.create(USER)
    ch = await phone.fetch(created["id"])
    waiter = await _park_waiter(server, login, ch.id, wait=10)

    private_redis.kill()

    # The long-poll in flight does not hang: the listener's connection drops, the waiter is woken and its
    # re-read finds Redis gone.
    start = time.monotonic()
    status, body = await asyncio.wait_for(waiter, 10)
    assert time.monotonic() - start < 5.0
    assert status == 503, body
    assert body["error"] == "unavailable"

    await _assert_unavailable(login, "POST", "/v1/challenges", {"user": USER})
    await _assert_unavailable(login, "GET", f"/v1/challenges/{ch.id}")
    await _assert_unavailable(login, "GET", f"/v1/challenges/{ch.id}?wait=5")
    await _assert_unavailable(login, "DELETE", f"/v1/challenges/{ch.id}")
    await _assert_unavailable(login, "POST", "/v1/enrollments", {"user": "dave@nhs.net"})

    # The phone's approve is refused with 503: nothing is approved while the store is away.
    with pytest.raises(ServerRejected) as info:
        await _quick(phone.approve(ch, number=created["number"]))
    assert (info.value.status, info.value.error) == (503, "unavailable")
    with pytest.raises(ServerRejected) as info:
        await _quick(phone.pending())
    assert info.value.status == 503
    return created, ch


# -- tests ------------------------------------------------------------------------------------------------


async def test_redis_killed_fails_closed_then_recovers(private_redis: RedisServer, server: RunningServer,
                                                       login: LoginFlow, phone: Phone) -> None:
    created, ch = await _kill_and_fail_closed(private_redis, server, login, phone)

    private_redis.restart()  # same port and dir: the AOF brings the data back
    with redis.Redis.from_url(private_redis.url) as r:
        # The restart emptied Redis's script cache: the server's EVALSHA will be answered NOSCRIPT.
        assert r.script_exists(RESPOND.sha, DEVICE_GATE.sha, CREATE_CHALLENGE.sha) == [
            False, False, False]

    # No pushauth restart: within a few seconds requests succeed again.
    await _eventually(lambda: _all_ok(login, ch.id), 5, "requests succeed after Redis is back")
    assert (await login.status(ch.id))["status"] == "pending"  # kept by the AOF; nothing approved

    # The phone approves the same challenge: the scripts were re-sent after NOSCRIPT, by the server itself.
    assert await phone.approve(ch, number=created["number"]) == "approved"
    seen = await login.status(ch.id)
    assert seen["status"] == "approved"
    assert seen["device"] == phone.device_id
    with redis.Redis.from_url(private_redis.url) as r:
        assert r.script_exists(RESPOND.sha) == [True]  # the answer runs its gate inside RESPOND (issue 22)
    assert (await login.create(USER))["status"] == "pending"  # CREATE_CHALLENGE too


async def test_waiters_woken_by_pubsub_after_recovery(private_redis: RedisServer, server: RunningServer,
                                                      login: LoginFlow, phone: Phone) -> None:
    _, old = await _kill_and_fail_closed(private_redis, server, login, phone)
    private_redis.restart()
    events = server.app[EVENTS]
    await _eventually(lambda: _true(events.connected.is_set()), 8, "pub/sub listener reconnected")
    await _eventually(lambda: _all_ok(login, old.id), 5, "requests succeed after Redis is back")
    created = await login.create(USER)

    ch = await phone.fetch(created["id"])
    waiter = await _park_waiter(server, login, ch.id, wait=10)
    assert await phone.approve(ch, number=created["number"]) == "approved"
    answered = time.monotonic()
    status, seen = await asyncio.wait_for(waiter, 10)
    assert (status, seen["status"]) == (200, "approved")
    assert time.monotonic() - answered < 1.0, "the waiter was not woken by pub/sub"


async def test_redis_frozen_requests_time_out_to_503(private_redis: RedisServer, server: RunningServer,
                                                     login: LoginFlow, phone: Phone) -> None:
    """Redis alive but not answering (SIGSTOP: a stuck host, a long fork): the socket timeout turns every
    request into a 503 instead of a hang, and nothing is decided."""
    created = await login.create(USER)
    ch = await phone.fetch(created["id"])
    pid = private_redis.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        await _assert_unavailable(login, "GET", f"/v1/challenges/{ch.id}")
        await _assert_unavailable(login, "POST", "/v1/challenges", {"user": USER})
        with pytest.raises(ServerRejected) as info:
            await _quick(phone.approve(ch, number=created["number"]))
        assert info.value.status == 503
    finally:
        os.kill(pid, signal.SIGCONT)
    await _eventually(lambda: _all_ok(login, ch.id), 5, "requests succeed after Redis answers again")
    assert (await login.status(ch.id))["status"] == "pending"
    assert await phone.approve(ch, number=created["number"]) == "approved"


async def test_server_started_while_redis_is_down(private_redis: RedisServer, keyring: KeyRingHolder,
                                                  http: aiohttp.ClientSession) -> None:
    private_redis.stop()
    start = time.monotonic()
    running = await asyncio.wait_for(start_server(make_settings(private_redis.url, free_port()), keyring), 10)
    try:
        assert time.monotonic() - start < 6.5, "start-up must not wait for Redis for long"
        login = LoginFlow(http, running.url)
        await _assert_unavailable(login, "POST", "/v1/enrollments", {"user": USER})
        await _assert_unavailable(login, "POST", "/v1/challenges", {"user": USER})
        await _assert_unavailable(login, "GET", "/v1/challenges/cxxxxxxxxxxxxxxxxaaaaaaaaaaaaaaaaaaaaaaaaaa")

        private_redis.start()
        await _eventually(lambda: _enrolls(login), 5, "requests succeed once Redis is up")
        phone = await Phone.enroll(await login.enroll_uri(USER), session=http)
        events = running.app[EVENTS]
        await _eventually(lambda: _true(events.connected.is_set()), 8, "pub/sub listener subscribed")
        created = await login.create(USER)
        ch = await phone.fetch(created["id"])
        waiter = await _park_waiter(running, login, ch.id, wait=10)
        assert await phone.approve(ch, number=created["number"]) == "approved"
        answered = time.monotonic()
        status, seen = await asyncio.wait_for(waiter, 10)
        assert (status, seen["status"]) == (200, "approved")
        assert time.monotonic() - answered < 1.0
    finally:
        await running.close()


async def _enrolls(login: LoginFlow) -> bool:
    status, _ = await login.call("POST", "/v1/enrollments", {"user": "erin@nhs.net"})
    return status == 201


# -- server bugs --------------------------------------------------------------------------------------------


async def test_no_spurious_503_once_redis_is_back(private_redis: RedisServer, server: RunningServer,
                                                  login: LoginFlow, phone: Phone) -> None:
    created = await login.create(USER)
    # Under load the server's pool holds many connections to Redis.
    assert await _burst(login, created["id"]) == [200] * 30

    private_redis.restart(kill=True)  # a crash and an immediate restart, AOF intact
    await _eventually(lambda: _true(server.app[EVENTS].connected.is_set()), 8, "listener reconnected")
    start = time.monotonic()
    while (await _raw(login, "GET", f"/v1/challenges/{created['id']}"))[0] != 200:
        assert time.monotonic() - start < 5, "requests never succeed again"
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)

    # Redis has been back and answering for a second: every request must succeed now.
    statuses = await _burst(login, created["id"])
    assert statuses == [200] * 30, f"{statuses.count(503)} of 30 requests got 503 with Redis up"


async def test_waiter_started_while_listener_reconnects_is_not_lost(
        private_redis: RedisServer, server: RunningServer, login: LoginFlow, phone: Phone) -> None:
    events = server.app[EVENTS]
    private_redis.kill()
    # Down long enough for the listener's back-off to grow: attempts at 0, .1, .3, .7, 1.5 s, then 3.1 s.
    await asyncio.sleep(2.0)
    assert not events.connected.is_set()
    private_redis.start()
    await _eventually(lambda: _enrolls(login), 3, "requests succeed after Redis is back")
    created = await login.create(USER)
    # Use up the pooled connections that died with the old Redis (the bug above): only the wake-up is
    # under test here.
    await _eventually(lambda: _all_ok(login, created["id"]), 3, "requests succeed after Redis is back")
    ch = await phone.fetch(created["id"])

    start = time.monotonic()
    waiter = await _park_waiter(server, login, ch.id, wait=3)
    assert await phone.approve(ch, number=created["number"]) == "approved"
    status, seen = await asyncio.wait_for(waiter, 10)
    took = time.monotonic() - start
    assert (status, seen["status"]) == (200, "approved")
    # The contract: a waiting call returns as soon as the status leaves pending. Allow for a listener that
    # is still reconnecting, but not for sleeping to the deadline.
    assert took < 2.5, f"the waiter slept to its 3 s deadline ({took:.2f} s): the decision was missed"

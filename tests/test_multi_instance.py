"""Several server instances behind one public URL share one Redis: a login flow waiting on instance A is
woken at once (pub/sub) when the phone's answer lands on instance B."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import pytest
from support import LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Phone
from pushauth.web.app import EVENTS

USER = "bob@nhs.net"
T = TypeVar("T")


@dataclass
class Pair:
    a: RunningServer
    b: RunningServer
    login_a: LoginFlow
    login_b: LoginFlow
    phone: Phone  # enrolled through B, talks to B only


@pytest.fixture
async def pair(redis_url: str, keyring: KeyRingHolder,
               http: aiohttp.ClientSession) -> AsyncIterator[Pair]:
    # One public base URL (the load balancer's), two instances on their own ports.
    port_a, port_b = free_port(), free_port()
    public = f"http://127.0.0.1:{port_a}"
    a = await start_server(make_settings(redis_url, port_a), keyring)
    b = await start_server(make_settings(redis_url, port_b, server={"base_url": public}), keyring)
    try:
        login_a, login_b = LoginFlow(http, a.url), LoginFlow(http, b.url)
        uri = await login_b.enroll_uri(USER)
        assert f"server=http%3A%2F%2F127.0.0.1%3A{port_a}" in uri  # the public URL, not B's own port
        phone = await Phone.enroll(uri, session=http, server_override=b.url)
        yield Pair(a, b, login_a, login_b, phone)
    finally:
        await b.close()
        await a.close()


async def _timed(aw: Awaitable[T]) -> tuple[T, float]:
    result = await aw
    return result, time.monotonic()


async def _until_waiting(server: RunningServer, count: int, within: float = 3.0) -> None:
    """Until `count` login flows are parked on the server's waiter hub (their GET is in flight)."""
    deadline = time.monotonic() + within
    while server.app[EVENTS].waiting < count:
        assert time.monotonic() < deadline, f"only {server.app[EVENTS].waiting} of {count} waiters"
        await asyncio.sleep(0.01)


async def test_waiter_on_a_woken_by_answer_on_b(pair: Pair) -> None:
    created = await pair.login_a.create(USER)
    ch = await pair.phone.fetch(created["id"])  # signed by B
    assert ch.id == created["id"]

    start = time.monotonic()
    waiter = asyncio.create_task(_timed(pair.login_a.status(created["id"], wait=10)))
    await _until_waiting(pair.a, 1)
    assert not waiter.done()

    assert await pair.phone.approve(ch, number=created["number"]) == "approved"
    answered = time.monotonic()

    seen, returned = await asyncio.wait_for(waiter, 10)
    assert seen["status"] == "approved"
    assert seen["device"] == pair.phone.device_id
    assert "assertion" in seen
    assert returned - answered < 1.0, f"waiter on A returned {returned - answered:.2f} s after the answer"
    assert returned - start < 5.0  # nowhere near the 10 s deadline read
    assert pair.a.app[EVENTS].waiting == 0


async def test_twenty_waiters_on_a_all_woken_by_answers_on_b(pair: Pair) -> None:
    created = [await pair.login_a.create(USER) for _ in range(20)]
    fetched = [await pair.phone.fetch(c["id"]) for c in created]
    waiters = [asyncio.create_task(_timed(pair.login_a.status(c["id"], wait=10))) for c in created]
    await _until_waiting(pair.a, 20)

    results = await asyncio.gather(*[pair.phone.approve(ch, number=c["number"])
                                     for ch, c in zip(fetched, created, strict=True)])
    answered = time.monotonic()
    assert results == ["approved"] * 20

    seen = await asyncio.wait_for(asyncio.gather(*waiters), 10)
    for (body, returned), c in zip(seen, created, strict=True):
        assert body["id"] == c["id"]
        assert body["status"] == "approved"
        assert returned - answered < 1.0
    assert pair.a.app[EVENTS].waiting == 0


async def test_decided_just_before_waiting_returns_at_once(pair: Pair) -> None:
    created = await pair.login_a.create(USER)
    assert await pair.phone.approve(created["id"], number=created["number"]) == "approved"
    start = time.monotonic()
    seen = await pair.login_a.status(created["id"], wait=10)
    assert seen["status"] == "approved"
    assert time.monotonic() - start < 1.0


async def test_no_lost_wakeup_when_answer_races_the_wait(pair: Pair) -> None:
    """The answer (on B) and the start of the wait (on A) are fired together, many times: whichever comes
    first, the waiter returns approved at once, never at its deadline."""

    async def one_round() -> tuple[dict[str, Any], float]:
        created = await pair.login_a.create(USER)
        ch = await pair.phone.fetch(created["id"])
        start = time.monotonic()
        seen, _ = await asyncio.gather(pair.login_a.status(created["id"], wait=10),
                                       pair.phone.approve(ch, number=created["number"]))
        return seen, time.monotonic() - start

    rounds = await asyncio.wait_for(asyncio.gather(*[one_round() for _ in range(20)]), 15)
    for seen, took in rounds:
        assert seen["status"] == "approved"
        assert took < 1.0, f"a waiter took {took:.2f} s: the wake-up was lost"

"""Replica acknowledgements (`store.replica_acks`, pushauth/store/durability.py) on a real primary with a
real replica: an answered change is on the replica before the client hears of it, and when the replica
cannot acknowledge in time the change is refused (503) or, in "warn" mode, answered and counted.

The replica is stopped with SIGSTOP: it keeps its connection to the primary but acknowledges nothing, as
a replica that hangs or lags does. This also proves WAIT travels on the connection that made the change:
WAIT on any other connection has nothing to wait for and would answer at once."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from support import LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.config import from_mapping
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.errors import ConfigError
from pushauth.phone import Phone, ServerRejected
from pushauth.store import KeySpace
from testkit.redis_server import RedisServer

USER = "ward7@nhs.net"
TIMEOUT_MS = 300


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "primary") as server:
        yield server


@pytest.fixture
def replica(tmp_path: Path, primary: RedisServer) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "replica", replica_of=primary) as server:
        deadline = time.monotonic() + 10
        with redis.Redis(port=server.port, decode_responses=True) as r:
            while r.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica did not sync"
                time.sleep(0.05)
        yield server
        if server.pid is not None:
            os.kill(server.pid, signal.SIGCONT)  # a test that failed while the replica was stopped


@contextlib.contextmanager
def hung(server: RedisServer) -> Iterator[None]:
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


async def _server(primary: RedisServer, keyring: KeyRingHolder, shortfall: str) -> RunningServer:
    store = {"replica_acks": 1, "replica_ack_timeout_ms": TIMEOUT_MS, "replica_ack_shortfall": shortfall}
    return await start_server(make_settings(primary.url, free_port(), quiet_detection=False, store=store),
                              keyring)


@pytest.fixture
async def refusing(primary: RedisServer, replica: RedisServer,
                   keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    server = await _server(primary, keyring, "refuse")
    yield server
    await server.close()


@pytest.fixture
async def warning(primary: RedisServer, replica: RedisServer,
                  keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    server = await _server(primary, keyring, "warn")
    yield server
    await server.close()


def _waits(primary: RedisServer) -> int:
    with redis.Redis(port=primary.port, decode_responses=True) as r:
        stats = r.info("commandstats").get("cmdstat_wait", {})
        return int(stats.get("calls", 0)) if isinstance(stats, dict) else 0


def _shortfalls(action: str) -> float:
    return REGISTRY.get_sample_value("pushauth_replica_ack_shortfalls_total", {"action": action}) or 0.0


async def _on_replica(replica: RedisServer, server: RunningServer, cid: str) -> dict[str, str]:
    uid = cid[1:17]
    async with aioredis.Redis(port=replica.port, decode_responses=True) as r:
        h = await r.hgetall(KeySpace(server.settings.store.prefix).challenge(uid, cid))
        return {str(k): str(v) for k, v in h.items()}


async def test_an_answer_is_on_the_replica_before_the_phone_hears_of_it(
        refusing: RunningServer, primary: RedisServer, replica: RedisServer,
        http: aiohttp.ClientSession) -> None:
    login = LoginFlow(http, refusing.url)
    phone = await Phone.enroll(await login.enroll_uri(USER), session=http)
    warm = await login.create(USER)  # the first answer also fills Redis's script cache (one more WAIT)
    assert await phone.approve(warm["id"], number=warm["number"]) == "approved"
    created = await login.create(USER)
    challenge = await phone.fetch(created["id"])
    before = _waits(primary)
    assert await phone.approve(challenge, number=created["number"]) == "approved"
    # Read from the replica the moment the phone has its 200: the approval is already there.
    assert (await _on_replica(replica, refusing, created["id"]))["st"] == "approved"
    assert _waits(primary) == before + 1  # one WAIT for the answer; the request's gate does not wait


async def test_an_unacknowledged_not_me_is_refused_and_the_phone_sends_it_again(
        refusing: RunningServer, primary: RedisServer, replica: RedisServer,
        http: aiohttp.ClientSession) -> None:
    login = LoginFlow(http, refusing.url)
    phone = await Phone.enroll(await login.enroll_uri(USER), session=http)
    created = await login.create(USER)
    refused = _shortfalls("refuse")
    with hung(replica):
        start = time.monotonic()
        with pytest.raises(ServerRejected) as caught:
            await phone.deny(created["id"], reason="not_me")
        took = time.monotonic() - start
    assert (caught.value.status, caught.value.error) == (503, "unavailable"), caught.value
    assert took >= TIMEOUT_MS / 1000 * 0.9, took  # it waited for the replica, then gave up
    assert _shortfalls("refuse") == refused + 1
    # The phone signs its answer again once the store answers: the first one was made on the primary, so
    # the second finds the prompt decided. Nothing the phone was told about is missing on the replica.
    with pytest.raises(ServerRejected) as again:
        await phone.deny(created["id"], reason="not_me")
    assert again.value.status == 409, again.value
    seen = await login.status(created["id"])
    assert (seen["status"], seen["reason"]) == ("denied", "not_me")
    status, body = await login.call("POST", "/v1/challenges", {"user": USER})
    assert (status, body["error"]) == (403, "suspended"), body  # the containment took effect too


async def test_warn_mode_answers_anyway_and_counts_it(
        warning: RunningServer, replica: RedisServer, http: aiohttp.ClientSession) -> None:
    login = LoginFlow(http, warning.url)
    phone = await Phone.enroll(await login.enroll_uri(USER), session=http)
    created = await login.create(USER)
    warned = _shortfalls("warn")
    with hung(replica):
        start = time.monotonic()
        assert await phone.approve(created["id"], number=created["number"]) == "approved"
        took = time.monotonic() - start
    assert took >= TIMEOUT_MS / 1000 * 0.9, took
    assert _shortfalls("warn") == warned + 1
    assert (await login.status(created["id"]))["status"] == "approved"


async def test_reads_and_polling_never_wait_for_replicas(
        refusing: RunningServer, replica: RedisServer, http: aiohttp.ClientSession) -> None:
    login = LoginFlow(http, refusing.url)
    phone = await Phone.enroll(await login.enroll_uri(USER), session=http)
    created = await login.create(USER)
    with hung(replica):
        start = time.monotonic()
        for _ in range(5):
            assert [c.id for c in await phone.pending()] == [created["id"]]
            assert (await login.status(created["id"]))["status"] == "pending"
        took = time.monotonic() - start
    assert took < TIMEOUT_MS / 1000, took  # ten reads in less than one WAIT's timeout


async def test_an_empty_script_cache_is_refilled_on_the_acknowledged_path(
        refusing: RunningServer, primary: RedisServer, replica: RedisServer,
        http: aiohttp.ClientSession) -> None:
    login = LoginFlow(http, refusing.url)
    phone = await Phone.enroll(await login.enroll_uri(USER), session=http)
    created = await login.create(USER)
    with redis.Redis(port=primary.port) as r:
        r.script_flush()  # as after a restart or a failover: EVALSHA answers NOSCRIPT
    assert await phone.approve(created["id"], number=created["number"]) == "approved"
    assert (await _on_replica(replica, refusing, created["id"]))["st"] == "approved"


def test_replica_acks_need_a_real_redis() -> None:
    with pytest.raises(ConfigError, match="replica_acks needs redis_url"):
        from_mapping({"store": {"replica_acks": 1}})
    with pytest.raises(ConfigError, match=r"replica_acks must be 0\.\.5"):
        from_mapping({"store": {"redis_url": "redis://127.0.0.1:6379", "replica_acks": 9}})

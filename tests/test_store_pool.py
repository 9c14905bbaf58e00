"""The command pool (`pushauth.store.connection.LeanPool`) against a real redis-server: more concurrent
commands than connections wait rather than fail, a Redis that stops answering fails a command as a
timeout within the bound (1.25 x socket_timeout_s), no command PINGs first, and no connection carries
redis-py's own socket timeout (the watchdog is the bound)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rex

from pushauth.config import StoreSettings
from pushauth.store import open_redis
from pushauth.store.connection import LeanPool
from testkit.redis_server import RedisServer


async def test_a_burst_beyond_the_pool_waits_instead_of_failing(redis_url: str) -> None:
    client = open_redis(StoreSettings(redis_url=redis_url, max_connections=4))
    try:
        pool = client.connection_pool
        assert isinstance(pool, LeanPool)
        replies = await asyncio.gather(*(client.incr("burst") for _ in range(300)))
        assert sorted(replies) == list(range(1, 301))
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 4
    finally:
        await client.aclose()


async def test_no_ping_before_commands(redis_url: str) -> None:
    client = open_redis(StoreSettings(redis_url=redis_url), health_check_interval_s=1)
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as watcher:
        try:
            await client.get("x")
            before = (await watcher.info("commandstats")).get("cmdstat_ping", {"calls": 0})["calls"]
            await asyncio.sleep(1.2)  # longer than the health-check interval
            for _ in range(5):
                await client.get("x")
            after = (await watcher.info("commandstats")).get("cmdstat_ping", {"calls": 0})["calls"]
            assert after == before
        finally:
            await client.aclose()


async def test_connections_carry_no_socket_timeout_of_their_own(redis_url: str) -> None:
    """redis-py's socket_timeout wraps every write in asyncio.wait_for and every read in asyncio.timeout;
    the pool sets it to None (left out, it is redis-py's 5 s default: a slip that passed every other test,
    since the watchdog still bounded the frozen-Redis cases). The watchdog keeps the configured bound."""
    client = open_redis(StoreSettings(redis_url=redis_url, socket_timeout_s=0.4, max_connections=4))
    try:
        pool = client.connection_pool
        assert isinstance(pool, LeanPool)
        await asyncio.gather(*(client.incr("timeouts") for _ in range(20)))  # opens several connections
        connections = [*pool._available_connections, *pool._in_use_connections]
        assert len(connections) > 1, connections
        assert [c.socket_timeout for c in connections] == [None] * len(connections)
        assert pool.connection_kwargs.get("socket_timeout", "left out") is None  # so new ones too
        assert pool._read_timeout_s == 0.4
    finally:
        await client.aclose()


async def test_a_frozen_redis_fails_the_command_as_a_timeout_within_the_bound(
        private_redis: RedisServer) -> None:
    client = open_redis(StoreSettings(redis_url=private_redis.url, socket_timeout_s=0.4,
                                      connect_timeout_s=0.4))
    pid = private_redis.pid
    assert pid is not None
    try:
        assert await client.set("k", "v")
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(rex.TimeoutError):
                await asyncio.wait_for(client.get("k"), 5)
            took = time.monotonic() - start
            assert 0.4 <= took < 0.4 * 1.25 + 0.25, took
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await client.get("k") == "v"  # the broken connection was replaced
    finally:
        await client.aclose()


async def test_waiting_for_a_connection_is_bounded(private_redis: RedisServer) -> None:
    """Every connection stuck on a frozen Redis: a further command waits at most the socket timeout for
    one, then fails like any outage."""
    client = open_redis(StoreSettings(redis_url=private_redis.url, socket_timeout_s=0.4,
                                      connect_timeout_s=0.4, max_connections=2))
    pid = private_redis.pid
    assert pid is not None
    try:
        await client.ping()
        os.kill(pid, signal.SIGSTOP)
        try:
            results = await asyncio.gather(*(client.get(k) for k in "abcd"), return_exceptions=True)
            assert all(isinstance(r, rex.TimeoutError | rex.ConnectionError) for r in results), results
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await client.ping()
    finally:
        await client.aclose()

"""pushauth.store.streams.StreamConsumer against a real Redis: per-entry and batch handlers, batched acks
that only go out once the entry's writes are stored, back-pressure, what a stop flushes, reclaim of
entries still in flight, and a Redis restart in the middle of a flush.

The push worker's use of it (PushDelivery) is tested in test_push_worker.py and test_push_e2e.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from pushauth.config import StoreSettings
from pushauth.store import open_redis
from pushauth.store.streams import Entry, Fields, StreamConsumer, StreamNames
from testkit.redis_server import RedisServer

NAMES = StreamNames.for_("pt", "jobs")


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = open_redis(StoreSettings(redis_url=redis_url), health_check_interval_s=0)
    yield client
    await client.aclose()


class Running:
    """A consumer running in a task until `stop()`."""

    def __init__(self, consumer: StreamConsumer) -> None:
        self.consumer = consumer
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(consumer.run(self.stop_event))

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 20)


async def pending(r: aioredis.Redis) -> int:
    info = await r.xpending(NAMES.stream, NAMES.group)
    return int(info["pending"])


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def xack_calls(r: aioredis.Redis) -> int:
    stats = await r.info("commandstats")
    return int(stats.get("cmdstat_xack", {}).get("calls", 0))


async def test_per_entry_handler_acks_in_batches(r: aioredis.Redis) -> None:
    seen: list[str] = []

    async def handler(entry_id: str, fields: Fields) -> None:
        seen.append(fields["n"])

    consumer = StreamConsumer(r, NAMES, "c1", handler, batch=50)
    await consumer.ensure_group()
    for i in range(200):
        await consumer.add({"n": str(i)})
    await r.config_resetstat()
    running = Running(consumer)
    await eventually(lambda: _true(len(seen) == 200))
    await eventually(lambda: _eq(pending(r), 0))
    await running.stop()
    assert sorted(seen, key=int) == [str(i) for i in range(200)]
    assert await xack_calls(r) < 50, "acks must be batched, not one XACK per entry"


async def test_failing_entry_is_not_acked_and_others_are(r: aioredis.Redis) -> None:
    async def handler(entry_id: str, fields: Fields) -> None:
        if fields["n"] == "bad":
            raise RuntimeError("boom")

    consumer = StreamConsumer(r, NAMES, "c1", handler, reclaim_idle_s=60)
    await consumer.ensure_group()
    for n in ("1", "bad", "2"):
        await consumer.add({"n": n})
    running = Running(consumer)
    await eventually(lambda: _eq(pending(r), 1))
    await running.stop()
    [entry] = await r.xpending_range(NAMES.stream, NAMES.group, min="-", max="+", count=10)
    entries = cast(list[Entry], await r.xrange(NAMES.stream, min=entry["message_id"],
                                               max=entry["message_id"]))
    assert [fields for _, fields in entries] == [{"n": "bad"}]


class Recording:
    """The Redis client, with every pipeline the consumer executes recorded (its commands, in order)."""

    def __init__(self, r: aioredis.Redis) -> None:
        self._r = r
        self.pipelines: list[list[tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._r, name)

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self._r.pipeline(transaction=transaction)
        execute = pipe.execute

        async def recorded(raise_on_error: bool = True) -> list[Any]:
            commands = [tuple(args) for args, _ in pipe.command_stack]
            result = await execute(raise_on_error=raise_on_error)
            self.pipelines.append(commands)
            return result

        pipe.execute = recorded  # type: ignore[method-assign]
        return pipe


async def test_batch_handler_ack_goes_out_after_its_writes_are_stored(r: aioredis.Redis) -> None:
    """An entry's XACK is sent in a later pipeline than its writes, i.e. only once they are stored."""
    consumer: StreamConsumer

    async def batch(entries: list[Entry]) -> None:
        for entry_id, fields in entries:
            await asyncio.sleep(0.001)
            consumer.write(entry_id, "SET", f"pt:done:{entry_id}", fields["n"])
            if fields["n"] != "skip":
                consumer.done(entry_id)

    recording = Recording(r)
    consumer = StreamConsumer(cast(aioredis.Redis, recording), NAMES, "c1", batch_handler=batch, batch=7,
                              reclaim_idle_s=60, flush_interval_s=0.001, flush_max=5)
    await consumer.ensure_group()
    ids = [await consumer.add({"n": str(i)}) for i in range(100)]
    skip = await consumer.add({"n": "skip"})  # written but never done: stays pending
    running = Running(consumer)
    await eventually(lambda: _eq(pending(r), 1))
    await running.stop()
    written: dict[str, int] = {}
    acked: list[tuple[str, int]] = []
    for n, commands in enumerate(recording.pipelines):
        for command in commands:
            if command[0] == "SET":
                written[str(command[1]).removeprefix("pt:done:")] = n
            elif command[0] == "XACK":
                acked.extend((str(i), n) for i in command[3:])
    assert sorted(i for i, _ in acked) == sorted(ids), "every finished entry acked once"
    assert all(written[i] < n for i, n in acked), "an ack went out with (or before) its entry's writes"
    assert len({n for _, n in acked}) < len(ids) / 2, "acks are not batched"
    assert all(await r.mget([f"pt:done:{i}" for i in ids]))
    assert await r.get(f"pt:done:{skip}") == "skip"  # the write of an unfinished entry is stored too
    [entry] = await r.xpending_range(NAMES.stream, NAMES.group, min="-", max="+", count=10)
    assert entry["message_id"] == skip


async def test_entry_whose_write_fails_is_not_acked(r: aioredis.Redis) -> None:
    consumer: StreamConsumer
    await r.set("pt:not-a-hash", "x")

    async def batch(entries: list[Entry]) -> None:
        for entry_id, fields in entries:
            key = "pt:not-a-hash" if fields["n"] == "bad" else f"pt:h:{fields['n']}"
            consumer.write(entry_id, "HSET", key, "f", "v")  # WRONGTYPE for the bad one
            consumer.done(entry_id)

    consumer = StreamConsumer(r, NAMES, "c1", batch_handler=batch, reclaim_idle_s=60)
    await consumer.ensure_group()
    for n in ("1", "bad", "2"):
        await consumer.add({"n": n})
    running = Running(consumer)
    await eventually(lambda: _eq(pending(r), 1))
    await running.stop()
    assert await pending(r) == 1
    assert await r.hget("pt:h:1", "f") == "v"


async def test_batch_handler_raising_leaves_unfinished_entries_pending(r: aioredis.Redis) -> None:
    consumer: StreamConsumer

    async def batch(entries: list[Entry]) -> None:
        consumer.done(entries[0][0])
        raise RuntimeError("boom")

    consumer = StreamConsumer(r, NAMES, "c1", batch_handler=batch, batch=10, reclaim_idle_s=60)
    await consumer.ensure_group()
    for i in range(3):
        await consumer.add({"n": str(i)})
    running = Running(consumer)
    await eventually(lambda: _eq(pending(r), 2))
    await running.stop()
    assert consumer.inflight() == 0


async def test_back_pressure_bounds_what_is_read_ahead(r: aioredis.Redis) -> None:
    release = asyncio.Event()
    started = 0

    async def handler(entry_id: str, fields: Fields) -> None:
        nonlocal started
        started += 1
        await release.wait()

    consumer = StreamConsumer(r, NAMES, "c1", handler, batch=5, max_inflight=12, reclaim_idle_s=60)
    await consumer.ensure_group()
    for i in range(60):
        await consumer.add({"n": str(i)})
    running = Running(consumer)
    await eventually(lambda: _true(started >= 10))
    await asyncio.sleep(0.3)
    assert 12 <= started < 12 + 5, "read far ahead of the handlers"
    assert consumer.inflight() == started
    release.set()
    await eventually(lambda: _eq(pending(r), 0))
    await running.stop()
    assert started == 60


async def test_stop_flushes_the_last_acks(r: aioredis.Redis) -> None:
    async def handler(entry_id: str, fields: Fields) -> None:
        await asyncio.sleep(0.2)

    # A flush interval far longer than the test: only the stop can have sent the acks.
    consumer = StreamConsumer(r, NAMES, "c1", handler, flush_interval_s=60, reclaim_idle_s=60)
    await consumer.ensure_group()
    for i in range(20):
        await consumer.add({"n": str(i)})
    running = Running(consumer)
    await eventually(lambda: _eq(pending(r), 20))
    await running.stop()
    assert await pending(r) == 0


async def test_entry_still_in_flight_is_not_reclaimed_twice(r: aioredis.Redis) -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def handler(entry_id: str, fields: Fields) -> None:
        calls.append(entry_id)
        await release.wait()

    consumer = StreamConsumer(r, NAMES, "c1", handler, reclaim_idle_s=1)
    await consumer.ensure_group()
    await consumer.add({"n": "slow"})
    running = Running(consumer)
    await asyncio.sleep(2.5)  # idle past reclaim_idle_s at least once: XAUTOCLAIM hands it back to us
    release.set()
    await eventually(lambda: _eq(pending(r), 0))
    await running.stop()
    assert len(calls) == 1, "an entry still being handled was handled again"


async def test_poison_entry_dead_lettered(r: aioredis.Redis) -> None:
    async def handler(entry_id: str, fields: Fields) -> None:
        raise ValueError("poison")

    consumer = StreamConsumer(r, NAMES, "c1", handler, reclaim_idle_s=1, dead_letter_after=1)
    await consumer.ensure_group()
    await consumer.add({"n": "poison"})
    running = Running(consumer)

    async def dead() -> bool:
        return bool(await r.xlen(NAMES.dead))

    await eventually(dead, within_s=10)
    await eventually(lambda: _eq(pending(r), 0))
    await running.stop()


async def test_flush_waits_out_a_redis_restart(private_redis: RedisServer) -> None:
    """Writes and acks queued while Redis is down are stored once it is back: nothing lost, the consumer
    (with the worker's pool: no health check) recovers by itself and keeps consuming."""
    r = open_redis(StoreSettings(redis_url=private_redis.url), health_check_interval_s=0)
    consumer: StreamConsumer
    gate = asyncio.Event()
    handled: list[str] = []

    async def batch(entries: list[Entry]) -> None:
        await gate.wait()
        for entry_id, fields in entries:
            consumer.write(entry_id, "SET", f"pt:done:{fields['n']}", "1")
            consumer.done(entry_id)
            handled.append(fields["n"])

    consumer = StreamConsumer(r, NAMES, "c1", batch_handler=batch, reclaim_idle_s=60)
    try:
        await consumer.ensure_group()
        for i in range(10):
            await consumer.add({"n": str(i)})
        running = Running(consumer)
        await eventually(lambda: _eq(pending(r), 10))
        private_redis.stop()  # graceful: the AOF keeps the stream and its pending entries
        gate.set()  # the handler finishes while Redis is away: its writes cannot be stored yet
        await eventually(lambda: _true(len(handled) == 10))
        await asyncio.sleep(0.5)
        private_redis.start()
        await eventually(lambda: _eq(pending(r), 0), within_s=10)
        assert all(await r.mget([f"pt:done:{i}" for i in range(10)]))
        # and it keeps consuming on the recovered connections
        await consumer.add({"n": "after"})
        await eventually(lambda: _true(bool(handled) and handled[-1] == "after"), within_s=10)
        await eventually(lambda: _eq(pending(r), 0))
        await running.stop()
    finally:
        await r.aclose()


async def test_exactly_one_handler_kind() -> None:
    r = aioredis.Redis()

    async def handler(entry_id: str, fields: Fields) -> None:
        return None

    async def batch(entries: list[Entry]) -> None:
        return None

    with pytest.raises(ValueError, match="exactly one"):
        StreamConsumer(r, NAMES, "c1")
    with pytest.raises(ValueError, match="exactly one"):
        StreamConsumer(r, NAMES, "c1", handler, batch_handler=batch)
    await r.aclose()


async def _true(value: bool) -> bool:
    return value


async def _eq(value: Awaitable[int], want: int) -> bool:
    return await value == want

"""The one worker runner (pushauth/runtime/worker.py, pushauth/runtime/jobs.py): the bounded drain finishes
what is in flight and leaves what outlasts the deadline pending for reclaim; `--check` says, by exit code,
whether a worker of a kind is alive; the heartbeat key expires; a declaration's precondition refuses to
start."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from pushauth.runtime import run_until_stopped
from pushauth.store import KeySpace, heartbeats
from pushauth.store.streams import Fields, StreamConsumer, StreamNames

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


async def _python(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", *args, env=ENV, cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _config(tmp_path: Path, redis_url: str, extra: str = "") -> Path:
    config = tmp_path / "worker.toml"
    config.write_text(f'[store]\nredis_url = "{redis_url}"\n{extra}')
    return config


async def test_the_drain_finishes_in_flight_work_and_cancels_what_outlasts_it() -> None:
    finished: list[str] = []

    async def quick(stop: asyncio.Event) -> None:
        await stop.wait()
        await asyncio.sleep(0.05)  # the work in flight when the stop came
        finished.append("quick")

    async def stuck(stop: asyncio.Event) -> None:
        await stop.wait()
        await asyncio.sleep(60)
        finished.append("stuck")

    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stop.set)
    began = time.monotonic()
    with capture_logs() as logs:
        drained = await run_until_stopped({"quick": quick, "stuck": stuck}, stop, drain_s=0.5)
    assert not drained
    assert finished == ["quick"]
    assert time.monotonic() - began < 3
    assert [(e["event"], e["unfinished"]) for e in logs if e["event"] == "worker_drain_timeout"] == [
        ("worker_drain_timeout", ["stuck"])]


async def test_a_failing_loop_stops_the_others_and_its_error_is_raised() -> None:
    drained: list[str] = []

    async def broken(stop: asyncio.Event) -> None:
        raise RuntimeError("boom")

    async def steady(stop: asyncio.Event) -> None:
        await stop.wait()
        drained.append("steady")

    stop = asyncio.Event()
    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(run_until_stopped({"broken": broken, "steady": steady}, stop, drain_s=5), 5)
    assert stop.is_set()
    assert drained == ["steady"]


async def test_an_entry_still_in_flight_at_the_deadline_stays_pending_for_reclaim(redis_url: str) -> None:
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    names = StreamNames.for_("pa", "drain-test")
    started = asyncio.Event()

    async def slow(entry_id: str, fields: Fields) -> None:
        started.set()
        await asyncio.sleep(60)

    consumer = StreamConsumer(redis, names, "w1", slow, block_ms=50)
    try:
        await consumer.ensure_group()
        await consumer.add({"n": "1"})
        stop = asyncio.Event()
        running = asyncio.create_task(run_until_stopped({"consumer": consumer.run}, stop, drain_s=0.3))
        await asyncio.wait_for(started.wait(), 5)
        stop.set()
        assert await asyncio.wait_for(running, 5) is False
        pending = await redis.xpending(names.stream, names.group)
        assert pending["pending"] == 1  # not acked: another worker reclaims it
    finally:
        await redis.aclose()


async def test_check_exits_by_whether_a_worker_of_the_kind_is_alive(redis_url: str, tmp_path: Path) -> None:
    config = _config(tmp_path, redis_url)
    rc, out = await _python("workers.expiry", "-c", str(config), "--check")
    assert rc == 1, out
    assert "no expiry worker alive" in out

    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.expiry", "-c", str(config), "--name", "e1", "--drain-s", "2",
        env=ENV, cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + 15
        while not (await heartbeats.live_workers(redis, KeySpace("pa")))["expiry"]:
            assert time.monotonic() < deadline, "the expiry worker never beat"
            await asyncio.sleep(0.1)
        # The heartbeat hash expires: a kind nobody runs any more leaves no key behind.
        ttl = await redis.ttl(KeySpace("pa").worker_heartbeats("expiry"))
        assert 0 < ttl <= heartbeats.KEY_TTL_S
        rc, out = await _python("workers.expiry", "-c", str(config), "--check")
        assert (rc, out.strip()) == (0, "expiry workers alive: e1")
        rc, out = await _python("workers.push", "-c", str(config), "--check")
        assert rc == 1, out  # alive is per kind
    finally:
        await redis.aclose()
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 15) == 0


async def test_check_with_the_store_down_exits_1(tmp_path: Path) -> None:
    config = _config(tmp_path, "redis://127.0.0.1:1", "connect_timeout_s = 1\nsocket_timeout_s = 1\n")
    rc, out = await _python("workers.alerts", "-c", str(config), "--check")
    assert rc == 1, out
    assert "unreachable" in out


@pytest.mark.parametrize(("kind", "why"), [
    ("push", "no push provider is enabled"),
    ("alerts", "no alert sink is configured"),
])
async def test_a_worker_with_nothing_to_do_refuses_to_start(redis_url: str, tmp_path: Path, kind: str,
                                                            why: str) -> None:
    rc, out = await _python(f"workers.{kind}", "-c", str(_config(tmp_path, redis_url)))
    assert rc == 2
    assert why in out


async def test_a_worker_on_the_embedded_store_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "embedded.toml"
    config.write_text("[keys]\nephemeral = true\n")
    rc, out = await _python("workers.expiry", "-c", str(config))
    assert rc == 2
    assert "the server runs the expiry worker itself" in out

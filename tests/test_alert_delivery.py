"""Alert delivery end to end: a real server raises alerts, real `python -m workers.alerts` processes deliver
them to a real local webhook receiver, whose signature check is the independent Standard Webhooks
implementation (the `standardwebhooks` package). Faults: the receiver down then up, the worker killed with
SIGKILL at random points many times, Redis restarted from its AOF between raise and delivery, a poison
entry, a 410, retries exhausted, an alert whose announcement was lost.
"""

from __future__ import annotations

import asyncio
import base64
import random
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from processes import Child
from redis_server import RedisServer
from standardwebhooks.webhooks import Webhook
from support import ADMIN_TOKEN, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.phone import Phone
from pushauth.store.streams import StreamNames
from pushauth.web.keyring import KeyRingHolder

SECRET = "whsec_" + base64.b64encode(b"pushauth-test-webhook-secret-32b").decode()
SINK = "siem-hook"


class Receiver:
    """A webhook endpoint on a fixed port that can go down and come back. Every request is checked with the
    Standard Webhooks reference implementation; a bad signature is a 401 and a test failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"
        self.deliveries: list[tuple[str, dict[str, Any]]] = []  # (webhook-id, body) of accepted posts
        self.bad: list[str] = []
        self.status = 200
        self.delay_s = 0.0
        self._verifier = Webhook(SECRET)
        self._runner: web.AppRunner | None = None
        self.arrived = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self._verifier.verify(body, dict(request.headers))
        except Exception as exc:
            self.bad.append(f"{type(exc).__name__}: {exc}")
            return web.Response(status=401)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.status // 100 == 2:
            self.deliveries.append((request.headers["webhook-id"], msgspec.json.decode(body)))
            self.arrived.set()
        return web.Response(status=self.status)

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def alert_ids(self) -> set[str]:
        return {body["data"]["id"] for _, body in self.deliveries}

    async def wait_for(self, alert_ids: set[str], within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while not alert_ids <= self.alert_ids():
            assert time.monotonic() < deadline, (
                f"not delivered within {within_s} s: {sorted(alert_ids - self.alert_ids())}")
            await asyncio.sleep(0.05)


class Workers:
    """`python -m workers.alerts` processes sharing one config."""

    def __init__(self, config: Path, logs: Path) -> None:
        self.config = config
        self.logs = logs
        self.procs: list[Child] = []

    def start(self, name: str) -> Child:
        proc = Child.python(["-m", "workers.alerts", "-c", str(self.config), "--name", name],
                            self.logs / f"{name}.log")
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.signal(signal.SIGTERM)
        for proc in self.procs:
            proc.stop(10)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))


def worker_config(path: Path, redis_url: str, receiver: Receiver, **alerts: Any) -> Path:
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in alerts.items())
    path.write_text(f"""
[store]
redis_url = "{redis_url}"
socket_timeout_s = 1.0
connect_timeout_s = 0.5

[alerts]
retry_schedule_s = [1, 1, 1, 1, 1, 1]
sweep_interval_s = 1.0
reclaim_idle_s = 1.0
{extra}
[[alerts.sinks]]
name = "{SINK}"
kind = "webhook"
url = "{receiver.url}"
secret = "{SECRET}"
timeout_s = 2.0

[logging]
level = "info"
format = "json"
""")
    return path


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(free_port())
    await r.up()
    yield r
    await r.down()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    logs = tmp_path / "worker-logs"
    logs.mkdir()
    w = Workers(tmp_path / "alerts.toml", logs)
    yield w
    w.stop_all()
    assert SECRET not in w.log_text(), "the webhook secret reached the worker's logs"


async def raise_alerts(http: aiohttp.ClientSession, url: str, users: list[str]) -> list[str]:
    """Each user's phone says "not me" to a prompt: one critical alert per user. Returns the alert ids."""
    rp = LoginFlow(http, url)

    async def one(user: str) -> None:
        phone = await Phone.enroll(await rp.enroll_uri(user), session=http)
        c = await rp.create(user, context={"ip": "198.51.100.23"})
        await phone.deny(c["id"], reason="not_me")

    await asyncio.gather(*(one(u) for u in users))
    async with http.get(url + "/v1/alerts?limit=500",
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        alerts = [a for a in (await resp.json())["alerts"] if a["user"] in users]
    assert {a["user"] for a in alerts} == set(users)
    return [a["id"] for a in alerts]


def sink_settings(receiver: Receiver) -> dict[str, Any]:
    """The same [alerts] the workers get: the admin API lists and enables the configured sinks."""
    return {"sinks": [{"name": SINK, "kind": "webhook", "url": receiver.url, "secret": SECRET}]}


@pytest.fixture
async def server(redis_url: str, keyring: KeyRingHolder, receiver: Receiver) -> AsyncIterator[RunningServer]:
    settings = make_settings(redis_url, free_port(), quiet_detection=False, alerts=sink_settings(receiver))
    running = await start_server(settings, keyring)
    yield running
    await running.close()


def assert_duplicates_share_ids(receiver: Receiver) -> None:
    """At least once: an alert may arrive more than once, but always as the same message (same
    webhook-id, same alert), so a receiver drops the repeats by webhook-id."""
    by_alert: dict[str, set[str]] = {}
    for webhook_id, body in receiver.deliveries:
        by_alert.setdefault(body["data"]["id"], set()).add(webhook_id)
    assert all(len(ids) == 1 for ids in by_alert.values()), by_alert
    assert not receiver.bad, receiver.bad


# ---------------------------------------------------------------------------------------------------------


async def test_deny_reaches_the_webhook_signed_within_a_second(
        server: RunningServer, receiver: Receiver, workers: Workers, redis_url: str,
        http: aiohttp.ClientSession) -> None:
    worker_config(workers.config, redis_url, receiver)
    workers.start("w1")
    await asyncio.sleep(1.0)  # the worker's start-up is not what is measured
    started = time.monotonic()
    [aid] = await raise_alerts(http, server.url, ["carol@nhs.net"])
    await receiver.wait_for({aid}, within_s=5)
    assert time.monotonic() - started < 1.5
    [(webhook_id, body)] = receiver.deliveries
    assert webhook_id == f"msg_{aid}_v1_{SINK}"
    assert body["type"] == "alert.created"
    alert = body["data"]
    assert (alert["kind"], alert["severity"], alert["user"]) == ("denied_not_me", "critical", "carol@nhs.net")
    assert alert["evidence"]["events"][-1]["login"]["ip"] == "198.51.100.23"
    assert not receiver.bad


async def test_receiver_down_then_up_delivers_after_recovery(
        server: RunningServer, receiver: Receiver, workers: Workers, redis_url: str,
        http: aiohttp.ClientSession) -> None:
    worker_config(workers.config, redis_url, receiver)
    await receiver.down()
    workers.start("w1")
    aids = await raise_alerts(http, server.url, [f"user{i}@nhs.net" for i in range(5)])
    await asyncio.sleep(2.5)  # a few attempts fail (connection refused) and are rescheduled
    assert receiver.deliveries == []
    await receiver.up()
    await receiver.wait_for(set(aids), within_s=15)
    assert_duplicates_share_ids(receiver)


async def test_kill_9_at_random_points_loses_nothing(
        server: RunningServer, receiver: Receiver, workers: Workers, tmp_path: Path, redis_url: str,
        http: aiohttp.ClientSession) -> None:
    worker_config(workers.config, redis_url, receiver)
    receiver.delay_s = 0.05  # deliveries in flight when the kill comes
    rng = random.Random(20261128)
    users = [f"k{i}@nhs.net" for i in range(40)]
    workers.start("w0")
    raising = asyncio.create_task(raise_alerts(http, server.url, users))
    kills = 0
    for round_ in range(12):
        await asyncio.sleep(rng.uniform(0.05, 0.6))
        workers.procs[-1].kill9()
        kills += 1
        workers.start(f"w{round_ + 1}")
    aids = await raising
    await receiver.wait_for(set(aids), within_s=60)
    assert kills == 12
    assert_duplicates_share_ids(receiver)


async def test_redis_restarted_from_aof_between_raise_and_delivery(
        private_redis: RedisServer, keyring: KeyRingHolder, receiver: Receiver, workers: Workers,
        http: aiohttp.ClientSession) -> None:
    settings = make_settings(private_redis.url, free_port(), quiet_detection=False)
    running = await start_server(settings, keyring)
    try:
        aids = await raise_alerts(http, running.url, ["dave@nhs.net", "erin@nhs.net"])
    finally:
        await running.close()
    private_redis.restart(kill=True)  # SIGKILL: only what the AOF holds survives
    worker_config(workers.config, private_redis.url, receiver)
    workers.start("w1")
    await receiver.wait_for(set(aids), within_s=15)
    assert_duplicates_share_ids(receiver)


async def test_poison_entry_goes_to_the_dead_letter(
        server: RunningServer, receiver: Receiver, workers: Workers, redis_url: str,
        http: aiohttp.ClientSession) -> None:
    worker_config(workers.config, redis_url, receiver)
    names = StreamNames.for_("pa", "alerts")
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as r:
        await r.xadd(names.stream, {"u": "nobody", "a": "not-an-alert", "v": "1"})
    workers.start("w1")
    aids = await raise_alerts(http, server.url, ["frank@nhs.net"])  # the stream keeps flowing meanwhile
    await receiver.wait_for(set(aids), within_s=10)
    deadline = time.monotonic() + 30
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    while True:
        async with http.get(server.url + "/v1/alert-deliveries/dead", headers=headers) as resp:
            dead = (await resp.json())["dead"]
        if dead:
            break
        assert time.monotonic() < deadline, "poison entry never reached the dead letter"
        await asyncio.sleep(0.3)
    assert dead[0]["alert_id"] == "not-an-alert"
    assert "delivered too often" in dead[0]["why"]


async def test_gone_disables_the_sink_and_replay_delivers_after_enabling(
        server: RunningServer, receiver: Receiver, workers: Workers, redis_url: str,
        http: aiohttp.ClientSession) -> None:
    worker_config(workers.config, redis_url, receiver)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    receiver.status = 410
    workers.start("w1")
    async def dead_entries(n: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 15
        while True:
            async with http.get(server.url + "/v1/alert-deliveries/dead", headers=headers) as resp:
                dead: list[dict[str, Any]] = (await resp.json())["dead"]
            if len(dead) >= n:
                return dead
            assert time.monotonic() < deadline, dead
            await asyncio.sleep(0.2)

    first = await raise_alerts(http, server.url, ["gina@nhs.net"])
    await dead_entries(1)  # the 410 disabled the sink
    second = await raise_alerts(http, server.url, ["hank@nhs.net"])  # to a disabled sink: dead at once
    dead = await dead_entries(2)
    assert {d["alert_id"] for d in dead} == {*first, *second}
    assert {d["why"] for d in dead} == {"gone_410", "sink_disabled"}
    async with http.get(server.url + "/v1/alert-sinks", headers=headers) as resp:
        [sink] = (await resp.json())["sinks"]
    assert sink["name"] == SINK
    assert sink["disabled_at"] is not None
    assert receiver.deliveries == []

    receiver.status = 200
    async with http.post(server.url + f"/v1/alert-sinks/{SINK}/enable", headers=headers) as resp:
        assert resp.status == 200
    for d in dead:
        async with http.post(server.url + f"/v1/alert-deliveries/dead/{d['id']}/replay",
                             headers=headers) as resp:
            assert resp.status == 200, await resp.text()
    await receiver.wait_for({*first, *second}, within_s=10)
    async with http.get(server.url + "/v1/alert-deliveries/dead", headers=headers) as resp:
        assert (await resp.json())["dead"] == []
    assert_duplicates_share_ids(receiver)


async def test_retries_exhausted_go_to_the_dead_letter(
        server: RunningServer, receiver: Receiver, workers: Workers, redis_url: str,
        http: aiohttp.ClientSession) -> None:
    worker_config(workers.config, redis_url, receiver)
    workers.config.write_text(workers.config.read_text().replace(
        "retry_schedule_s = [1, 1, 1, 1, 1, 1]", "retry_schedule_s = [1, 1]"))
    receiver.status = 503
    workers.start("w1")
    [aid] = await raise_alerts(http, server.url, ["ivan@nhs.net"])
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    deadline = time.monotonic() + 20
    while True:
        async with http.get(server.url + "/v1/alert-deliveries/dead", headers=headers) as resp:
            dead = (await resp.json())["dead"]
        if dead:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert dead[0]["alert_id"] == aid
    assert dead[0]["why"] == "retries_exhausted:http_503"
    assert receiver.deliveries == []  # every attempt was refused (3: the first and two retries)


async def test_an_alert_whose_announcement_was_lost_is_swept(
        server: RunningServer, receiver: Receiver, workers: Workers, redis_url: str,
        http: aiohttp.ClientSession) -> None:
    """The server wrote the alert (with its cause) but died before announcing it: the stream never got the
    entry. The per-user outbox still has it, and the worker's sweep announces it."""
    worker_config(workers.config, redis_url, receiver)
    aids = await raise_alerts(http, server.url, ["judy@nhs.net"])
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as r:
        await r.delete(StreamNames.for_("pa", "alerts").stream)  # as if the announcement never happened
    workers.start("w1")
    await receiver.wait_for(set(aids), within_s=15)
    assert_duplicates_share_ids(receiver)

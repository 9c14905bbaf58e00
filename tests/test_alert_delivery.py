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
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from standardwebhooks.webhooks import Webhook
from support import ADMIN_TOKEN, LoginFlow, RunningServer, eventually, free_port, make_settings, start_server

from pushauth.alerts.delivery import _OneAtATime
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Phone
from pushauth.store import reads
from pushauth.store.streams import StreamNames
from testkit.processes import Child
from testkit.redis_server import RedisServer

SECRET = "whsec_" + base64.b64encode(b"pushauth-test-webhook-secret-32b").decode()
SINK = "siem-hook"


class Receiver:
    """A webhook endpoint on a fixed port that can go down and come back. Every request is checked with the
    Standard Webhooks reference implementation; a bad signature is a 401 and a test failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"
        self.deliveries: list[tuple[str, dict[str, Any]]] = []  # (webhook-id, body) of accepted posts
        self.attempts = 0  # posts with a good signature, whatever the answer
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
        self.attempts += 1
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


def worker_config(path: Path, redis_url: str, receiver: Receiver, sink: dict[str, Any] | None = None,
                  others: dict[str, Receiver] | None = None, **alerts: Any) -> Path:
    """`sink`: more settings of the SINK sink (to `receiver`); `others`: more webhook sinks, by name."""
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in alerts.items())
    sink_extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in (sink or {}).items())
    sink_extra += "".join(f"""
[[alerts.sinks]]
name = "{name}"
kind = "webhook"
url = "{other.url}"
secret = "{SECRET}"
timeout_s = 2.0
""" for name, other in (others or {}).items())
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
{sink_extra}
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


class Incident:
    """One user's alert raised a step at a time through the real path: a denial "by mistake" opens it at
    low (version 1), an approval with the wrong number raises it to high (version 2), "I didn't request
    this" to critical (version 3). Each step is announced as it happens, whether a worker runs or not."""

    def __init__(self, http: aiohttp.ClientSession, url: str, user: str) -> None:
        self.http = http
        self.url = url
        self.user = user
        self.rp = LoginFlow(http, url)
        self.phone: Phone | None = None

    async def _prompt(self) -> tuple[Phone, dict[str, Any]]:
        if self.phone is None:
            self.phone = await Phone.enroll(await self.rp.enroll_uri(self.user), session=self.http)
        return self.phone, await self.rp.create(self.user, context={"ip": "198.51.100.23"})

    async def low(self) -> None:
        phone, c = await self._prompt()
        assert await phone.deny(c["id"], reason="mistake") == "denied"

    async def high(self) -> None:
        phone, c = await self._prompt()
        assert await phone.approve(c["id"], number="00" if c["number"] != "00" else "01") == "denied"

    async def critical(self) -> None:
        phone, c = await self._prompt()
        assert await phone.deny(c["id"], reason="not_me") == "denied"

    async def alert(self) -> dict[str, Any]:
        async with self.http.get(self.url + "/v1/alerts", params={"user": self.user},
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            [alert] = (await resp.json())["alerts"]
        return dict(alert)


async def settled(redis_url: str, within_s: float = 15.0, *, retries: bool = True) -> None:
    """Every alert stream entry handled and acknowledged, no outbox entry left and (unless `retries` is
    False) no retry waiting: whatever the worker was going to send about what has been raised so far, it
    has sent."""
    names = StreamNames.for_("pa", "alerts")

    async def probe() -> bool | None:
        async with aioredis.Redis.from_url(redis_url, decode_responses=True) as r:
            stream = await r.xinfo_stream(names.stream)
            groups = await r.xinfo_groups(names.stream)
            outboxes = [key async for key in r.scan_iter(match="pa:{*}:aout")]
            due = await r.zcard(names.delayed)
        last = stream["last-generated-id"]
        done = bool(groups) and all(g["pending"] == 0 and g["last-delivered-id"] == last for g in groups)
        return True if done and not (retries and due) and not outboxes else None

    await eventually(probe, within_s, "every alert entry handled")


async def until(ready: Callable[[], bool], within_s: float, what: str) -> None:
    async def probe() -> bool | None:
        return True if ready() else None

    await eventually(probe, within_s, what)


def messages(receiver: Receiver) -> list[tuple[str, str, int, str]]:
    """(webhook-id, type, data.version, data.severity) of each accepted post, in arrival order."""
    assert not receiver.bad, receiver.bad
    return [(webhook_id, body["type"], body["data"]["version"], body["data"]["severity"])
            for webhook_id, body in receiver.deliveries]


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


# -- each version once; the first message about an alert is alert.created (issue 14, item 11) --------------


async def test_an_alert_escalated_before_its_first_delivery_arrives_once_as_created(
        server: RunningServer, receiver: Receiver, workers: Workers, redis_url: str,
        http: aiohttp.ClientSession) -> None:
    """Raised (version 1) and escalated (version 2) before any worker runs: both announcements wait in the
    stream, and one worker reads them in one batch and handles them at once. The endpoint gets one
    message, alert.created carrying version 2; version 1, superseded before it could be delivered, is not
    sent on its own. A later escalation is one alert.updated."""
    worker_config(workers.config, redis_url, receiver)
    kim = Incident(http, server.url, "kim@nhs.net")
    await kim.low()
    await kim.high()
    aid = (await kim.alert())["id"]
    workers.start("w1")
    await receiver.wait_for({aid}, within_s=15)
    await settled(redis_url)
    assert messages(receiver) == [(f"msg_{aid}_v2_{SINK}", "alert.created", 2, "high")]

    await kim.critical()
    await until(lambda: len(receiver.deliveries) > 1, 10, "version 3 delivered")
    await settled(redis_url)
    assert messages(receiver) == [(f"msg_{aid}_v2_{SINK}", "alert.created", 2, "high"),
                                  (f"msg_{aid}_v3_{SINK}", "alert.updated", 3, "critical")]


async def test_the_first_message_to_a_sink_above_the_first_severity_is_created(
        server: RunningServer, receiver: Receiver, workers: Workers, redis_url: str,
        http: aiohttp.ClientSession) -> None:
    """Two sinks, one with min_severity = high. It does not hear of the alert at low; when the alert rises
    to high, that is the first it hears of it: alert.created (version 2), then alert.updated. The other
    sink hears of every version, created then updated: what a sink was sent is the sink's own."""
    everything = Receiver(free_port())
    await everything.up()
    try:
        worker_config(workers.config, redis_url, receiver, sink={"min_severity": "high"},
                      others={"soc-all": everything})
        workers.start("w1")
        leo = Incident(http, server.url, "leo@nhs.net")
        await leo.low()
        aid = (await leo.alert())["id"]
        await everything.wait_for({aid}, within_s=10)
        await settled(redis_url)
        assert receiver.deliveries == []
        await leo.high()
        await receiver.wait_for({aid}, within_s=10)
        await leo.critical()
        await until(lambda: len(receiver.deliveries) > 1, 10, "version 3 delivered")
        await settled(redis_url)
        assert messages(receiver) == [(f"msg_{aid}_v2_{SINK}", "alert.created", 2, "high"),
                                      (f"msg_{aid}_v3_{SINK}", "alert.updated", 3, "critical")]
        assert messages(everything) == [(f"msg_{aid}_v1_soc-all", "alert.created", 1, "low"),
                                        (f"msg_{aid}_v2_soc-all", "alert.updated", 2, "high"),
                                        (f"msg_{aid}_v3_soc-all", "alert.updated", 3, "critical")]
    finally:
        await everything.down()


async def test_a_retry_of_a_version_the_alert_has_moved_past_sends_nothing(
        server: RunningServer, receiver: Receiver, workers: Workers, redis_url: str,
        http: aiohttp.ClientSession) -> None:
    """Version 1's delivery fails and is due again in 3 s; meanwhile the alert rises to version 2, which
    is delivered at once (as alert.created: the endpoint never had version 1). When version 1's retry
    comes due it sends nothing: neither version 1's stale state nor version 2 again."""
    worker_config(workers.config, redis_url, receiver)
    workers.config.write_text(workers.config.read_text().replace(
        "retry_schedule_s = [1, 1, 1, 1, 1, 1]", "retry_schedule_s = [3, 3]"))
    receiver.status = 503
    workers.start("w1")
    mia = Incident(http, server.url, "mia@nhs.net")
    await mia.low()
    await until(lambda: receiver.attempts > 0, 10, "version 1 attempted")
    receiver.status = 200
    await mia.high()
    aid = (await mia.alert())["id"]
    await receiver.wait_for({aid}, within_s=10)
    await settled(redis_url)  # version 1's retry came due and was handled
    assert messages(receiver) == [(f"msg_{aid}_v2_{SINK}", "alert.created", 2, "high")]
    assert receiver.attempts == 2
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as r:
        [key] = [k async for k in r.scan_iter(match=f"pa:{{*}}:alert:{aid}")]
        marks = {f: v for f, v in (await reads.hgetall(r, key)).items() if f.startswith("dl")}
    assert list(marks) == [f"dl:{SINK}:2"], marks  # version 2 delivered; no retry left marked
    assert marks[f"dl:{SINK}:2"].isdigit(), marks


async def test_an_escalated_alert_to_a_failing_endpoint_has_one_retry(
        server: RunningServer, receiver: Receiver, workers: Workers, redis_url: str,
        http: aiohttp.ClientSession) -> None:
    """Raised and escalated before the worker runs, to an endpoint that fails: the two announcements make
    one attempt (version 2) and schedule one retry between them, not one each; the retry delivers it."""
    worker_config(workers.config, redis_url, receiver)
    workers.config.write_text(workers.config.read_text().replace(
        "retry_schedule_s = [1, 1, 1, 1, 1, 1]", "retry_schedule_s = [3, 3]"))
    receiver.status = 503
    oli = Incident(http, server.url, "oli@nhs.net")
    await oli.low()
    await oli.high()
    aid = (await oli.alert())["id"]
    workers.start("w1")
    await settled(redis_url, retries=False)  # both announcements handled; the retry is not due yet
    assert receiver.attempts == 1
    receiver.status = 200
    await receiver.wait_for({aid}, within_s=10)
    await settled(redis_url)
    assert messages(receiver) == [(f"msg_{aid}_v2_{SINK}", "alert.created", 2, "high")]
    assert receiver.attempts == 2


async def test_replaying_a_dead_version_delivers_the_alert_as_it_now_stands(
        server: RunningServer, receiver: Receiver, workers: Workers, redis_url: str,
        http: aiohttp.ClientSession) -> None:
    """A 410 sends version 1 to the dead letter and disables the sink; version 2 goes there too. Once the
    sink is enabled, replaying either dead letter delivers the alert once, as it now stands: alert.created
    carrying version 2. Replaying the other then sends nothing more."""
    worker_config(workers.config, redis_url, receiver)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    receiver.status = 410
    workers.start("w1")

    async def dead_letters(n: int) -> list[dict[str, Any]] | None:
        async with http.get(server.url + "/v1/alert-deliveries/dead", headers=headers) as resp:
            dead: list[dict[str, Any]] = (await resp.json())["dead"]
        return dead if len(dead) >= n else None

    ned = Incident(http, server.url, "ned@nhs.net")
    await ned.low()
    await eventually(lambda: dead_letters(1), 10, "version 1 dead-lettered by the 410")
    await ned.high()
    dead = await eventually(lambda: dead_letters(2), 10, "version 2 dead-lettered: the sink is disabled")
    aid = (await ned.alert())["id"]
    assert {(d["alert_id"], d["version"], d["why"]) for d in dead} == {(aid, 1, "gone_410"),
                                                                       (aid, 2, "sink_disabled")}
    receiver.status = 200
    async with http.post(server.url + f"/v1/alert-sinks/{SINK}/enable", headers=headers) as resp:
        assert resp.status == 200
    for d in sorted(dead, key=lambda d: int(d["version"])):  # the older first
        async with http.post(server.url + f"/v1/alert-deliveries/dead/{d['id']}/replay",
                             headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        await receiver.wait_for({aid}, within_s=10)
        await settled(redis_url)
        assert messages(receiver) == [(f"msg_{aid}_v2_{SINK}", "alert.created", 2, "high")]
    assert await dead_letters(1) is None


async def test_entries_about_one_alert_take_turns_in_a_worker() -> None:
    """The per-alert lock: holders of one key run one after the other, other keys do not wait, and no lock
    is kept once nobody holds or waits for it (a worker runs for months)."""
    locks = _OneAtATime()
    order: list[str] = []

    async def hold(key: str, name: str, for_s: float) -> None:
        async with locks.hold(key):
            order.append(f"{name} in")
            await asyncio.sleep(for_s)
            order.append(f"{name} out")

    await asyncio.gather(hold("a1", "first", 0.05), hold("a1", "second", 0), hold("a2", "other", 0))
    assert order == ["first in", "other in", "other out", "first out", "second in", "second out"]
    waiting = asyncio.create_task(hold("a1", "cancelled", 0))
    async with locks.hold("a1"):
        await asyncio.sleep(0)
        waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert locks._locks == {}

"""pushauth on a real local Redis Cluster (3 masters, 3 replicas; testkit/redis_cluster.py): the contract's
flows across two server instances, the detection rules, the alert and expiry workers, and a master
failover in the middle of sign-ins.

Everything that changes several keys is one Lua script within one hash tag ({uid}, {alerts}, {push},
{expiry}), so the cluster needs no special code beyond its client (`store.cluster = true`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support import (
    ADMIN_TOKEN,
    ApprovalLoad,
    LoginFlow,
    RunningServer,
    assert_error,
    free_port,
    make_settings,
    start_server,
)

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Phone, ServerRejected
from pushauth.store import KeySpace
from testkit.redis_cluster import RedisCluster

REPO = Path(__file__).resolve().parent.parent


SECRET = "whsec_" + "cHVzaGF1dGgtY2x1c3Rlci10ZXN0LXNlY3JldC0zMmI="


async def webhook_receiver(record: Callable[[Any], object]) -> tuple[web.AppRunner, int]:
    """A webhook endpoint on a free port that hands each alert body to `record` and answers 204."""

    async def hook(request: web.Request) -> web.Response:
        record(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def _transient(exc: ServerRejected) -> bool:
    """What a phone may see while a master fails over, and answers by signing a new request: 503 only.
    Never 401 "replayed": the cluster client must not re-run a request's gate after the connection to the
    dying master broke (its jti was recorded the first time; pushauth/store/connection.py)."""
    return exc.status == 503


def cluster_settings(cluster: RedisCluster, port: int, *, store: dict[str, Any] | None = None,
                     **extra: Any) -> Any:
    return make_settings(cluster.url, port, quiet_detection=False,
                         store={"redis_url": cluster.url, "cluster": True, "socket_timeout_s": 1.0,
                                "connect_timeout_s": 0.5, "prefix": f"c{free_port()}", **(store or {})},
                         **extra)


@pytest.fixture
async def pair(cluster: RedisCluster,
               keyring: KeyRingHolder) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Two server instances on the cluster, sharing one key prefix (a fresh one per test)."""
    pa, pb = free_port(), free_port()
    a_settings = cluster_settings(cluster, pa)
    prefix = a_settings.store.prefix
    # One public base URL for both, as behind a load balancer (the phone checks the challenge issuer).
    b_settings = make_settings(cluster.url, pb, quiet_detection=False,
                               server={"base_url": a_settings.server.base_url},
                               store={"redis_url": cluster.url, "cluster": True, "socket_timeout_s": 1.0,
                                      "connect_timeout_s": 0.5, "prefix": prefix})
    a = await start_server(a_settings, keyring)
    b = await start_server(b_settings, keyring)
    yield a, b
    await a.close()
    await b.close()


async def test_contract_flows_across_instances_on_the_cluster(pair: tuple[RunningServer, RunningServer],
                                                              http: aiohttp.ClientSession) -> None:
    a, b = pair
    rp_a, rp_b = LoginFlow(http, a.url), LoginFlow(http, b.url)
    phone = await Phone.enroll(await rp_a.enroll_uri("alice@nhs.net"), session=http)
    # a waiter on A, woken by the answer taken by B
    c = await rp_a.create("alice@nhs.net", context={"ip": "10.0.0.1"})
    waiter = asyncio.create_task(rp_a.status(c["id"], wait=10))
    await asyncio.sleep(0.2)
    phone_b = Phone.from_dict({**phone.to_dict(), "server_override": b.url}, session=http)
    assert await phone_b.approve(c["id"], number=c["number"]) == "approved"
    seen = await asyncio.wait_for(waiter, 5)
    assert seen["status"] == "approved"
    assert "assertion" in seen
    # "not me" on B: the alert is in the security team's list on A, and the user is suspended everywhere
    d = await rp_b.create("alice@nhs.net")
    await phone.deny(d["id"], reason="not_me")
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.get(a.url + "/v1/alerts", headers=admin) as resp:
        [alert] = (await resp.json())["alerts"]
    assert alert["kind"] == "denied_not_me"
    status, body = await rp_a.call("POST", "/v1/challenges", {"user": "alice@nhs.net"})
    assert_error(status, body, 403, "suspended")
    async with http.post(b.url + "/v1/users/alice@nhs.net/unlock", headers=admin) as resp:
        assert resp.status == 200
    # per-user rate limit (push bombing: 5 prompts in 5 minutes; the unlock started the count again)
    # counted across both instances
    for i in range(5):
        await (rp_a if i % 2 else rp_b).create("alice@nhs.net")
    status, body = await rp_a.call("POST", "/v1/challenges", {"user": "alice@nhs.net"})
    assert_error(status, body, 429, "rate_limited")


async def test_many_users_spread_over_every_master(
        pair: tuple[RunningServer, RunningServer], http: aiohttp.ClientSession,
        cluster: RedisCluster) -> None:
    a, _ = pair
    rp = LoginFlow(http, a.url)
    users = [f"u{i}@nhs.net" for i in range(30)]
    uris = [await rp.enroll_uri(u) for u in users]
    phones = await asyncio.gather(*(Phone.enroll(uri, session=http) for uri in uris))
    created = [await rp.create(u) for u in users]
    results = await asyncio.gather(*(p.approve(c["id"], number=c["number"])
                                     for p, c in zip(phones, created, strict=True)))
    assert set(results) == {"approved"}
    prefix = a.settings.store.prefix
    uids = {cid["id"][1:17] for cid in created}
    masters = {cluster.master_of(KeySpace(prefix).user(uid)) for uid in uids}
    assert len(masters) == 3, "30 users should land on all three masters"


async def test_workers_on_the_cluster(cluster: RedisCluster, keyring: KeyRingHolder, tmp_path: Path,
                                      http: aiohttp.ClientSession) -> None:
    """The alert worker delivers from the cluster; the expiry worker settles; both beat."""
    got: list[dict[str, Any]] = []
    runner, hook_port = await webhook_receiver(got.append)
    secret = SECRET
    sinks = {"sinks": [{"name": "hook", "kind": "webhook", "url": f"http://127.0.0.1:{hook_port}/hook",
                        "secret": secret}]}
    settings = cluster_settings(cluster, free_port(), alerts=sinks)
    server = await start_server(settings, keyring)
    config = tmp_path / "worker.toml"
    config.write_text(f"""
[store]
redis_url = "{cluster.url}"
cluster = true
prefix = "{settings.store.prefix}"
[alerts]
sweep_interval_s = 1.0
reclaim_idle_s = 2.0
[[alerts.sinks]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:{hook_port}/hook"
secret = "{secret}"
""")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-m", f"workers.{kind}", "-c", str(config),
                                                  "--name", kind, env=env, cwd=REPO)
             for kind in ("alerts", "expiry")]
    try:
        rp = LoginFlow(http, server.url)
        phone = await Phone.enroll(await rp.enroll_uri("bob@nhs.net"), session=http)
        c = await rp.create("bob@nhs.net")
        await phone.deny(c["id"], reason="mistake")
        deadline = time.monotonic() + 15
        while not got:
            assert time.monotonic() < deadline, "the alert never reached the webhook"
            await asyncio.sleep(0.1)
        assert got[0]["data"]["kind"] == "denied"
        deadline = time.monotonic() + 20
        while True:
            async with http.get(server.url + "/readyz") as resp:
                body = await resp.json()
            if body["status"] == "ready":
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.3)
    finally:
        for proc in procs:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)
        await server.close()
        await runner.cleanup()


async def test_master_failover_during_sign_ins(cluster: RedisCluster, keyring: KeyRingHolder,
                                               http: aiohttp.ClientSession) -> None:
    """Kill the master that holds one user's slot while sign-ins run: errors (503) only until a replica is
    promoted, never an approval from lost state, and afterwards everything works again."""
    server = await start_server(cluster_settings(cluster, free_port(), detection={"push_bombing_max": 1000}),
                                keyring)
    try:
        rp = LoginFlow(http, server.url)
        phone = await Phone.enroll(await rp.enroll_uri("carol@nhs.net"), session=http)
        uid = (await rp.create("carol@nhs.net"))["id"][1:17]
        victim = cluster.master_of(KeySpace(server.settings.store.prefix).user(uid))
        errors: list[float] = []
        ok: list[float] = []
        lost: list[float] = []
        stop = asyncio.Event()

        async def sign_ins() -> None:
            while not stop.is_set():
                t = time.monotonic()
                status, c = await rp.call("POST", "/v1/challenges", {"user": "carol@nhs.net"})
                if status == 503:
                    errors.append(t)
                    await asyncio.sleep(0.05)
                    continue
                assert status == 201, (status, c)
                try:
                    result = await phone.approve(c["id"], number=c["number"])
                except ServerRejected as exc:
                    if not _transient(exc):
                        raise
                    errors.append(t)
                    continue
                assert result == "approved"
                # Read back: approved with its assertion; or, if the master died before replicating the
                # answer (Redis replication is asynchronous), the answer is lost and the challenge reads
                # as still pending or gone: the login flow then gets no assertion and asks again.
                # Never an assertion without the approval in the surviving state.
                for _ in range(200):
                    status, seen = await rp.call("GET", f"/v1/challenges/{c['id']}")
                    if status == 503:
                        errors.append(time.monotonic())
                        await asyncio.sleep(0.05)
                        continue
                    if status == 404 or seen["status"] in ("pending", "expired"):
                        lost.append(t)
                        assert "assertion" not in seen
                        break
                    assert status == 200, seen
                    assert seen["status"] == "approved", seen
                    assert "assertion" in seen
                    break
                ok.append(t)

        task = asyncio.create_task(sign_ins())
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        cluster.kill(victim)
        # until sign-ins complete again for 2 s, at most 20 s
        deadline = killed_at + 20
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            if ok and ok[-1] > killed_at and len([t for t in ok if t > killed_at]) > 20:
                break
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.wait_for(task, 30)
        assert ok, "no sign-in completed"
        assert ok[-1] > killed_at + 1, (f"sign-ins did not resume after the failover: {len(errors)} errors, "
                                        f"last at +{(max(errors) - killed_at) if errors else 0:.1f} s")
        window = (max(errors) - killed_at) if errors else 0.0
        print(f"failover: {len(errors)} failed sign-in attempts within {window:.2f} s of the kill; "
              f"{len(ok)} completed; {len(lost)} acknowledged answers lost with the master")
        assert window < 10, f"errors for {window:.1f} s after the master was killed"
    finally:
        await server.close()
        cluster.restart_node(victim)  # rejoins as a replica
        cluster.wait_ok()


async def test_a_change_its_replica_cannot_acknowledge_is_refused(
        cluster: RedisCluster, keyring: KeyRingHolder, http: aiohttp.ClientSession) -> None:
    """`store.replica_acks` on Cluster: WAIT goes to the master that owns the user's slot, on the connection
    that made the change. With that master's replica hung (SIGSTOP), a "not me" is refused with 503; once
    the replica is back the phone's new request finds it done."""
    store = {"replica_acks": 1, "replica_ack_timeout_ms": 300, "replica_ack_shortfall": "refuse"}
    server = await start_server(cluster_settings(cluster, free_port(), store=store), keyring)
    hung: list[int] = []
    try:
        rp = LoginFlow(http, server.url)
        phone = await Phone.enroll(await rp.enroll_uri("erin@nhs.net"), session=http)
        first = await rp.create("erin@nhs.net")
        assert await phone.approve(first["id"], number=first["number"]) == "approved"
        second = await rp.create("erin@nhs.net")
        master = cluster.master_of(KeySpace(server.settings.store.prefix).user(second["id"][1:17]))
        hung = cluster.replicas_of(master)
        assert hung, "the user's master has no replica"
        for port in hung:
            os.kill(cluster.pid(port), signal.SIGSTOP)
        with pytest.raises(ServerRejected) as refused:
            await phone.deny(second["id"], reason="not_me")
        assert (refused.value.status, refused.value.error) == (503, "unavailable"), refused.value
        for port in hung:
            os.kill(cluster.pid(port), signal.SIGCONT)
        hung = []
        with pytest.raises(ServerRejected) as again:
            await phone.deny(second["id"], reason="not_me")
        assert again.value.status == 409, again.value
        seen = await rp.status(second["id"])
        assert (seen["status"], seen["reason"]) == ("denied", "not_me")
    finally:
        for port in hung:
            os.kill(cluster.pid(port), signal.SIGCONT)
        await server.close()


async def test_no_acknowledged_answer_is_lost_in_a_failover_with_replica_acks(
        cluster: RedisCluster, keyring: KeyRingHolder, http: aiohttp.ClientSession) -> None:
    """The failover of test_master_failover_during_sign_ins with `store.replica_acks = 1` ("refuse"):
    every approval the phone was told about is on the promoted replica. The promoted master has no replica
    of its own until the killed node rejoins, and changes in its slots are refused (503) meanwhile: the
    test restarts the killed node as soon as the failover is seen, as an operator (or systemd) would."""
    store = {"replica_acks": 1, "replica_ack_timeout_ms": 250, "replica_ack_shortfall": "refuse"}
    server = await start_server(cluster_settings(cluster, free_port(), store=store,
                                                 detection={"push_bombing_max": 1000}), keyring)
    victim = 0
    try:
        rp = LoginFlow(http, server.url)
        phone = await Phone.enroll(await rp.enroll_uri("frank@nhs.net"), session=http)
        key = KeySpace(server.settings.store.prefix).user((await rp.create("frank@nhs.net"))["id"][1:17])
        victim = cluster.master_of(key)
        load = ApprovalLoad(rp, phone, "frank@nhs.net")
        acknowledged = load.acknowledged
        stop = asyncio.Event()
        task = asyncio.create_task(load.run(stop))
        await asyncio.sleep(1.0)
        cluster.kill(victim)
        deadline = time.monotonic() + 20
        while True:  # until a replica is promoted
            with contextlib.suppress(RuntimeError):  # no master for the slot while it fails over
                if cluster.master_of(key) != victim:
                    break
            assert time.monotonic() < deadline, "no failover"
            await asyncio.sleep(0.2)
        await asyncio.to_thread(cluster.restart_node, victim)  # rejoins as the new master's replica
        resumed = len(acknowledged)
        deadline = time.monotonic() + 20
        while len(acknowledged) < resumed + 20:
            assert time.monotonic() < deadline, "sign-ins did not resume once the replica was back"
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(task, 30)
        lost = await load.lost()
        print(f"failover with replica_acks=1: {len(acknowledged)} approvals acknowledged, {len(lost)} lost, "
              f"{len(load.refused)} attempts refused (503)")
        assert not lost, lost
    finally:
        await server.close()
        if victim and not cluster.running(victim):
            cluster.restart_node(victim)


async def test_alerts_raised_during_a_failover_are_all_delivered(
        cluster: RedisCluster, keyring: KeyRingHolder, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """Denials (each raising an alert) run through a master failover with an alert worker on the cluster:
    every denial the server acknowledged has its alert, and every alert reaches the webhook."""
    received: set[str] = set()
    runner, hook_port = await webhook_receiver(lambda body: received.add(body["data"]["id"]))
    secret = SECRET
    # A user whose slot fails over retries its sign-in every 0.2 s until the new master answers: more
    # prompts than the push-bombing rule allows (it once answered the 6th with 429, correctly).
    settings = cluster_settings(cluster, free_port(), detection={"push_bombing_max": 1000})
    server = await start_server(settings, keyring)
    config = tmp_path / "worker.toml"
    config.write_text(f"""
[store]
redis_url = "{cluster.url}"
cluster = true
prefix = "{settings.store.prefix}"
socket_timeout_s = 1.0
[alerts]
retry_schedule_s = [1, 1, 1, 1, 1, 1, 1, 1]
sweep_interval_s = 1.0
reclaim_idle_s = 2.0
[[alerts.sinks]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:{hook_port}/hook"
secret = "{secret}"
""")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    worker = await asyncio.create_subprocess_exec(sys.executable, "-m", "workers.alerts", "-c", str(config),
                                                  "--name", "a1", env=env, cwd=REPO,
                                                  stdout=asyncio.subprocess.DEVNULL,
                                                  stderr=asyncio.subprocess.DEVNULL)
    victim = 0
    try:
        rp = LoginFlow(http, server.url)
        users = [f"d{i}@nhs.net" for i in range(40)]
        uris = [await rp.enroll_uri(u) for u in users]
        phones = await asyncio.gather(*(Phone.enroll(uri, session=http) for uri in uris))
        prefix = settings.store.prefix
        # the master holding the alert stream: killing it tests the worker's side too
        victim = cluster.master_of(f"{prefix}:{{alerts}}:stream")
        acknowledged: list[str] = []

        async def deny(i: int) -> None:
            await asyncio.sleep(i * 0.15)
            for _ in range(100):  # retry through the failover, as a phone app would
                status, c = await rp.call("POST", "/v1/challenges", {"user": users[i]})
                if status == 503:
                    await asyncio.sleep(0.2)
                    continue
                assert status == 201, (status, c)
                try:
                    await phones[i].deny(c["id"], reason="mistake")
                except ServerRejected as exc:
                    if not _transient(exc):
                        raise
                    await asyncio.sleep(0.2)
                    continue
                acknowledged.append(users[i])
                return

        denials = asyncio.gather(*(deny(i) for i in range(len(users))))
        await asyncio.sleep(1.5)
        cluster.kill(victim)
        await asyncio.wait_for(denials, 60)
        assert sorted(acknowledged) == sorted(users)
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        deadline = time.monotonic() + 40
        while True:
            async with http.get(server.url + "/v1/alerts?limit=500", headers=admin) as resp:
                if resp.status == 200:
                    alerts = {a["id"]: a["user"] for a in (await resp.json())["alerts"]}
                    if set(alerts.values()) == set(users) and set(alerts) <= received:
                        break
            assert time.monotonic() < deadline, (
                f"{len(set(users) - set(alerts.values()))} denials without an alert, "
                f"{len(set(alerts) - received)} alerts not delivered")
            await asyncio.sleep(0.5)
        print(f"failover with alerts: {len(users)} denials acknowledged, {len(alerts)} alerts, all delivered")
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 15)
        await server.close()
        await runner.cleanup()
        if victim and not cluster.running(victim):
            cluster.restart_node(victim)


async def test_a_further_phone_is_approved_and_takes_part_on_the_cluster(
        pair: tuple[RunningServer, RunningServer], http: aiohttp.ClientSession) -> None:
    """Registration, the approval prompt, its answer on the other instance and the activation are scripts
    in the user's slot; the prompt's push entry and expiry index go to other slots in one pipeline."""
    a, b = pair
    rp_a, rp_b = LoginFlow(http, a.url), LoginFlow(http, b.url)
    first = await Phone.enroll(await rp_a.enroll_uri("gina@nhs.net"), session=http)
    second = await Phone.enroll(await rp_b.enroll_uri("gina@nhs.net"), session=http)
    assert second.status == "pending_approval"
    on_b = Phone.from_dict({**first.to_dict(), "server_override": b.url}, session=http)
    assert await on_b.approve_new_phone(second.approval_number or "") == "approved"
    assert (await second.activation())["status"] == "active"
    c = await rp_a.create("gina@nhs.net")
    assert await second.approve(c["id"], number=c["number"]) == "approved"

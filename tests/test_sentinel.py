"""pushauth on Redis Sentinel (testkit/redis_sentinel.py: a primary, replicas, three sentinels): the
contract's flows, and the primary killed in the middle of sign-ins, with and without `store.replica_acks`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import ADMIN_TOKEN, ApprovalLoad, LoginFlow, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Phone
from testkit.redis_sentinel import SERVICE, RedisSentinelSet


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[RedisSentinelSet]:
    with RedisSentinelSet(tmp_path) as s:
        yield s


def sentinel_settings(s: RedisSentinelSet, port: int, **store: Any) -> Any:
    return make_settings(s.url(), port, quiet_detection=False, detection={"push_bombing_max": 1000},
                         store={"sentinels": s.sentinels, "sentinel_service": SERVICE,
                                "socket_timeout_s": 1.0, "connect_timeout_s": 0.5, **store})


async def test_the_contract_through_sentinel(sentinel_set: RedisSentinelSet, keyring: KeyRingHolder,
                                             http: aiohttp.ClientSession) -> None:
    server = await start_server(sentinel_settings(sentinel_set, free_port()), keyring)
    try:
        rp = LoginFlow(http, server.url)
        phone = await Phone.enroll(await rp.enroll_uri("gina@nhs.net"), session=http)
        c = await rp.create("gina@nhs.net")
        waiter = asyncio.create_task(rp.status(c["id"], wait=10))  # woken over pub/sub on the primary
        await asyncio.sleep(0.2)
        assert await phone.approve(c["id"], number=c["number"]) == "approved"
        seen = await asyncio.wait_for(waiter, 5)
        assert seen["status"] == "approved"
        assert "assertion" in seen
        d = await rp.create("gina@nhs.net")
        await phone.deny(d["id"], reason="not_me")
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with http.get(server.url + "/v1/alerts", headers=admin) as r:
            assert [a["kind"] for a in (await r.json())["alerts"]] == ["denied_not_me"]
    finally:
        await server.close()


@pytest.mark.parametrize(("acks", "replicas"), [("off", 1), ("refuse", 1), ("refuse", 2)])
async def test_sign_ins_through_a_sentinel_failover(tmp_path: Path, keyring: KeyRingHolder,
                                                    http: aiohttp.ClientSession, acks: str,
                                                    replicas: int) -> None:
    """SIGKILL the primary while sign-ins run. Errors (503) only, never an approval from lost state;
    Sentinel promotes a replica and sign-ins resume. The killed server is restarted once the promotion
    is seen (as systemd would) and rejoins as a replica. With replica_acks = 1 ("refuse") no approval the
    phone was told about is lost; with one replica, changes are refused while the new primary has none
    (until the old primary is back), with two (the deployment README's advice) they resume at once."""
    store = ({} if acks == "off" else
             {"replica_acks": 1, "replica_ack_timeout_ms": 250, "replica_ack_shortfall": "refuse"})
    sentinel_set = RedisSentinelSet(tmp_path / "sentinel", replicas=replicas).start()
    server = await start_server(sentinel_settings(sentinel_set, free_port(), **store), keyring)
    try:
        rp = LoginFlow(http, server.url)
        phone = await Phone.enroll(await rp.enroll_uri("hal@nhs.net"), session=http)
        # a steady ~30 sign-ins/s, under the push-bombing limit
        load = ApprovalLoad(rp, phone, "hal@nhs.net", pause_s=0.02)
        errors, acknowledged = load.refused, load.acknowledged
        stop = asyncio.Event()
        task = asyncio.create_task(load.run(stop))
        await asyncio.sleep(1.0)
        old = sentinel_set.primary()
        killed_at = time.monotonic()
        old.kill()
        deadline = killed_at + 20
        while sentinel_set.primary() is old:
            assert time.monotonic() < deadline, "Sentinel did not promote the replica"
            await asyncio.sleep(0.1)
        promoted_at = time.monotonic()
        await asyncio.to_thread(old.start)  # Sentinel turns it into the new primary's replica
        await asyncio.to_thread(sentinel_set.wait_synced)
        synced_at = time.monotonic()
        deadline = time.monotonic() + 20
        while not [t for t, _ in acknowledged if t > promoted_at]:
            assert time.monotonic() < deadline, f"sign-ins did not resume ({len(errors)} errors)"
            await asyncio.sleep(0.1)
        resumed_at = min(t for t, _ in acknowledged if t > killed_at)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.wait_for(task, 30)
        lost = await load.lost()
        print(f"sentinel failover (replica_acks {acks}, {replicas} replica(s)): promoted "
              f"{promoted_at - killed_at:.2f} s after the kill, the old primary back as its replica at "
              f"+{synced_at - killed_at:.2f} s, first sign-in after the kill at "
              f"+{resumed_at - killed_at:.2f} s; {len(errors)} refused attempts; "
              f"{len(acknowledged)} approvals acknowledged, {len(lost)} lost with the primary")
        if acks == "refuse":
            assert not lost, lost
            if replicas > 1:
                assert resumed_at - killed_at < 10, "errors for more than 10 s after the primary was killed"
        else:  # asynchronous replication: a loss is possible, but not of many (the replica was in sync)
            assert len(lost) <= 3, lost
            assert resumed_at - killed_at < 10, "errors for more than 10 s after the primary was killed"
    finally:
        await server.close()
        sentinel_set.stop()

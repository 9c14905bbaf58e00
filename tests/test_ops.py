"""Operations (issue 7): metrics move as a scenario runs; readiness flips with Redis; `pushauth check`;
SIGTERM under load loses no answer and no alert; a full run logs no secret."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs
from support import (
    ADMIN_TOKEN,
    API_KEY,
    LoginFlow,
    assert_error,
    free_port,
    make_settings,
    sample,
    scrape,
    start_server,
)

from pushauth.config import from_mapping
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.keys import KeyStore
from pushauth.crypto.secrets import sha256_hex
from pushauth.errors import ConfigError
from pushauth.phone import Phone, PhoneError, ServerRejected, parse_enroll_uri
from pushauth.runtime import stop_task
from pushauth.store import KeySpace, heartbeats
from pushauth.store.connection import describe
from testkit.redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent


async def test_metrics_move_as_the_scenario_runs(redis_url: str, keyring: KeyRingHolder,
                                                 http: aiohttp.ClientSession) -> None:
    # store_gauges_max_age_s 0: the stream gauges read afresh on each scrape (by default up to 5 s old)
    running = await start_server(make_settings(redis_url, free_port(), quiet_detection=False,
                                               metrics={"store_gauges_max_age_s": 0}), keyring)
    try:
        rp = LoginFlow(http, running.url)
        before = await scrape(http, running.url)
        phone = await Phone.enroll(await rp.enroll_uri("mo@nhs.net"), session=http)
        c = await rp.create("mo@nhs.net")
        waiter = asyncio.create_task(rp.status(c["id"], wait=10))
        await asyncio.sleep(0.1)
        await phone.approve(c["id"], number=c["number"])
        assert (await waiter)["status"] == "approved"
        d = await rp.create("mo@nhs.net")
        await phone.deny(d["id"], reason="not_me")
        after = await scrape(http, running.url)

        def delta(name: str, **labels: str) -> float:
            return sample(after, name, **labels) - sample(before, name, **labels)

        assert delta("pushauth_challenges_total", app="webmail", outcome="created") == 2
        assert delta("pushauth_challenges_total", app="webmail", outcome="approved") == 1
        assert delta("pushauth_challenges_total", app="webmail", outcome="denied_not_me") == 1
        assert delta("pushauth_time_to_answer_seconds_count") == 2
        assert delta("pushauth_time_to_notify_seconds_count") == 1
        assert delta("pushauth_alerts_announced_total", change="created") == 1
        assert delta("pushauth_http_requests_total", route="/v1/challenges", method="POST", status="201") == 2
        # the alert is queued for delivery (no alert worker runs here): lag 1 on the alert stream
        assert sample(after, "pushauth_stream_lag", stream="alerts") == 1
        assert "pushauth_workers_alive" in after
        status, _ = await rp.call("POST", "/v1/challenges", {"user": "mo@nhs.net"})
        assert status == 403  # suspended after "not me"
        again = await scrape(http, running.url)
        assert sample(again, "pushauth_challenges_total", app="webmail", outcome="refused_suspended") >= 1
    finally:
        await running.close()


async def test_metrics_token(redis_url: str, keyring: KeyRingHolder, http: aiohttp.ClientSession) -> None:
    settings = make_settings(redis_url, free_port(), metrics={"token_sha256": [sha256_hex("scraper-token")]})
    running = await start_server(settings, keyring)
    try:
        async with http.get(running.url + "/metrics") as resp:
            assert resp.status == 401
        async with http.get(running.url + "/metrics",
                            headers={"Authorization": "Bearer scraper-token"}) as resp:
            assert resp.status == 200
    finally:
        await running.close()


# -- who may scrape /metrics (issue 14, item 7) ------------------------------------------------------------

SCRAPER_TOKEN = "scraper-token-for-prometheus-0000000000001"


@contextlib.asynccontextmanager
async def metrics_server(redis_url: str, keyring: KeyRingHolder, **sections: Any) -> AsyncIterator[str]:
    running = await start_server(make_settings(redis_url, free_port(), **sections), keyring)
    try:
        yield running.url
    finally:
        await running.close()


async def get_metrics(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, Any]:
    async with http.get(url + "/metrics", headers=headers) as resp:
        body = await resp.read()
        if resp.status == 200:
            return 200, body.decode()
        assert resp.content_type == "application/json", body
        return resp.status, json.loads(body)


async def test_metrics_refused_to_a_peer_outside_allow_from_whatever_it_forwards(
        redis_url: str, keyring: KeyRingHolder, http: aiohttp.ClientSession) -> None:
    """Only the TCP peer counts: 127.0.0.1 is not in 10.0.0.0/8, and its X-Forwarded-For saying 10.1.2.3 is
    not believed, even though 127.0.0.0/8 is a trusted proxy for every other purpose."""
    async with metrics_server(redis_url, keyring, metrics={"allow_from": ["10.0.0.0/8"]},
                              server={"trusted_proxies": ["127.0.0.0/8"]}) as url:
        for headers in ({}, {"X-Forwarded-For": "10.1.2.3"}, {"X-Forwarded-For": "10.1.2.3, 10.0.0.1"}):
            status, body = await get_metrics(http, url, **headers)
            assert_error(status, body, 403, "forbidden")
            assert "pushauth_challenges_total" not in json.dumps(body)
        status, body = await get_metrics(http, url, Authorization=f"Bearer {SCRAPER_TOKEN}")
        assert_error(status, body, 403, "forbidden")  # no token is configured: a token opens nothing


async def test_metrics_default_to_this_host(redis_url: str, keyring: KeyRingHolder) -> None:
    settings = make_settings(redis_url, free_port())
    assert settings.metrics.allow_from == ["127.0.0.0/8", "::1/128"]
    assert settings.metrics.token_sha256 == []
    with pytest.raises(ConfigError, match=r"metrics: allow_from: '10\.0\.0\.0/33'"):
        make_settings(redis_url, free_port(), metrics={"allow_from": ["10.0.0.0/33"]})


async def test_a_metrics_token_opens_metrics_from_anywhere(
        redis_url: str, keyring: KeyRingHolder, http: aiohttp.ClientSession) -> None:
    only_tokens = {"allow_from": ["10.0.0.0/8"], "token_sha256": [sha256_hex(SCRAPER_TOKEN)]}
    async with metrics_server(redis_url, keyring, metrics=only_tokens) as url:
        status, text = await get_metrics(http, url, Authorization=f"Bearer {SCRAPER_TOKEN}")
        assert status == 200
        assert "pushauth_http_requests_total" in text
        for headers in ({}, {"Authorization": "Bearer not-the-scraper-token-000000000000000"},
                        {"Authorization": f"Basic {SCRAPER_TOKEN}"}):
            status, body = await get_metrics(http, url, **headers)
            assert_error(status, body, 401, "unauthorized")


async def test_wrong_metrics_tokens_count_toward_the_auth_failure_block(
        redis_url: str, keyring: KeyRingHolder, http: aiohttp.ClientSession) -> None:
    """Guessing the metrics token from 127.0.0.2: three wrong tokens block the address (its right token
    too, then, and everything else it sends); 127.0.0.1 scrapes on."""
    sections: dict[str, Any] = {"metrics": {"token_sha256": [sha256_hex(SCRAPER_TOKEN)]},
                                "rate_limits": {"auth_failures": 3}}
    async with metrics_server(redis_url, keyring, **sections) as url, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as elsewhere:
        with capture_logs() as logs:
            for i in range(3):
                status, body = await get_metrics(elsewhere, url, Authorization=f"Bearer guess-{i:040d}")
                assert_error(status, body, 401, "unauthorized")
            status, body = await get_metrics(elsewhere, url, Authorization=f"Bearer {SCRAPER_TOKEN}")
            assert_error(status, body, 429, "rate_limited")
        assert [e["ip"] for e in logs if e["event"] == "auth_failures_blocked"] == ["127.0.0.2"]
        async with elsewhere.get(url + "/.well-known/jwks.json") as resp:
            assert resp.status == 429
        status, _ = await get_metrics(http, url, Authorization=f"Bearer {SCRAPER_TOKEN}")
        assert status == 200


async def test_scrapes_count_toward_no_quota_and_read_redis_once_per_max_age(
        redis_url: str, keyring: KeyRingHolder, http: aiohttp.ClientSession) -> None:
    """A flood of scrapes, at once and one after another: none is refused or counted against the address's
    quota, and the queue gauges are read from Redis once (ZCARD: one per stream per read)."""
    async with metrics_server(redis_url, keyring, rate_limits={"ip_requests": 3}) as url, \
            aioredis.Redis.from_url(redis_url) as client:
        async def zcards() -> int:
            stats = await client.info("commandstats")
            return int(stats.get("cmdstat_zcard", {}).get("calls", 0))

        before = await zcards()
        statuses = await asyncio.gather(*(get_metrics(http, url) for _ in range(50)))
        statuses += [await get_metrics(http, url) for _ in range(50)]
        assert {status for status, _ in statuses} == {200}
        assert await zcards() - before == 2  # the push and alerts streams' retry sets, once
        for expected in (200, 200, 200, 429):  # the address's whole quota is still there
            async with http.get(url + "/.well-known/jwks.json") as resp:
                assert resp.status == expected


async def cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run `python -m ...` without blocking this event loop (the server under test runs on it)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", *args, env=env, cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _readyz(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url + "/readyz") as resp:
        return resp.status, await resp.json()


async def test_readiness_flips_with_redis_and_check_needs_the_workers(
        private_redis: RedisServer, keyring: KeyRingHolder, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    running = await start_server(make_settings(private_redis.url, free_port()), keyring)
    config = tmp_path / "check.toml"
    config.write_text(f'[store]\nredis_url = "{private_redis.url}"\n[keys]\nephemeral = true\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        async with http.get(running.url + "/healthz") as resp:
            assert resp.status == 200
        status, body = await _readyz(http, running.url)
        # Redis and keys fine, but no expiry worker runs yet: ready for sign-ins, "degraded"
        assert (status, body["status"], body["missing_workers"]) == (200, "degraded", ["expiry"])
        rc, out = await cli("pushauth", "-c", str(config), "check", env=env)
        assert rc == 1, out

        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workers.expiry", "-c", str(config), "--name", "e1", env=env, cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 15
            while (await _readyz(http, running.url))[1]["status"] != "ready":
                assert time.monotonic() < deadline, await _readyz(http, running.url)
                await asyncio.sleep(0.2)
            rc, out = await cli("pushauth", "-c", str(config), "check", env=env)
            assert rc == 0, out
            rc, out = await cli("pushauth", "check", "--url", running.url, env=env)
            assert rc == 0, out

            private_redis.stop()
            status, body = await _readyz(http, running.url)
            assert (status, body["status"]) == (503, "not ready"), body
            assert body["checks"]["redis"].startswith("unreachable")
            rc, out = await cli("pushauth", "-c", str(config), "check", env=env)
            assert rc == 1, out

            private_redis.start()
            deadline = time.monotonic() + 20
            while (await _readyz(http, running.url))[0] != 200:
                assert time.monotonic() < deadline, "readiness did not come back with Redis"
                await asyncio.sleep(0.2)
        finally:
            worker.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(worker.wait(), 15) == 0
    finally:
        await running.close()


# ---------------------------------------------------------------------------------------------------------
# SIGTERM during load
# ---------------------------------------------------------------------------------------------------------


def server_config(path: Path, redis_url: str, port: int) -> Path:
    path.write_text(f"""
[server]
port = {port}
base_url = "http://127.0.0.1:{port}"
[store]
redis_url = "{redis_url}"
[keys]
ephemeral = true
[[applications]]
id = "webmail"
name = "Webmail"
api_key_sha256 = ["{sha256_hex(API_KEY)}"]
[admin]
token_sha256 = ["{sha256_hex(ADMIN_TOKEN)}"]
[detection]
push_bombing_max = 1000
[logging]
level = "info"
format = "json"
""")
    return path


async def serve(config: Path, log: IO[bytes] | None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pushauth", "-c", str(config), "serve", cwd=REPO,
        stdout=log if log is not None else asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)})


async def wait_http(http: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.returncode is None, "server exited at start"
        try:
            async with http.get(url + "/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("server did not start")


async def serve_start_lines(config: Path, url: str, http: aiohttp.ClientSession, log_path: Path) -> list[Any]:
    """Start `pushauth serve`, stop it once it answers, and return its log as JSON objects (after checking
    the log has no blank line: one line per event)."""
    with log_path.open("wb") as log:
        proc = await serve(config, log)
        try:
            await wait_http(http, url, proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 40) == 0
    lines = log_path.read_text().splitlines()  # noqa: ASYNC240 - the server has exited
    assert lines, "the server logged nothing"
    assert all(line.strip() for line in lines), f"blank lines in the log: {lines}"
    return [json.loads(line) for line in lines if line.startswith("{")]


async def test_serve_says_what_it_serves_and_which_workers_are_missing(redis_url: str, tmp_path: Path,
                                                                         http: aiohttp.ClientSession) -> None:
    """At start `pushauth serve` logs one line: where it listens, its base_url, its store (without the
    password) and its keys; then a warning naming each worker kind this deployment needs that has not
    beaten, with the command that starts it. Started a second time with the expiry worker running, only
    the alert worker is missing."""
    password = "s3cret-redis-password"  # Redis 6+: the default user (nopass) accepts any password
    store_url = redis_url.replace("redis://", f"redis://default:{password}@")
    port = free_port()
    keys = tmp_path / "keys"
    kid = KeyStore(keys).generate().kid
    secret = "whsec_" + base64.b64encode(b"serve-start-test-secret-0123456").decode()
    config = tmp_path / "server.toml"
    config.write_text(f"""
[server]
port = {port}
base_url = "https://pushauth.example.org"
[store]
redis_url = "{store_url}"
[keys]
path = "{keys}"
[logging]
format = "json"
[[alerts.sinks]]
name = "soc"
kind = "webhook"
url = "http://127.0.0.1:9/hook"
secret = "{secret}"
""")
    url = f"http://127.0.0.1:{port}"

    events = await serve_start_lines(config, url, http, tmp_path / "first.log")
    assert password not in (tmp_path / "first.log").read_text()
    serving = [e for e in events if e["event"] == "serving"]
    assert len(serving) == 1, events
    assert serving[0]["level"] == "info"
    assert {k: serving[0][k] for k in ("listen", "base_url", "store", "keys", "current_kid")} == {
        "listen": url, "base_url": "https://pushauth.example.org",
        "store": redis_url.replace("redis://", "redis://default:***@"), "keys": str(keys.resolve()),
        "current_kid": kid}
    missing = [e for e in events if e["event"] == "workers_missing"]
    assert len(missing) == 1, events
    assert missing[0]["level"] == "warning"
    assert missing[0]["missing"] == ["expiry", "alerts"]
    assert missing[0]["start"] == [f"python -m workers.{kind} -c {shlex.quote(str(config))}"
                                   for kind in ("expiry", "alerts")]
    assert "alert" in missing[0]["meanwhile"]

    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.expiry", "-c", str(config), cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + 15
        while not (await heartbeats.live_workers(redis, KeySpace("pa")))["expiry"]:
            assert time.monotonic() < deadline, "the expiry worker never beat"
            await asyncio.sleep(0.1)
        events = await serve_start_lines(config, url, http, tmp_path / "second.log")
    finally:
        await redis.aclose()
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 15) == 0
    assert [(e["missing"], e["start"]) for e in events if e["event"] == "workers_missing"] == [
        (["alerts"], [f"python -m workers.alerts -c {shlex.quote(str(config))}"])]


def test_the_store_is_described_without_its_password() -> None:
    def described(**store: Any) -> str:
        return describe(from_mapping({"store": store}).store)

    assert described() == "embedded (in this process; lost on restart)"
    assert described(redis_url="redis://10.0.0.5:6379/0") == "redis://10.0.0.5:6379/0"
    assert described(redis_url="rediss://pushauth:p%40ss@redis.internal:6380/2") == (
        "rediss://pushauth:***@redis.internal:6380/2")
    assert described(redis_url="redis://:p@ss@redis.internal/0") == "redis://:***@redis.internal/0"
    assert described(redis_url="unix:///run/redis.sock?db=1&password=hunter2") == (
        "unix:///run/redis.sock?db=1&password=***")
    assert described(redis_url="redis://:pw@node1:7000/0", cluster=True) == (
        "redis cluster via redis://:***@node1:7000/0")
    assert described(redis_url="redis://:pw@pushauth/0", sentinels=["s1:26379", "s2:26379"],
                     sentinel_service="main") == (
        "redis sentinel service main via s1:26379, s2:26379 (redis://:***@pushauth/0)")


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_serve_runs_on_the_event_loop_it_is_given(loop: str, redis_url: str, tmp_path: Path,
                                                       http: aiohttp.ClientSession) -> None:
    """server.event_loop picks the loop (auto, the default, is uvloop: the other tests that start `pushauth
    serve` run on it); a whole sign-in works on either, and the serving line says which."""
    port = free_port()
    config = server_config(tmp_path / "server.toml", redis_url, port)
    config.write_text(config.read_text().replace("[server]\n", f'[server]\nevent_loop = "{loop}"\n', 1))
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = await serve(config, log)
        try:
            await wait_http(http, url, proc)
            rp = LoginFlow(http, url)
            phone = await Phone.enroll(await rp.enroll_uri("loop@nhs.net"), session=http)
            created = await rp.create("loop@nhs.net")
            [challenge] = await phone.pending()
            assert await phone.approve(challenge, number=created["number"]) == "approved"
            assert (await rp.status(created["id"]))["status"] == "approved"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 40) == 0
    events = [json.loads(line) for line in log_path.read_text().splitlines()
              if line.startswith("{")]
    [serving] = [e for e in events if e["event"] == "serving"]
    assert serving["event_loop"] == loop


async def test_sigterm_during_load_loses_no_answer_and_no_alert(redis_url: str, tmp_path: Path,
                                                                http: aiohttp.ClientSession) -> None:
    port = free_port()
    config = server_config(tmp_path / "server.toml", redis_url, port)
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("wb")
    proc = await serve(config, log)
    try:
        await wait_http(http, url, proc)
        rp = LoginFlow(http, url)
        users = [f"load{i}@nhs.net" for i in range(40)]
        uris = [await rp.enroll_uri(u) for u in users]
        phones = [await Phone.enroll(uri, session=http) for uri in uris]
        created = [await rp.create(u) for u in users]
        fetched = [await p.fetch(c["id"]) for p, c in zip(phones, created, strict=True)]
        answered: dict[str, str] = {}

        async def answer(i: int) -> None:
            await asyncio.sleep(i * 0.01)
            try:
                if i % 2:
                    answered[users[i]] = await phones[i].deny(fetched[i], reason="not_me")
                else:
                    answered[users[i]] = await phones[i].approve(fetched[i], number=created[i]["number"])
            except (ServerRejected, PhoneError):  # refused, or the connection closed: not acknowledged
                pass

        tasks = [asyncio.create_task(answer(i)) for i in range(len(users))]
        await asyncio.sleep(0.15)
        proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*tasks)
        assert await asyncio.wait_for(proc.wait(), 40) == 0
        assert answered, "no answer was acknowledged before the shutdown: the test proved nothing"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    # Every answer the server acknowledged is in Redis, and every acknowledged "not me" has its alert.
    proc = await serve(config, None)
    try:
        await wait_http(http, url, proc)
        rp = LoginFlow(http, url)
        admin_headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with http.get(url + "/v1/alerts?limit=500", headers=admin_headers) as resp:
            alerted = {a["user"] for a in (await resp.json())["alerts"]}
        for i, user in enumerate(users):
            if user not in answered:
                continue
            seen = await rp.status(created[i]["id"])
            assert seen["status"] == answered[user], (user, seen)
            if answered[user] == "denied":
                assert user in alerted, user
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 40)
    # The server's own log of the whole run (JSON lines) holds no secret that passed through it.
    text = (tmp_path / "server.log").read_text()
    assert text.count('"event":"request"') >= 3 * len(users), "expected one canonical line per request"
    secrets = {"API key": API_KEY, "admin token": ADMIN_TOKEN,
               **{f"enrollment code {i}": parse_enroll_uri(u).code for i, u in enumerate(uris)},
               **{f"nonce {i}": f.nonce for i, f in enumerate(fetched)},
               **{f"challenge JWS {i}": f.token for i, f in enumerate(fetched)}}
    for what, value in secrets.items():
        assert value not in text, f"{what} is in the server's log"
    assert not any(f'"number":"{c["number"]}"' in text for c in created), "a number is in the log"


async def test_sigterm_answers_long_polls_at_once(redis_url: str, tmp_path: Path,
                                                  http: aiohttp.ClientSession) -> None:
    """A login flow long-polling (wait=30) when the server is told to stop gets the current state back
    at once, rather than holding the shutdown for 30 s; it then asks another instance."""
    port = free_port()
    config = server_config(tmp_path / "server.toml", redis_url, port)
    url = f"http://127.0.0.1:{port}"
    proc = await serve(config, None)
    try:
        await wait_http(http, url, proc)
        rp = LoginFlow(http, url)
        await Phone.enroll(await rp.enroll_uri("wait@nhs.net"), session=http)
        c = await rp.create("wait@nhs.net")
        waiter = asyncio.create_task(rp.status(c["id"], wait=30))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        seen = await asyncio.wait_for(waiter, 10)
        assert seen["status"] == "pending"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert time.monotonic() - started < 5
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_shutdown_stops_a_task_that_swallowed_its_cancellation() -> None:
    """The pub/sub listener once held a shutdown for 180 s: redis-py turned the cancellation into a read
    timeout and the loop went on reading. The app's stop helper cancels again until the task is done."""
    reads = 0

    async def listener() -> None:
        nonlocal reads
        swallowed = False
        while True:
            try:
                await asyncio.sleep(0.05)
                reads += 1
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed = True  # what the library did with the first one

    task = asyncio.create_task(listener())
    await asyncio.sleep(0.1)
    await asyncio.wait_for(stop_task(task), 3)
    assert task.cancelled()
    assert reads >= 1

#!/usr/bin/env python3
"""OpenID CIBA benchmark (issue 19). Not a test: `.venv/bin/python bench/ciba.py --help`.

One `pushauth serve` on CPU 0 with `[oidc] enabled` and two CIBA clients (poll and ping); redis-server,
this load generator, its phones (pushauth/phone.py) and a notification receiver on CPU 1.

    throughput  closed loop at --concurrency for --duration s, poll mode: bc-authorize, the phone's list
                and answer, one token request (the phone answers before the first poll, so it is the
                cheapest complete sign-in; a real client also pays its authorization_pending polls)
    latency     open loop at --rate/s for --rate-duration s, ping mode: from the moment the phone sends its
                answer to the ping arriving at the client's notification endpoint, p50 and p99
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.cycle import (
    APP_ID,
    HOST,
    Load,
    VPhone,
    bench_child,
    config_head,
    free_port,
    now,
    proc_cpu_s,
    start_redis,
    summarise,
    wait_http,
)
from pushauth.crypto.secrets import sha256_hex

REPO = Path(__file__).resolve().parent.parent
SERVER_CPU, OTHERS_CPU = 0, 1
SECRET = "bench-ciba-client-secret-0123456789"  # noqa: S105 (a benchmark's own)
GRANT = "urn:openid:params:grant-type:ciba"


def write_config(path: Path, port: int, redis_port: int, notify_url: str) -> None:
    path.write_text(config_head(port, redis_port, "Service desk") + f"""\
[oidc]
enabled = true
[[oidc.clients]]
client_id = "desk"
name = "Service desk"
application = "{APP_ID}"
secret_sha256 = ["{sha256_hex(SECRET)}"]
redirect_uris = ["http://127.0.0.1:9/unused"]
first_factor = "passwordless"
ciba = "poll"
[[oidc.clients]]
client_id = "kiosk"
name = "Kiosk"
application = "{APP_ID}"
secret_sha256 = ["{sha256_hex(SECRET)}"]
redirect_uris = ["http://127.0.0.1:9/unused"]
first_factor = "passwordless"
ciba = "ping"
ciba_notification_endpoint = "{notify_url}"
[logging]
level = "warning"
format = "json"
""")


def _auth(client_id: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{SECRET}".encode()).decode()}


async def _answer(vp: VPhone, number: str) -> float:
    pending = await vp.phone.pending()
    newest = max(pending, key=lambda ch: ch.iat)
    t_send = now()
    if await vp.phone.approve(newest, number=number) != "approved":
        raise RuntimeError("not approved")
    return t_send


async def poll_signin(base: str, http: aiohttp.ClientSession, vp: VPhone) -> None:
    async with http.post(f"{base}/oidc/bc-authorize", headers=_auth("desk"),
                         data={"scope": "openid", "login_hint": vp.user}) as resp:
        started = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"bc-authorize {resp.status} {started}")
    await _answer(vp, started["pushauth_number"])
    async with http.post(f"{base}/oidc/token", headers=_auth("desk"),
                         data={"grant_type": GRANT, "auth_req_id": started["auth_req_id"]}) as resp:
        body = await resp.json()
        if resp.status != 200 or "id_token" not in body:
            raise RuntimeError(f"token {resp.status} {body}")


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    os.sched_setaffinity(0, {OTHERS_CPU})
    pinged: dict[str, asyncio.Future[float]] = {}

    async def notified(request: web.Request) -> web.Response:
        auth_req_id = (await request.json())["auth_req_id"]
        fut = pinged.get(auth_req_id)
        if fut is not None and not fut.done():
            fut.set_result(now())
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/notify", notified)
    runner = web.AppRunner(receiver, access_log=None)
    await runner.setup()
    notify_port = free_port()
    await web.TCPSite(runner, HOST, notify_port).start()
    redis_child, redis_port = start_redis(tmp, OTHERS_CPU)
    port = free_port()
    config = tmp / "config.toml"
    write_config(config, port, redis_port, f"http://{HOST}:{notify_port}/notify")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    serve = bench_child("serve", [sys.executable, "-m", "pushauth", "-c", str(config), "serve"],
                        tmp / "serve.log", cpu=SERVER_CPU, env=env)
    base = f"http://{HOST}:{port}"
    results: dict[str, Any] = {}
    try:
        wait_http(base + "/healthz", serve)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            load = Load(http, base)
            phones = [await load.enroll(f"desk{i}@bench.example") for i in range(max(args.concurrency, 32))]
            stop_at = now() + args.duration
            done = failed = 0

            async def worker(vp: VPhone) -> None:
                nonlocal done, failed
                while now() < stop_at:
                    try:
                        await poll_signin(base, http, vp)
                        done += 1
                    except (RuntimeError, aiohttp.ClientError, ValueError) as exc:
                        failed += 1
                        print(f"  failed: {exc}", file=sys.stderr)

            cpu0, t0 = proc_cpu_s(serve.pid), now()
            await asyncio.gather(*(worker(vp) for vp in phones[:args.concurrency]))
            wall, cpu = now() - t0, proc_cpu_s(serve.pid) - cpu0
            results["throughput"] = {"signins": done, "failed": failed, "per_s": done / wall,
                                     "server_cpu_ms": cpu / max(done, 1) * 1000, "core_busy": cpu / wall}
            r = results["throughput"]
            print(f"poll: {r['per_s']:.0f} CIBA sign-ins/s, server {r['server_cpu_ms']:.2f} ms CPU each "
                  f"(its core {r['core_busy']:.0%} busy), {failed} failed", flush=True)

            idle: asyncio.Queue[VPhone] = asyncio.Queue()
            for vp in phones:
                idle.put_nowait(vp)
            latencies: list[float] = []

            async def ping_signin() -> None:
                vp = await idle.get()
                try:
                    async with http.post(f"{base}/oidc/bc-authorize", headers=_auth("kiosk"),
                                         data={"scope": "openid", "login_hint": vp.user,
                                               "client_notification_token": "t" * 32}) as resp:
                        started = await resp.json()
                    fut = pinged[started["auth_req_id"]] = asyncio.get_running_loop().create_future()
                    t_send = await _answer(vp, started["pushauth_number"])
                    latencies.append(await asyncio.wait_for(fut, 10) - t_send)
                finally:
                    idle.put_nowait(vp)

            tasks = []
            start = now()
            for i in range(int(args.rate * args.rate_duration)):
                await asyncio.sleep(max(0.0, start + i / args.rate - now()))
                tasks.append(asyncio.create_task(ping_signin()))
            await asyncio.gather(*tasks, return_exceptions=True)
            ms = summarise(latencies)
            results["ping_latency_ms"] = ms
            print(f"ping at {args.rate:g}/s: phone sends its answer -> ping received p50 {ms['p50']:.2f} ms, "
                  f"p99 {ms['p99']:.2f} ms (n {len(latencies)})", flush=True)
    finally:
        for child in (serve, redis_child):
            with contextlib.suppress(Exception):
                child.stop()
        await runner.cleanup()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--rate-duration", type=float, default=8.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pushauth-bench-ciba-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

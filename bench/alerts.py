#!/usr/bin/env python3
"""Alert delivery benchmark (issue 4). Not a test: `.venv/bin/python bench/alerts.py [--json FILE]`.

Starts its own redis-server, one `pushauth serve` and one `python -m workers.alerts` with one webhook sink,
and a Standard Webhooks receiver in this process that checks every signature (HMAC-SHA256, as any receiver
must) and stamps each arrival. Every alert comes from the real path: a simulated phone (real P-256 key)
answers "I didn't request this" to a real challenge, the RESPOND script writes the alert with the denial,
the server announces it, the worker delivers it.

    latency     users deny at a fixed rate (open loop, --rate per second for --duration s): for each, the
                time from the phone SENDING its signed deny to the receiver having the webhook; p50/p99
    throughput  --alerts users deny with the worker stopped (the stream holds that many alerts); then the
                worker starts and drains them: first to last arrival; alerts/s and worker CPU per alert

Pinning as bench/push.py: the worker on CPU 0; the server, Redis and this process on CPU 1 (so the worker
figure is a lower bound). Exit status 1 if any alert was not delivered or a signature did not verify.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.cycle import (
    API_KEY,
    HOST,
    bench_child,
    free_port,
    proc_cpu_s,
    start_redis,
    summarise,
    wait_http,
    write_config,
)
from pushauth.phone import Phone
from testkit.processes import Child

REPO = Path(__file__).resolve().parent.parent
WORKER_CPU = 0
OTHER_CPU = 1
SECRET = "whsec_" + base64.b64encode(b"bench-alert-webhook-secret-0123456789").decode()


def now() -> float:
    return time.perf_counter()


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}/hook"
        self.arrived: dict[str, float] = {}  # user -> first arrival
        self.deliveries = 0
        self.bad = 0
        self._key = base64.b64decode(SECRET.removeprefix("whsec_"))
        self.runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        at = now()
        h = request.headers
        signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + body
        expected = "v1," + base64.b64encode(hmac.new(self._key, signed, hashlib.sha256).digest()).decode()
        if not any(hmac.compare_digest(expected, s) for s in h.get("webhook-signature", "").split()):
            self.bad += 1
            return web.Response(status=401)
        self.deliveries += 1
        user = json.loads(body)["data"]["user"]
        self.arrived.setdefault(user, at)
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, HOST, self.port, backlog=1024).start()


def write_configs(tmp: Path, port: int, redis_port: int, receiver: Receiver) -> tuple[Path, Path]:
    server_cfg = tmp / "server.toml"
    write_config(server_cfg, port, redis_port, "warning")
    sinks = f"""
[alerts]
[[alerts.sinks]]
name = "bench-hook"
kind = "webhook"
url = "{receiver.url}"
secret = "{SECRET}"
timeout_s = 10.0
"""
    text = server_cfg.read_text().replace("[logging]", sinks + "\n[logging]")
    server_cfg.write_text(text)
    worker_cfg = tmp / "worker.toml"
    worker_cfg.write_text(text)
    return server_cfg, worker_cfg


async def enroll(http: aiohttp.ClientSession, base: str, users: list[str],
                 concurrency: int = 32) -> list[Phone]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    sem = asyncio.Semaphore(concurrency)

    async def one(user: str) -> Phone:
        async with sem:
            async with http.post(base + "/v1/enrollments", json={"user": user}, headers=headers) as resp:
                uri = (await resp.json())["uri"]
            return await Phone.enroll(uri, session=http)

    return list(await asyncio.gather(*(one(u) for u in users)))


async def deny_one(http: aiohttp.ClientSession, base: str, phone: Phone) -> float:
    """Create a prompt for the phone's user and have the phone deny it "not me". Returns when the deny was
    sent (after the challenge was fetched and verified, so only the answer and what follows are timed)."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with http.post(base + "/v1/challenges", json={"user": phone.user,
                                                        "context": {"ip": "198.51.100.9"}},
                         headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        cid = (await resp.json())["id"]
    challenge = await phone.fetch(cid)
    sent = now()
    assert await phone.deny(challenge, reason="not_me") == "denied"
    return sent


def start_worker(tmp: Path, cfg: Path, name: str) -> Child:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PUSHAUTH_")}, "PYTHONPATH": str(REPO)}
    return bench_child(name, [sys.executable, "-m", "workers.alerts", "-c", str(cfg), "--name", name],
                       tmp / f"{name}.log", cpu=WORKER_CPU, env=env)


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    os.sched_setaffinity(0, {OTHER_CPU})
    redis_child, redis_port = start_redis(tmp, OTHER_CPU)
    receiver = Receiver()
    await receiver.start()
    port = free_port()
    server_cfg, worker_cfg = write_configs(tmp, port, redis_port, receiver)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHAUTH_")}
    server = bench_child("server", [sys.executable, "-m", "pushauth", "-c", str(server_cfg), "serve"],
                         tmp / "server.log", cpu=OTHER_CPU, env=env)
    children = [redis_child, server]
    results: dict[str, Any] = {}
    try:
        wait_http(f"http://{HOST}:{port}/.well-known/jwks.json", server)
        base = f"http://{HOST}:{port}"
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector) as http:
            lat_users = [f"lat{i}@bench.example" for i in range(int(args.rate * args.duration))]
            thr_users = [f"thr{i}@bench.example" for i in range(args.alerts)]
            print(f"enrolling {len(lat_users) + len(thr_users)} phones ...", flush=True)
            lat_phones = await enroll(http, base, lat_users)
            thr_phones = await enroll(http, base, thr_users)

            # -- latency -----------------------------------------------------------------------------------
            worker = start_worker(tmp, worker_cfg, "w-latency")
            children.append(worker)
            await asyncio.sleep(2.0)  # imports and connections: not what is measured
            print(f"latency: {len(lat_phones)} denials at {args.rate}/s ...", flush=True)
            sent: dict[str, float] = {}
            tasks = []
            t0 = now()
            for i, phone in enumerate(lat_phones):
                delay = t0 + i / args.rate - now()
                if delay > 0:
                    await asyncio.sleep(delay)

                async def go(p: Phone = phone) -> None:
                    sent[p.user] = await deny_one(http, base, p)

                tasks.append(asyncio.create_task(go()))
            await asyncio.gather(*tasks)
            for _ in range(600):  # up to 30 s for the last webhooks
                if set(lat_users) <= set(receiver.arrived):
                    break
                await asyncio.sleep(0.05)
            lat = [receiver.arrived[u] - sent[u] for u in lat_users if u in receiver.arrived]
            results["latency"] = {"rate": args.rate, "alerts": len(lat_users), "delivered": len(lat),
                                  "deny_sent_to_webhook_ms": summarise(lat)}
            worker.stop()

            # -- throughput --------------------------------------------------------------------------------
            print(f"throughput: {len(thr_phones)} alerts queued with the worker stopped ...", flush=True)
            sem = asyncio.Semaphore(32)

            async def queued(p: Phone) -> None:
                async with sem:
                    await deny_one(http, base, p)

            await asyncio.gather(*(queued(p) for p in thr_phones))
            worker = start_worker(tmp, worker_cfg, "w-throughput")
            children.append(worker)
            first: float | None = None
            cpu0 = 0.0
            deadline = now() + 300
            while now() < deadline:
                got = [receiver.arrived[u] for u in thr_users if u in receiver.arrived]
                if got and first is None:
                    first = min(got)
                    cpu0 = proc_cpu_s(worker.pid)
                if len(got) == len(thr_users):
                    break
                await asyncio.sleep(0.01)
            cpu1 = proc_cpu_s(worker.pid)
            got = sorted(receiver.arrived[u] for u in thr_users if u in receiver.arrived)
            span = (got[-1] - got[0]) if len(got) > 1 else float("nan")
            results["throughput"] = {
                "alerts": len(thr_users), "delivered": len(got),
                "alerts_per_s": (len(got) - 1) / span if span == span and span > 0 else None,
                "worker_cpu_ms_per_alert": (cpu1 - cpu0) * 1000 / max(1, len(got) - 1),
            }
            results["receiver"] = {"deliveries": receiver.deliveries, "bad_signatures": receiver.bad}
    finally:
        for child in reversed(children):
            child.stop()
        if receiver.runner is not None:
            await receiver.runner.cleanup()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=20.0, help="denials per second in the latency phase")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of the latency phase")
    ap.add_argument("--alerts", type=int, default=2000, help="alerts queued for the throughput phase")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    lat, thr = results["latency"], results["throughput"]
    s = lat["deny_sent_to_webhook_ms"]
    print(f"\nlatency at {lat['rate']:g} denials/s: deny sent -> webhook received p50 {s['p50']:.1f} ms, "
          f"p90 {s['p90']:.1f} ms, p99 {s['p99']:.1f} ms, max {s['max']:.1f} ms "
          f"({lat['delivered']}/{lat['alerts']} delivered)  [bar: p99 < 1000 ms]")
    rate = thr["alerts_per_s"]
    cpu = thr["worker_cpu_ms_per_alert"]
    print(f"throughput, one worker: {rate:.0f} alerts/s, worker {cpu:.2f} ms CPU per alert "
          f"({thr['delivered']}/{thr['alerts']} delivered)" if rate else f"throughput: {thr}")
    print(f"receiver: {results['receiver']['deliveries']} deliveries, "
          f"{results['receiver']['bad_signatures']} bad signatures")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    ok = (lat["delivered"] == lat["alerts"] and thr["delivered"] == thr["alerts"]
          and results["receiver"]["bad_signatures"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

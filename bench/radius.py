#!/usr/bin/env python3
"""RADIUS front benchmark (issue 17). Not a test: `.venv/bin/python bench/radius.py --help`.

Processes: redis-server and one `pushauth serve` (the phones' API) on CPU 1 with this load generator; one
`pushauth radius` on CPU 0, auto mode, `primary = "none"` (no password check: the front's own cost).
Phones are real enrolled devices (P-256 keys, pushauth/phone.py) that approve every prompt; this process
is the VPN, sending Access-Requests over UDP (pyrad's packet code: User-Password hidden, a
Message-Authenticator, the reply's authenticators checked).

One RADIUS sign-in:

    VPN    Access-Request                 -> held by pushauth radius (prompt created, pushed)
    phone  GET /v1/device/challenges      (what a push wakes the app to do; polled here every 5 ms until
                                           the prompt is there, as no push provider runs)
    phone  POST .../response              approve
    VPN    <- Access-Accept

Phases:
    throughput   closed loop at --concurrency for --duration s: Access-Requests answered per second, and
                 the radius process's CPU per sign-in (/proc/<pid>/stat)
    latency      open loop at --rate/s: from the phone sending its answer to the login side knowing, for
                 the RADIUS front (the Access-Accept arrives) and, back to back, the REST cycle (the
                 waiting GET /v1/challenges/{id}?wait= returns): p50 and p99 of each, and the difference.
                 (From the phone's 200 is no measure here: the UDP reply often lands before the HTTP one.)
    retransmits  --retransmit-signins sign-ins, each Access-Request sent 1 + 3 times (every 0.3 s) while the
                 phone answers after 1.2 s: prompts created per sign-in (must be exactly 1.00) and replies
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from pyrad import packet as rp

from bench.cycle import (
    API_KEY,
    APP_ID,
    HOST,
    PREFIX,
    bench_child,
    config_head,
    free_port,
    now,
    proc_cpu_s,
    start_redis,
    summarise,
    wait_http,
)
from pushauth.phone import Phone
from pushauth.radius.packets import load_dictionary

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-radius-shared-secret-0123456789"  # noqa: S105 (a benchmark's own)
RADIUS_CPU, OTHERS_CPU = 0, 1
DICTIONARY = load_dictionary()


def write_config(path: Path, port: int, redis_port: int, radius_port: int, secret_file: Path) -> None:
    path.write_text(config_head(port, redis_port, "Benchmark VPN") + f"""\
[radius]
listen = ["{HOST}"]
port = {radius_port}
max_held = 5000
[[radius.clients]]
name = "bench-vpn"
address = "{HOST}/32"
secret_file = "{secret_file}"
application = "{APP_ID}"
mode = "auto"
primary = "none"
deadline_s = 30
rate_limit = 0
[logging]
level = "warning"
format = "json"
""")


class Lane(asyncio.DatagramProtocol):
    """One UDP socket of the VPN, one Access-Request at a time (so replies match by Identifier)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: asyncio.Future[tuple[bytes, float]] | None = None
        self.replies = 0

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.replies += 1
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result((data, now()))


def access_request(user: str) -> Any:
    pkt = rp.AuthPacket(code=rp.AccessRequest, secret=SECRET.encode(), dict=DICTIONARY)
    pkt["User-Name"] = user
    pkt["User-Password"] = pkt.PwCrypt("not-checked")
    pkt["Calling-Station-Id"] = "198.51.100.23"
    pkt.add_message_authenticator()
    return pkt


async def open_lane(port: int) -> Lane:
    loop = asyncio.get_running_loop()
    transport, lane = await loop.create_datagram_endpoint(Lane, remote_addr=(HOST, port))
    lane.transport = transport
    return lane


async def radius_signin(lane: Lane, phone: Phone, *, resend_every_s: float = 0.0, resends: int = 0,
                        approve_after_s: float = 0.0) -> dict[str, float]:
    """One sign-in through the RADIUS front; the times of its steps (or raises)."""
    pkt = access_request(phone.user)
    raw = pkt.RequestPacket()
    loop = asyncio.get_running_loop()
    lane.waiting = loop.create_future()
    assert lane.transport is not None
    t0 = now()
    lane.transport.sendto(raw)
    resender = None
    if resends:
        async def resend() -> None:
            for _ in range(resends):
                await asyncio.sleep(resend_every_s)
                if lane.transport is not None:
                    lane.transport.sendto(raw)  # the same packet: same Identifier, same authenticator
        resender = asyncio.create_task(resend())
    try:
        for _ in range(2000):
            pending = await phone.pending()
            if pending:
                break
            await asyncio.sleep(0.005)
        else:
            raise RuntimeError("the prompt never reached the phone")
        if approve_after_s:
            await asyncio.sleep(approve_after_s)
        t_send = now()
        status = await phone.approve(pending[0])
        t_ok = now()
        if status != "approved":
            raise RuntimeError(f"phone: {status}")
        data, t_reply = await asyncio.wait_for(lane.waiting, 35)
    finally:
        if resender is not None:
            resender.cancel()
    reply = pkt.CreateReply(packet=data)
    if reply.code != rp.AccessAccept or not pkt.VerifyReply(reply, data, enforce_ma=True):
        raise RuntimeError(f"reply code {reply.code} or authenticators wrong")
    return {"cycle": t_reply - t0, "notify_after_200": t_reply - t_ok, "notify_after_send": t_reply - t_send}


async def rest_signin(http: aiohttp.ClientSession, base: str, phone: Phone) -> dict[str, float]:
    """The same sign-in through the REST login flow (bench/cycle.py's cycle, without number matching)."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    t0 = now()
    async with http.post(f"{base}/v1/challenges", json={"user": phone.user}, headers=auth) as resp:
        body = await resp.json()
        if resp.status != 201:
            raise RuntimeError(f"create {resp.status} {body}")
    cid = body["id"]

    async def wait() -> tuple[dict[str, Any], float]:
        async with http.get(f"{base}/v1/challenges/{cid}?wait=30", headers=auth) as r:
            return await r.json(), now()

    waiter = asyncio.create_task(wait())
    ch = await phone.fetch(cid)
    t_send = now()
    status = await phone.approve(ch, number=body.get("number"))
    t_ok = now()
    view, t_notified = await waiter
    if status != "approved" or view.get("status") != "approved":
        raise RuntimeError(f"rest: phone {status}, waiter {view.get('status')}")
    return {"cycle": t_notified - t0, "notify_after_200": t_notified - t_ok,
            "notify_after_send": t_notified - t_send}


async def throughput(lanes: list[Lane], phones: list[Phone], duration_s: float,
                     radius_pid: int) -> dict[str, Any]:
    stop = now() + duration_s
    done, failed = 0, 0

    async def worker(lane: Lane, phone: Phone) -> None:
        nonlocal done, failed
        while now() < stop:
            try:
                await radius_signin(lane, phone)
                done += 1
            except (RuntimeError, TimeoutError, aiohttp.ClientError) as exc:
                failed += 1
                print(f"  failed: {exc}", file=sys.stderr)

    cpu0, t0 = proc_cpu_s(radius_pid), now()
    await asyncio.gather(*(worker(lane, phone) for lane, phone in zip(lanes, phones, strict=True)))
    wall, cpu = now() - t0, proc_cpu_s(radius_pid) - cpu0
    return {"signins": done, "failed": failed, "seconds": wall, "per_s": done / wall,
            "radius_cpu_ms_per_signin": cpu / max(done, 1) * 1000, "radius_core_busy": cpu / wall}


async def open_loop(rate: float, duration_s: float, phones: list[Phone],
                    one: Any) -> dict[str, Any]:
    """`one(phone)` started at `rate`/s, each phone used by one sign-in at a time."""
    idle: asyncio.Queue[Phone] = asyncio.Queue()
    for phone in phones:
        idle.put_nowait(phone)
    results: list[dict[str, float]] = []
    failures = 0
    tasks = []

    async def run() -> None:
        nonlocal failures
        phone = await idle.get()
        try:
            results.append(await one(phone))
        except (RuntimeError, TimeoutError, aiohttp.ClientError) as exc:
            failures += 1
            print(f"  failed: {exc}", file=sys.stderr)
        finally:
            idle.put_nowait(phone)

    start = now()
    n = int(rate * duration_s)
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / rate - now()))
        tasks.append(asyncio.create_task(run()))
    await asyncio.gather(*tasks)
    ms = {k: summarise([r[k] for r in results]) for k in ("notify_after_send", "notify_after_200", "cycle")}
    return {"n": len(results), "failed": failures, "ms": ms}


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    os.sched_setaffinity(0, {OTHERS_CPU})
    redis_child, redis_port = start_redis(tmp, OTHERS_CPU)
    port, radius_port = free_port(), free_port()
    secret_file = tmp / "radius.secret"
    secret_file.write_text(SECRET + "\n")
    config = tmp / "config.toml"
    write_config(config, port, redis_port, radius_port, secret_file)
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    serve = bench_child("serve", [python, "-m", "pushauth", "-c", str(config), "serve"], tmp / "serve.log",
                        cpu=OTHERS_CPU, env=env)
    radius = bench_child("radius", [python, "-m", "pushauth", "radius", "-c", str(config), "--name", "bench"],
                         tmp / "radius.log", cpu=RADIUS_CPU, env=env)
    base = f"http://{HOST}:{port}"
    results: dict[str, Any] = {}
    try:
        wait_http(base + "/healthz", serve)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            auth = {"Authorization": f"Bearer {API_KEY}"}
            phones = []
            for i in range(args.phones):
                async with http.post(base + "/v1/enrollments", json={"user": f"vpn{i}@bench.example"},
                                     headers=auth) as resp:
                    uri = (await resp.json())["uri"]
                phones.append(await Phone.enroll(uri, session=http, server_override=base))
            lanes = [await open_lane(radius_port) for _ in range(args.phones)]
            await asyncio.sleep(1.0)  # the radius process listening (its heartbeat is not needed here)
            # warm-up
            await asyncio.gather(*(radius_signin(lane, phone) for lane, phone in zip(lanes[:8], phones[:8],
                                                                                       strict=True)))
            c = min(args.concurrency, len(phones))
            print(f"== throughput: {c} sign-ins in flight for {args.duration:g} s", flush=True)
            tp = await throughput(lanes[:c], phones[:c], args.duration, radius.pid)
            results["throughput"] = tp
            print(f"  {tp['per_s']:.0f} Access-Requests/s answered (Accept), {tp['failed']} failed; pushauth "
                  f"radius {tp['radius_cpu_ms_per_signin']:.3f} ms CPU per sign-in, its core "
                  f"{tp['radius_core_busy']:.0%} busy", flush=True)

            print(f"== latency at {args.rate:g}/s for {args.rate_duration:g} s (REST, then RADIUS)",
                  flush=True)
            by_lane = dict(zip((p.user for p in phones), lanes, strict=True))
            rest = await open_loop(args.rate, args.rate_duration, phones,
                                   lambda ph: rest_signin(http, base, ph))
            rad = await open_loop(args.rate, args.rate_duration, phones,
                                  lambda ph: radius_signin(by_lane[ph.user], ph))
            results["latency"] = {"rest": rest, "radius": rad}
            for name, r in (("REST", rest), ("RADIUS", rad)):
                m = r["ms"]["notify_after_send"]
                print(f"  {name:6}: phone sends its answer -> login side knows: p50 {m['p50']:.2f} ms, p99 "
                      f"{m['p99']:.2f} ms (n {r['n']}, failed {r['failed']}); whole sign-in p50 "
                      f"{r['ms']['cycle']['p50']:.2f} ms", flush=True)
            added = {p: rad["ms"]["notify_after_send"][p] - rest["ms"]["notify_after_send"][p]
                     for p in ("p50", "p99")}
            results["added_ms"] = added
            print(f"  added by RADIUS: p50 {added['p50']:+.2f} ms, p99 {added['p99']:+.2f} ms", flush=True)

            print(f"== retransmits: {args.retransmit_signins} sign-ins, each sent 1 + 3 times", flush=True)
            async with aioredis.Redis(host=HOST, port=redis_port) as rds:
                before = len([k async for k in rds.scan_iter(match=f"{PREFIX}:*:ch:*", count=10000)])
                replies0 = sum(lane.replies for lane in lanes)
                n = min(args.retransmit_signins, len(phones))
                await asyncio.gather(*(radius_signin(lane, phone, resend_every_s=0.3, resends=3,
                                                     approve_after_s=1.2)
                                       for lane, phone in zip(lanes[:n], phones[:n], strict=True)))
                await asyncio.sleep(0.5)
                after = len([k async for k in rds.scan_iter(match=f"{PREFIX}:*:ch:*", count=10000)])
            replies = sum(lane.replies for lane in lanes) - replies0
            results["retransmits"] = {"signins": n, "prompts": after - before,
                                      "prompts_per_signin": (after - before) / n, "replies": replies}
            print(f"  prompts (= pushes) per sign-in: {(after - before) / n:.2f} ({after - before} for {n});"
                  f" replies received {replies} (copies sent after the answer get the cached reply)",
                  flush=True)
    finally:
        for child in (radius, serve, redis_child):
            with contextlib.suppress(Exception):
                child.stop()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phones", type=int, default=200, help="enrolled phones (= users, = UDP lanes)")
    ap.add_argument("--concurrency", type=int, default=64, help="throughput: sign-ins in flight")
    ap.add_argument("--duration", type=float, default=10.0, help="throughput: seconds")
    ap.add_argument("--rate", type=float, default=100.0, help="latency: sign-ins per second")
    ap.add_argument("--rate-duration", type=float, default=10.0, help="latency: seconds per path")
    ap.add_argument("--retransmit-signins", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pushauth-bench-radius-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    ok = results["retransmits"]["prompts_per_signin"] == 1.0
    print(f"== summary: {results['throughput']['per_s']:.0f} sign-ins/s, "
          f"{results['throughput']['radius_cpu_ms_per_signin']:.3f} ms radius CPU each; added latency "
          f"p50 {results['added_ms']['p50']:+.2f} / p99 {results['added_ms']['p99']:+.2f} ms; prompts per "
          f"sign-in with 3 retransmits {results['retransmits']['prompts_per_signin']:.2f}"
          + ("" if ok else "  [NOT 1.00]"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Push delivery benchmark (issue 3). Not a test: run it with `.venv/bin/python bench/push.py --help`.

What issue 3 asks for, measured against the local fakes (testkit/fakes) with the real clients:

    throughput   pushes/s that ONE `python -m workers.push` process sustains, FCM and APNs separately
                 (and mixed): N phones enrolled through the API, M challenges created through the API
                 while the worker is stopped, then the worker is started; the window runs from the
                 first push the fake receives to the M-th. Worker CPU from /proc/<pid>/stat.
    latency      enqueue-to-provider at a fixed 200 challenges/s (open loop) for ~15 s, worker running:
                 per challenge t_sent (before POST /v1/challenges), t_201 (its 201 arrived) and
                 t_provider (the fake received the push naming that challenge id); percentiles of
                 t_provider - t_201 and t_provider - t_sent. Every challenge must get exactly one push.
    payload      bytes of each push on the wire: FCM's JSON request body and its HTTP/1.1 request head (or
                 HTTP/2 HEADERS frames, for a client that sends over HTTP/2) as
                 the fake received them; APNs's JSON body (raw DATA bytes) and the HPACK header block.

Processes: redis-server, one `pushauth serve` (the API: it only enqueues) and one push worker, in the
sandbox of testkit/fakes/sandbox.py (a private /etc/hosts maps fcm.googleapis.com and Apple's names to the
fakes, SSL_CERT_FILE trusts the test CA; nothing in the clients is patched). The fakes run inside this
process. Pinning: the worker on CPU 0; server, Redis, the fakes and this load generator on CPU 1 (the
server is moved to CPU 0 while phones are enrolled and challenges bulk-created, when no worker runs).
The fakes share a core with the rest, so a worker figure is a lower bound when CPU 1 is saturated; the
output says which core was busy.

The fakes listen on loopback addresses of their own (127.0.0.23 FCM, 127.0.0.22 APNs; port 443), not the
tests' 127.0.0.2/3, so a test run on the same machine does not collide with this benchmark. `--profile` adds
a py-spy-sampled throughput run per provider; `--worker-experiment` runs the worker patched (WORKER_PATCH
below) to measure a suggested change before anyone makes it.
See bench/README.md ("Push delivery").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import secrets
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import msgspec
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hpack import Encoder, NeverIndexedHeaderTuple

from bench.cycle import (
    ADMIN_TOKEN,
    API_KEY,
    APP_ID,
    HOST,
    PREFIX,
    Load,
    bench_child,
    calibrate,
    core_jiffies,
    find_pyspy,
    fmt,
    free_port,
    jsonable,
    now,
    percentile,
    print_calibration,
    proc_cpu_s,
    self_cpu_s,
    short_frame,
    source_tree,
    start_redis,
    wait_http,
)
from pushauth import ids
from pushauth.crypto.secrets import sha256_hex
from pushauth.phone import Phone
from pushauth.store.keyspace import KeySpace
from testkit.fakes.apns import Answer, FakeAPNs, SeenRequest
from testkit.fakes.fcm import FakeFCM, SendRecord
from testkit.fakes.h2server import H2Request, H2ServerProtocol
from testkit.fakes.sandbox import (
    HTTPS_PORT,
    PrivateHosts,
    TestCA,
    available,
)
from testkit.processes import Child

REPO = Path(__file__).resolve().parent.parent

WORKER_CPU = 0
REST_CPU = 1
FCM_ADDR = "127.0.0.23"
APNS_ADDR = "127.0.0.22"
APNS_DEVELOPMENT_HOST = "api.development.push.apple.com"
TOPIC = "org.pushauth.bench"
APNS_KEY_ID = "BENCHKEY01"
APNS_TEAM_ID = "BENCHTEAM1"
TTL_S = 600
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
BAR_PUSHES_PER_S = 2000.0
BAR_P99_MS = 50.0
# ES256 sign (pushauth.crypto.jws) on an undisturbed core of the machine these figures come from; a run whose
# calibration is > 25% slower is flagged.
NORMAL_SIGN_US = 40.0


# -- the fakes, with what the benchmark needs on top ---------------------------------------------------------


class BenchAPNs(FakeAPNs):
    """FakeAPNs that also keeps each request's raw body size (the payload figure): `body_sizes[i]` belongs
    to `requests[i]`."""

    def __init__(self, ca: TestCA, **kwargs: Any) -> None:
        super().__init__(ca, **kwargs)
        self.body_sizes: list[int] = []

    def _answer_for(self, conn: H2ServerProtocol, stream: H2Request) -> tuple[Answer, SeenRequest]:
        out = super()._answer_for(conn, stream)
        self.body_sizes.append(len(stream.body))
        return out

    def reset_records(self) -> None:
        self.requests.clear()
        self.body_sizes.clear()


@dataclass
class Fakes:
    fcm: FakeFCM | None = None
    apns: BenchAPNs | None = None

    def pushes(self) -> int:
        """Pushes received so far (FCM: its counter, which survives keep_requests=False; APNs: records)."""
        return (self.fcm.sends if self.fcm else 0) + (len(self.apns.requests) if self.apns else 0)

    def by_provider(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.fcm:
            out["fcm"] = self.fcm.sends
        if self.apns:
            out["apns"] = len(self.apns.requests)
        return out


def bench_hosts(folder: Path, ca: TestCA) -> PrivateHosts:
    """PrivateHosts with the names pointing at this benchmark's own loopback addresses."""
    return PrivateHosts.create(folder, ca, fcm_addr=FCM_ADDR, apns_addr=APNS_ADDR)


# -- processes -----------------------------------------------------------------------------------------------


def set_cpu(pid: int, cpu: int) -> None:
    """Pin every thread of `pid` to `cpu` (sched_setaffinity on a pid only moves its main thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), {cpu})


def write_config(path: Path, *, port: int, redis_port: int, log_level: str, providers: set[str],
                 service_account: Path | None, p8: Path | None, args: argparse.Namespace,
                 max_connections: int | None = None) -> None:
    fcm = apns = ""
    if "fcm" in providers:
        assert service_account is not None
        fcm = f"""
[push.fcm]
enabled = true
service_account_file = "{service_account}"
concurrency = {args.fcm_concurrency}
"""
    if "apns" in providers:
        assert p8 is not None
        apns = f"""
[push.apns]
enabled = true
key_file = "{p8}"
key_id = "{APNS_KEY_ID}"
team_id = "{APNS_TEAM_ID}"
topic = "{TOPIC}"
sandbox = true
connections = {args.apns_connections}
concurrency = {args.apns_concurrency}
"""
    path.write_text(f"""\
[server]
host = "{HOST}"
port = {port}
base_url = "http://{HOST}:{port}"

[store]
redis_url = "redis://{HOST}:{redis_port}/0"
prefix = "{PREFIX}"
{f"max_connections = {max_connections}" if max_connections else ""}

[keys]
ephemeral = true

[[applications]]
id = "{APP_ID}"
name = "Benchmark login flow"
api_key_sha256 = ["{sha256_hex(API_KEY)}"]

[admin]
token_sha256 = ["{sha256_hex(ADMIN_TOKEN)}"]

[push]
{fcm}{apns}
# A benchmark phone gets far more prompts than a person (push bombing: 5 in 5 minutes).
[detection]
push_bombing_max = 1000

# Every virtual phone and the login flow come from 127.0.0.1, at a rate far beyond one real address or
# one organisation's identity provider. The limits stay on (their check is part of what is measured),
# with quotas this load cannot reach.
[rate_limits]
ip_requests = 10000000
application_requests = 10000000

[logging]
level = "{log_level}"
format = "json"
""")


class Worker:
    """The push worker process (python -m workers.push) in the sandbox, pinned to WORKER_CPU."""

    def __init__(self, hosts: PrivateHosts, config: Path, tmp: Path, pin: bool) -> None:
        self.hosts, self.config, self.tmp, self.pin = hosts, config, tmp, pin
        self.child: Child | None = None
        self.starts = 0
        self.extra_path: list[str] = []
        self.extra_env: dict[str, str] = {}

    @property
    def argv(self) -> list[str]:
        return self.hosts.command([sys.executable, "-m", "workers.push", "-c", str(self.config),
                                   "--name", "bench"])

    def start(self) -> Child:
        env = self.hosts.env()
        env["PYTHONPATH"] = os.pathsep.join([*self.extra_path, str(REPO)])
        env.update(self.extra_env)
        env = {k: v for k, v in env.items() if not k.startswith("PUSHAUTH_")}
        self.starts += 1
        # `unshare` and `sh -c 'exec ...'` both exec: the child's pid is the worker's Python process.
        self.child = bench_child("push worker", self.argv, self.tmp / "worker.log",
                                 cpu=WORKER_CPU if self.pin else None, env=env)
        return self.child

    def running(self) -> bool:
        return self.child is not None and self.child.alive()

    def check(self) -> None:
        if self.child is not None and not self.child.alive():
            raise RuntimeError(f"the push worker exited (code {self.child.returncode}):\n"
                               f"{self.child.log_tail()}")

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(15)
            self.child = None

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid


# -- the load: phones and challenges -------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    user: str
    device_id: str
    provider: str
    token: str


def fcm_token() -> str:
    """The shape of a real FCM registration token: a 22-char instance id, ':APA91b', 134 more (163 chars)."""
    return secrets.token_urlsafe(17)[:22] + ":APA91b" + secrets.token_urlsafe(101)[:134]


def apns_token() -> str:
    return secrets.token_hex(32)  # 32 bytes, hex: what APNs hands out today


async def enroll(load: Load, provider: str, n: int, concurrency: int = 32) -> list[Device]:
    sem = asyncio.Semaphore(concurrency)
    tag = secrets.token_hex(3)

    async def one(i: int) -> Device:
        async with sem:
            user = f"push-{provider}-{tag}-{i:06d}@example.org"
            status, body = await load.call("POST", "/v1/enrollments", {"user": user})
            if status != 201:
                raise RuntimeError(f"enrollment of {user} failed: {status} {body}")
            token = fcm_token() if provider == "fcm" else apns_token()
            phone = await Phone.enroll(str(body["uri"]), name="bench phone",
                                       platform="android" if provider == "fcm" else "ios",
                                       push_provider=provider, push_token=token, session=load.session,
                                       server_override=load.base)
            return Device(phone.user, phone.device_id, provider, token)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


@dataclass
class Sent:
    device: Device
    t_sent: float  # time.time() just before POST /v1/challenges
    t_201: float  # time.time() when the 201 had arrived


async def create_one(load: Load, dev: Device, errors: Counter[str]) -> tuple[str, Sent] | None:
    t_sent = time.time()
    try:
        status, body = await load.call("POST", "/v1/challenges", {"user": dev.user, "ttl_s": TTL_S})
    except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as exc:
        errors[f"exception {type(exc).__name__}"] += 1
        return None
    t_201 = time.time()
    if status != 201 or not isinstance(body, dict):
        errors[f"create {status} {body.get('error') if isinstance(body, dict) else '-'}"] += 1
        return None
    return str(body["id"]), Sent(dev, t_sent, t_201)


async def create_many(load: Load, targets: list[Device], concurrency: int,
                      errors: Counter[str]) -> dict[str, Sent]:
    sem = asyncio.Semaphore(concurrency)

    async def one(dev: Device) -> tuple[str, Sent] | None:
        async with sem:
            return await create_one(load, dev, errors)

    return dict(r for r in await asyncio.gather(*(one(d) for d in targets)) if r is not None)


# -- measurement helpers -------------------------------------------------------------------------------------


@dataclass
class Snap:
    wall: float
    worker: float
    server: float
    bench: float
    redis: float
    cores: dict[int, tuple[int, int, int]]


def summarise_ms(vals: list[float]) -> dict[str, float]:
    s = sorted(vals)
    out: dict[str, float] = {"n": float(len(s))}
    for p in PERCENTILES:
        out[f"p{p:g}"] = percentile(s, p) * 1000
    out["max"] = s[-1] * 1000 if s else math.nan
    out["mean"] = sum(s) / len(s) * 1000 if s else math.nan
    return out


def dist(vals: Sequence[int]) -> dict[str, float]:
    if not vals:
        return {"n": 0}
    return {"n": len(vals), "min": min(vals), "median": statistics.median(vals), "max": max(vals)}


class Bench:
    def __init__(self, args: argparse.Namespace, load: Load, redis: aioredis.Redis, server: Child,
                 redis_child: Child, worker: Worker, fakes: Fakes, tmp: Path) -> None:
        self.args = args
        self.load = load
        self.r = redis
        self.server = server
        self.redis_child = redis_child
        self.worker = worker
        self.fakes = fakes
        self.tmp = tmp
        self.ks = KeySpace(PREFIX)

    async def snap(self) -> Snap:
        info = await self.r.info("cpu")
        return Snap(wall=now(), worker=proc_cpu_s(self.worker.pid) if self.worker.running() else 0.0,
                    server=proc_cpu_s(self.server.pid), bench=self_cpu_s(),
                    redis=float(info["used_cpu_sys"]) + float(info["used_cpu_user"]), cores=core_jiffies())

    def usage(self, a: Snap, b: Snap) -> dict[str, Any]:
        wall = b.wall - a.wall
        cores: dict[int, float] = {}
        steal: dict[int, float] = {}
        for cpu in sorted(b.cores):
            busy, st, total = (b.cores[cpu][i] - a.cores[cpu][i] for i in range(3))
            cores[cpu] = busy / total if total else math.nan
            steal[cpu] = st / total if total else math.nan
        worker, server = b.worker - a.worker, b.server - a.server
        bench, redis = b.bench - a.bench, b.redis - a.redis
        others: dict[int, float] = {}
        if self.args.pin:
            others[WORKER_CPU] = cores.get(WORKER_CPU, math.nan) - worker / wall
            others[REST_CPU] = cores.get(REST_CPU, math.nan) - (server + bench + redis) / wall
        return {"wall_s": wall, "worker_cpu_s": worker, "server_cpu_s": server, "bench_cpu_s": bench,
                "redis_cpu_s": redis, "worker_util": worker / wall, "core_busy": cores, "core_steal": steal,
                "core_used_by_others": others}

    def server_on(self, cpu: int) -> None:
        if self.args.pin:
            set_cpu(self.server.pid, cpu)

    def check_alive(self) -> None:
        for child in (self.server, self.redis_child):
            if not child.alive():
                raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
        self.worker.check()

    async def states(self, cids: dict[str, Sent]) -> dict[str, str]:
        """Delivery state of each challenge's device, as the worker recorded it (`pd:<device>`)."""
        out: dict[str, str] = {}
        items = list(cids.items())
        for i in range(0, len(items), 2000):
            pipe = self.r.pipeline(transaction=False)
            chunk = items[i:i + 2000]
            for cid, s in chunk:
                uid = ids.challenge_uid(cid)
                assert uid is not None
                pipe.hget(self.ks.challenge(uid, cid), f"pd:{s.device.device_id}")
            for (cid, _), state in zip(chunk, await pipe.execute(), strict=True):
                out[cid] = state or "queued"
        return out

    async def wait_delivered(self, cids: dict[str, Sent], within_s: float) -> Counter[str]:
        deadline = now() + within_s
        while True:
            states = await self.states(cids)
            c = Counter(states.values())
            if c.get("sent", 0) == len(cids) or now() > deadline:
                return c
            await asyncio.sleep(0.2)

    # -- throughput ----------------------------------------------------------------------------------------

    async def run_throughput(self, name: str, devices: list[Device], m: int, *,
                             profile: bool = False) -> dict[str, Any]:
        """M challenges created with the worker stopped; then the worker starts and drains them."""
        self.worker.stop()
        targets = [devices[i % len(devices)] for i in range(m)]
        errors: Counter[str] = Counter()
        self.server_on(WORKER_CPU)  # no worker runs: let the server have a core of its own meanwhile
        t = now()
        cids = await create_many(self.load, targets, self.args.create_concurrency, errors)
        create_s = now() - t
        self.server_on(REST_CPU)
        expected = Counter(s.device.provider for s in cids.values())
        print(f"  {name}: created {len(cids)} challenges through the API in {create_s:.1f} s "
              f"({len(cids) / create_s:.0f}/s"
              + (f", server on CPU {WORKER_CPU} meanwhile)" if self.args.pin else ")")
              + (f"; ERRORS {dict(errors)}" if errors else ""))
        if self.fakes.apns:
            self.fakes.apns.reset_records()
        if self.fakes.fcm:
            self.fakes.fcm.keep_requests = False
            self.fakes.fcm.requests.clear()
        base_by = self.fakes.by_provider()
        base = self.fakes.pushes()
        total = len(cids)
        # How fast the worker's core is right now (shared cloud cores drift; this VM reports no steal).
        cal_before = calibrate(WORKER_CPU if self.args.pin else None)["es256_sign_us"]
        self.worker.start()
        started = now()
        series: list[tuple[float, int]] = []
        a: Snap | None = None
        b: Snap | None = None
        first_count = gc_mark = 0
        bench_gc: list[float] = []
        last_count, last_change = 0, now()
        spy: Child | None = None
        spy_out = self.tmp / f"pyspy-{name.replace(' ', '-')}.txt"
        while True:
            c = self.fakes.pushes() - base
            t = now()
            if c != last_count:
                series.append((t, c))
                last_count, last_change = c, t
            if a is None and c > 0:
                gc_mark = len(BENCH_GC.pauses)
                a = await self.snap()
                first_count = c
                if profile:
                    spy = self.start_pyspy(spy_out)
            if c >= total:
                b = await self.snap()
                bench_gc = [round(ms, 1) for _, ms in BENCH_GC.pauses[gc_mark:]]
                break
            if t - last_change > 30 or (a is None and t - started > 60):
                self.check_alive()
                raise RuntimeError(f"{name}: no push for 30 s ({c}/{total} received); worker log:\n"
                                   f"{self.worker.child.log_tail() if self.worker.child else '-'}")
            await asyncio.sleep(0.002)
        if spy is not None:
            stop_pyspy(spy)
        assert a is not None
        assert b is not None
        startup_s = a.wall - started
        # Let the worker record the last states and ack; then make sure nothing more arrives.
        state_counts = await self.wait_delivered(cids, 20.0)
        await asyncio.sleep(1.0)
        self.check_alive()
        cal_after = calibrate(WORKER_CPU if self.args.pin else None)["es256_sign_us"]
        got_by = {k: v - base_by.get(k, 0) for k, v in self.fakes.by_provider().items()}
        pushes = self.fakes.pushes() - base
        pending = await self.stream_pending()
        # Exactly once: per provider the fake got as many pushes as challenges went to it, and every
        # challenge's device is recorded "sent" (a challenge pushed twice would leave another unpushed).
        per_challenge = None
        if self.fakes.apns and set(expected) == {"apns"}:
            per_challenge = Counter(str(r.body.get("challenge_id")) for r in self.fakes.apns.requests
                                    if isinstance(r.body, dict))
        not_sent = total - state_counts.get("sent", 0)
        dup = sum(max(0, got_by.get(p, 0) - n) for p, n in expected.items())
        missing = sum(max(0, n - got_by.get(p, 0)) for p, n in expected.items())
        if per_challenge is not None:
            dup = sum(n - 1 for n in per_challenge.values() if n > 1)
            missing = sum(1 for cid in cids if per_challenge.get(cid, 0) == 0)
        window = b.wall - a.wall
        in_window = total - first_count
        use = self.usage(a, b)
        out: dict[str, Any] = {
            "name": name, "providers": dict(expected), "challenges": total, "create_s": create_s,
            "create_per_s": total / create_s, "create_errors": dict(errors),
            "worker_startup_to_first_push_s": startup_s,
            "window_s": window, "pushes_in_window": in_window,
            "pushes_per_s": in_window / window if window > 0 else math.nan,
            "mid_pushes_per_s": mid_rate(series, total),
            "worker_cpu_ms_per_push": use["worker_cpu_s"] * 1000 / in_window if in_window else math.nan,
            "worker_cpu_bound_pushes_per_s":
                in_window / use["worker_cpu_s"] if use["worker_cpu_s"] else math.nan,
            "usage": use, "pushes_received": pushes, "pushes_by_provider": got_by,
            "states": dict(state_counts), "not_sent": not_sent, "duplicates": dup, "missing": missing,
            "stream_pending_after": pending,
            "fake_max_in_flight": {"fcm": self.fakes.fcm.max_in_flight if self.fakes.fcm else None,
                                   "apns": None},  # the APNs fake answers inline: always 1
            "apns_connections": self.fakes.apns.connections if self.fakes.apns else None,
            "worker_core_es256_sign_us": [cal_before, cal_after],
            "bench_full_gc_ms_in_window": bench_gc,
        }
        if spy is not None:
            out["profile_file"] = str(spy_out)
        return out

    async def stream_pending(self) -> int:
        with contextlib.suppress(Exception):
            groups = await self.r.xinfo_groups(f"{PREFIX}:{{push}}:stream")
            return sum(int(g.get("pending", 0)) for g in groups)
        return -1

    def start_pyspy(self, out: Path) -> Child:
        pyspy = find_pyspy()
        assert pyspy is not None
        argv = [pyspy, "record", "--pid", str(self.worker.pid), "--rate", str(self.args.profile_rate),
                "--format", "raw", "--function", "--output", str(out)]
        if self.args.profile_native:
            argv.append("--native")
        return bench_child("py-spy", argv, self.tmp / "pyspy.log", cpu=REST_CPU if self.args.pin else None)

    # -- latency -------------------------------------------------------------------------------------------

    async def run_latency(self, name: str, devices: list[Device], rate: float, duration: float,
                          warmup: float) -> dict[str, Any]:
        """Open loop at `rate` challenges/s with the worker running; each challenge matched to its push."""
        if not self.worker.running():
            self.worker.start()
            await asyncio.sleep(3.0)  # imports, connections
        fcm, apns = self.fakes.fcm, self.fakes.apns
        if fcm:
            fcm.requests.clear()
            fcm.keep_requests = True  # per-push receipt times (the throughput runs only count)
        if apns:
            apns.reset_records()
        errors: Counter[str] = Counter()
        loop = asyncio.get_running_loop()

        async def open_loop(seconds: float, offset: int) -> tuple[dict[str, Sent], list[float]]:
            n = max(1, int(rate * seconds))
            interval = 1.0 / rate
            sent: dict[str, Sent] = {}
            lateness: list[float] = []
            tasks: set[asyncio.Task[None]] = set()

            async def one(dev: Device) -> None:
                r = await create_one(self.load, dev, errors)
                if r is not None:
                    sent[r[0]] = r[1]

            t0 = loop.time()
            for i in range(n):
                target = t0 + i * interval
                delay = target - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                lateness.append(max(0.0, loop.time() - target))
                task = asyncio.create_task(one(devices[(offset + i) % len(devices)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*list(tasks))
            return sent, lateness

        if warmup > 0:
            await open_loop(warmup, 0)
        # The fakes stamp each receipt on this process's event loop: a garbage collection here would show up
        # as push latency. So: collect and freeze what exists, and no collection during the window.
        gc.collect()
        gc.freeze()
        gc.disable()
        pauses_before = len(BENCH_GC.pauses)
        try:
            a = await self.snap()
            base_pushes = self.fakes.pushes()
            sent, lateness = await open_loop(duration, int(rate * warmup))
            b = await self.snap()
        finally:
            gc.enable()
            gc.unfreeze()
        bench_pauses = BENCH_GC.pauses[pauses_before:]
        # Wait for the last pushes (and a little longer, for duplicates).
        deadline = now() + 15
        while now() < deadline and len(self.receipts(set(sent))) < len(sent):  # noqa: ASYNC110 (polling a fake)
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        receipts = self.receipts(set(sent))
        state_counts = await self.wait_delivered(sent, 5.0)
        if fcm:
            fcm.keep_requests = False
        self.check_alive()
        after_201: list[float] = []
        after_send: list[float] = []
        dup = missing = 0
        for cid, s in sent.items():
            times = receipts.get(cid, [])
            if not times:
                missing += 1
                continue
            dup += len(times) - 1
            first = min(times)
            after_201.append(first - s.t_201)
            after_send.append(first - s.t_sent)
        create_ms = summarise_ms([s.t_201 - s.t_sent for s in sent.values()])
        # When did the slowest 1% start? Clustered: a stall (GC, another process on a core); spread: queueing.
        slow: list[float] = []
        if after_201:
            t_start = min(s.t_sent for s in sent.values())
            cut = percentile(sorted(after_201), 99)
            slow = sorted(round(s.t_sent - t_start, 2) for cid, s in sent.items()
                          if cid in receipts and min(receipts[cid]) - s.t_201 >= cut)
        pushes_in_window = self.fakes.pushes() - base_pushes
        use = self.usage(a, b)
        late = sorted(lateness)
        return {
            "name": name, "rate": rate, "duration_s": duration, "warmup_s": warmup,
            "challenges": len(sent), "create_errors": dict(errors),
            "latency_after_201_ms": summarise_ms(after_201),
            "latency_after_send_ms": summarise_ms(after_send),
            "create_ms": create_ms,
            "negative_after_201": sum(1 for v in after_201 if v < 0),
            "duplicates": dup, "missing": missing, "states": dict(state_counts),
            "pushes_received": pushes_in_window,
            "worker_cpu_ms_per_push": use["worker_cpu_s"] * 1000 / len(sent) if sent else math.nan,
            "usage": use,
            "start_lateness_ms": {"p50": percentile(late, 50) * 1000, "p99": percentile(late, 99) * 1000,
                                  "max": late[-1] * 1000 if late else math.nan},
            "payload": self.payload_sizes(), "slowest_1pct_sent_at_s": slow,
            "bench_gc_pauses_in_window": len(bench_pauses),
        }

    def receipts(self, wanted: set[str]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        if self.fakes.fcm:
            for r in self.fakes.fcm.requests:
                cid = r.data.get("challenge_id") if isinstance(r.data, dict) else None
                if cid in wanted:
                    out.setdefault(str(cid), []).append(r.at)
        if self.fakes.apns:
            for q in self.fakes.apns.requests:
                cid = q.body.get("challenge_id") if isinstance(q.body, dict) else None
                if cid in wanted and q.status == 200:
                    out.setdefault(str(cid), []).append(q.received_at)
        return out

    # -- payload sizes -------------------------------------------------------------------------------------

    def payload_sizes(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.fakes.fcm and self.fakes.fcm.requests:
            out["fcm"] = fcm_sizes(self.fakes.fcm.requests, self.fakes.fcm.first_headers_frame_bytes)
        if self.fakes.apns and self.fakes.apns.requests:
            out["apns"] = apns_sizes(self.fakes.apns.requests, self.fakes.apns.body_sizes)
        return out


class _GcPauses:
    """This process's garbage-collection pauses (the fakes run here, so they delay the fakes too)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float]] = []  # (time.time() at start, ms)
        self._t = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        elif info.get("generation") == 2:
            self.pauses.append((time.time(), (time.perf_counter() - self._t) * 1000))


BENCH_GC = _GcPauses()


def mid_rate(series: list[tuple[float, int]], total: int) -> float:
    """Pushes/s between the 10th and the 90th percent of the pushes (the steady part, without the worker's
    first connections and the tail)."""
    lo = next(((t, c) for t, c in series if c >= 0.1 * total), None)
    hi = next(((t, c) for t, c in series if c >= 0.9 * total), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return math.nan
    return (hi[1] - lo[1]) / (hi[0] - lo[0])


def hpack_sizes(header_lists: list[list[tuple[str, str]]]) -> list[int]:
    """HEADERS frame bytes (9-byte frame header + HPACK block) for these header lists sent in order on ONE
    HTTP/2 connection, encoded as h2's client encodes them (aioapns and httpx use h2): Huffman, and
    `authorization` never indexed (h2 does that for credentials), so the JWT goes out in full every time."""
    enc = Encoder()
    sizes = []
    for headers in header_lists:
        hs = [NeverIndexedHeaderTuple(k, v) if k in ("authorization", "proxy-authorization") else (k, v)
              for k, v in headers]
        sizes.append(9 + len(enc.encode(hs, huffman=True)))
    return sizes


def fcm_sizes(records: list[SendRecord], first_frames: list[int]) -> dict[str, Any]:
    """FCM's payload as the fake received it: the JSON body, and the HEADERS frames on the wire (9-byte frame
    header + HPACK block as httpx's h2 encoder sent them; the fake measures them, see fakes/h2server.py):
    the first request on each HTTP/2 connection (`first_frames`, which the fake keeps for every connection,
    as the latency phase's records start after the worker's connection is open), then the rest."""
    body = [r.body_bytes for r in records]
    h2 = [r for r in records if r.http_version == "2" and r.headers_frame_bytes is not None]
    steady = [int(r.headers_frame_bytes or 0) for r in h2 if r.nth_on_connection > 0]
    first = first_frames or [int(r.headers_frame_bytes or 0) for r in h2 if r.nth_on_connection == 0]
    # HTTP/1.1 (pushauth's client since issue 16): the request line and header lines as sent (aiohttp writes
    # `Name: value\r\n`, keeping the names as the client spelled them), every request the same size.
    h1 = [len(f"POST /v1/projects/{r.project}/messages:send HTTP/1.1\r\n")
          + sum(len(k) + len(v) + 4 for k, v in r.headers.items()) + 2
          for r in records if r.http_version == "1.1"]
    sample = records[-1]
    example = json.dumps({"message": sample.message}, separators=(",", ":"))
    return {"body_bytes": dist(body), "http_versions": dict(Counter(r.http_version for r in records)),
            "http1_request_head_bytes": dist(h1),
            "connections": len({r.connection for r in records}),
            "h2_headers_frame_first": first[0] if first else None, "h2_headers_frame_first_all": dist(first),
            "h2_headers_frame_steady": dist(steady),
            "authorization_header_bytes": len(sample.headers.get("authorization", "")),
            "header_names": [str(k) for k in sample.headers],
            "example_body_reconstructed": example, "example_body_reconstructed_bytes": len(example),
            "token_chars": len(sample.token or "")}


def apns_sizes(records: list[SeenRequest], body_sizes: list[int]) -> dict[str, Any]:
    ok = [(r, n) for r, n in zip(records, body_sizes, strict=False) if r.status == 200]
    bodies = [n for _, n in ok]
    lists = [list(r.headers.items()) for r, _ in ok[:500]]
    h2 = hpack_sizes(lists)
    sample = ok[-1][0]
    example = json.dumps(sample.body, ensure_ascii=False)  # as aioapns encodes it
    return {"body_bytes": dist(bodies), "h2_headers_frame_first": h2[0] if h2 else None,
            "h2_headers_frame_steady": dist(h2[1:]),
            "data_frame_bytes_median": 9 + statistics.median(bodies) if bodies else None,
            "authorization_header_bytes": len(sample.headers.get("authorization", "")),
            "header_names": list(sample.headers), "example_body": example,
            "example_body_bytes": len(example.encode()),
            "compact_body_bytes": len(json.dumps(sample.body, separators=(",", ":"), ensure_ascii=False)
                                      .encode())}


# -- profile -------------------------------------------------------------------------------------------------

# Who a sample of worker CPU is charged to: the innermost frame that is not the standard library, by its
# top-level package (py-spy writes paths relative to site-packages, and drops google-auth's `google/`
# namespace: `auth/...`, `oauth2/...`), except that TLS (ssl.py, asyncio's sslproto.py) is its own owner.
# Only frames inside the event loop count; a stack with only stdlib frames there is the event loop itself.
WORKER_BUCKETS: dict[str, str] = {}
for _owner, _packages in (
    ("firebase-admin + google-auth (FCM SDK; token refresh via requests)",
     ("firebase_admin", "auth", "oauth2", "google", "googleapiclient", "requests", "urllib3")),
    ("httpx + httpcore + h11 + anyio/sniffio (FCM's HTTP client)", ("httpx", "httpcore", "h11", "anyio",
                                                                     "sniffio")),
    ("aioapns (APNs client)", ("aioapns",)),
    ("h2 + hpack + hyperframe (HTTP/2 for aioapns)", ("h2", "hpack", "hyperframe")),
    ("redis-py (stream reads, state writes, acks)", ("redis", "hiredis")),
    ("PyJWT / cryptography (APNs provider token)", ("jwt", "cryptography")),
    ("structlog", ("structlog",)),
    ("pushauth (delivery, stream consumer, providers)", ("pushauth", "workers")),
):
    WORKER_BUCKETS.update(dict.fromkeys(_packages, _owner))
TLS_OWNER = "TLS (ssl module, asyncio sslproto)"
LOOP_OWNER = "event loop itself (selector, callbacks, tasks)"
_STDLIB = frozenset(sys.stdlib_module_names)


def _frame_file(frame: str) -> str:
    i = frame.rfind(" (")
    path = frame[i + 2:].rstrip(")") if i >= 0 else frame
    for marker in ("site-packages/", "/lib/python3.11/", f"{REPO}/"):
        j = path.find(marker)
        if j >= 0:
            return path[j + len(marker):]
    return path


def worker_owner(frames: Sequence[str]) -> str:
    loop = [i for i, f in enumerate(frames) if f.startswith(("BaseEventLoop._run_once ", "_run_once "))]
    for frame in reversed(frames[loop[-1] + 1:] if loop else frames):
        file = _frame_file(frame)
        top = file.split("/", 1)[0].split(":", 1)[0].removesuffix(".py")
        if file.startswith("<") or top in _STDLIB:
            if top == "ssl" or file.startswith("asyncio/sslproto.py"):
                return TLS_OWNER
            continue
        return WORKER_BUCKETS.get(top, f"other: {top}")
    return LOOP_OWNER


def analyse_profile(raw: Path, top: int) -> dict[str, Any]:
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    total = idle_threads = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[-1].startswith("_worker (") and "concurrent/futures/thread.py" in frames[-1]:
            # An executor thread blocked in queue.get(): py-spy cannot always tell that wait from CPU
            # (its leaf is the C call, so the Python leaf is `_worker`); it is not worker CPU.
            idle_threads += n
            continue
        total += n
        short = [short_frame(f) for f in frames]
        self_c[short[-1]] += n
        for f in set(short):
            incl[f] += n
        owners[worker_owner(frames)] += n

    def share(n: int) -> float:
        return 100.0 * n / total if total else math.nan

    skip = ("<module>", "run (", "run_forever", "_run_once", "_run (", "main (", "_run_module", "_run_code",
            "run_until_complete", "_run_module_as_main")
    return {"samples": total, "idle_thread_samples_dropped": idle_threads,
            "owners": [(c, share(n)) for c, n in owners.most_common()],
            "self": [(f, share(n)) for f, n in self_c.most_common(top)],
            "inclusive": [(f, share(n)) for f, n in incl.most_common(top * 3)
                          if not f.startswith(skip)][:top]}


def stop_pyspy(spy: Child) -> None:
    """py-spy writes its output when interrupted (SIGINT), like Ctrl-C."""
    if spy.alive():
        spy.signal(signal.SIGINT)
        if spy.wait(30) is None:
            spy.stop()


def print_profile(name: str, prof: dict[str, Any], cpu_us_per_push: float) -> None:
    print(f"\n== profile of the worker during {name}: py-spy, {prof['samples']} samples of active CPU "
          f"({prof['idle_thread_samples_dropped']} samples of idle executor threads left out)")
    print("  by owner (innermost non-stdlib frame; TLS separately), share and us of the "
          f"{cpu_us_per_push:.0f} us of worker CPU per push:")
    for c, s in prof["owners"]:
        print(f"    {s:6.1f}%  {s / 100 * cpu_us_per_push:6.0f} us/push  {c}")
    print("  top self:")
    for f, s in prof["self"]:
        print(f"    {s:6.1f}%  {f}")
    print("  top inclusive:")
    for f, s in prof["inclusive"]:
        print(f"    {s:6.1f}%  {f}")


# -- output --------------------------------------------------------------------------------------------------


def print_throughput_header() -> None:
    print(f"  {'run':<14}{'pushes':>8}{'window s':>10}{'pushes/s':>10}{'10-90%/s':>10}{'wrk ms/p':>10}"
          f"{'wrk core':>10}{'core0':>7}{'core1':>7}{'others':>9}{'lost':>6}{'dup':>5}")


def print_throughput(p: dict[str, Any]) -> None:
    u = p["usage"]
    cores, other = u["core_busy"], u["core_used_by_others"]
    others = "/".join(f"{max(0.0, other[c]) * 100:.0f}" for c in sorted(other)) if other else "-"
    lost = max(p["missing"], p["not_sent"])
    print(f"  {p['name']:<14}{p['pushes_in_window']:>8}{p['window_s']:>10.2f}{p['pushes_per_s']:>10.0f}"
          f"{fmt(p['mid_pushes_per_s'], 0):>10}{fmt(p['worker_cpu_ms_per_push'], 3):>10}"
          f"{u['worker_util'] * 100:>9.0f}%{cores.get(0, math.nan) * 100:>6.0f}%"
          f"{cores.get(1, math.nan) * 100:>6.0f}%{others + '%':>9}{lost:>6}{p['duplicates']:>5}")


def print_throughput_notes(p: dict[str, Any]) -> None:
    u = p["usage"]
    w = u["wall_s"]
    print(f"    {p['name']}: CPU 1 split over the window: fakes+bench {u['bench_cpu_s'] / w * 100:.0f}%, "
          f"redis {u['redis_cpu_s'] / w * 100:.0f}%, server {u['server_cpu_s'] / w * 100:.0f}%; worker "
          f"started -> first push {p['worker_startup_to_first_push_s']:.1f} s; states {p['states']}; "
          f"stream pending after {p['stream_pending_after']}; fake max in flight "
          f"{ {k: v for k, v in p['fake_max_in_flight'].items() if v is not None} }"
          + (f"; APNs connections so far {p['apns_connections']}" if p["apns_connections"] else ""))
    before, after = p["worker_core_es256_sign_us"]
    print(f"    worker core speed: ES256 sign {before:.0f} us before the run (~{NORMAL_SIGN_US:.0f} on this "
          f"machine when undisturbed), {after:.0f} us after (informational: the settling worker disturbs it)"
          + ("  SLOW CORE: figure not comparable" if slow_core(p) else ""))
    if p["bench_full_gc_ms_in_window"]:
        print(f"    this process (the fakes) paused for full garbage collections in the window: "
              f"{p['bench_full_gc_ms_in_window']} ms")
    if p["create_errors"]:
        print(f"    create errors: {p['create_errors']}")
    if u["worker_util"] < 0.9 and u["core_busy"].get(REST_CPU, 0) > 0.9:
        print("    NOTE: the worker's core was not saturated but CPU 1 (fakes, Redis, this process) was: the "
              "figure is limited by the fakes' core, a lower bound for the worker")
    if disturbed(u):
        print(f"    WARNING:{disturbed(u)}: figures disturbed; rerun when quiet")


def print_latency(p: dict[str, Any]) -> None:
    cols = [f"p{q:g}" for q in PERCENTILES] + ["max", "mean"]
    print(f"  {'(ms)':<30}{'n':>7}" + "".join(f"{c:>9}" for c in cols))
    for key, label in (("latency_after_201_ms", "201 received -> fake got push"),
                       ("latency_after_send_ms", "POST sent -> fake got push"),
                       ("create_ms", "POST /v1/challenges (-> 201)")):
        lat = p[key]
        print(f"  {label:<30}{int(lat['n']):>7}" + "".join(f"{fmt(lat[c]):>9}" for c in cols))
    u = p["usage"]
    others = "/".join(f"{max(0.0, v) * 100:.0f}" for _, v in sorted(u["core_used_by_others"].items()))
    print(f"  challenges {p['challenges']}, pushes received {p['pushes_received']}, duplicates "
          f"{p['duplicates']}, missing {p['missing']}, states {p['states']}; worker "
          f"{p['worker_cpu_ms_per_push']:.3f} ms CPU/push ({u['worker_util'] * 100:.0f}% of its core); core0 "
          f"{u['core_busy'].get(0, math.nan) * 100:.0f}% core1 {u['core_busy'].get(1, math.nan) * 100:.0f}% "
          f"others {others}%; start lateness p99 {fmt(p['start_lateness_ms']['p99'])} ms")
    if p["slowest_1pct_sent_at_s"]:
        slow = p["slowest_1pct_sent_at_s"]
        print(f"  the slowest 1% were sent at (s into the window): {', '.join(f'{t:g}' for t in slow[:40])}"
              + (" ..." if len(slow) > 40 else ""))
    if disturbed(u):
        print(f"  WARNING:{disturbed(u)}: figures disturbed; rerun when quiet")
    if p["create_errors"]:
        print(f"  create errors: {p['create_errors']}")
    if p["negative_after_201"]:
        print(f"  note: {p['negative_after_201']} pushes reached the fake before this process saw the 201 "
              "(the worker is faster than the API's answer); counted as negative latencies")


def print_payload(name: str, sizes: dict[str, Any]) -> None:
    for prov, s in sizes.items():
        b = s["body_bytes"]
        steady = s["h2_headers_frame_steady"]
        if prov == "fcm":
            versions = ", ".join(f"HTTP/{v} {n}" for v, n in sorted(s["http_versions"].items()))
            head = s["http1_request_head_bytes"]
            framing = (f"request line and headers median {fmt(head.get('median'), 0)} B per push (the "
                       f"{s['authorization_header_bytes']}-byte Authorization included)" if head else
                       f"HEADERS frame as received (HPACK as httpx's h2 encodes it) first request on a "
                       f"connection {s['h2_headers_frame_first']} B, then median "
                       f"{fmt(steady.get('median'), 0)} B per push (min {steady.get('min')}, max "
                       f"{steady.get('max')}; the {s['authorization_header_bytes']}-byte Authorization is "
                       "never indexed)")
            print(f"  FCM ({name}): JSON request body median {fmt(b['median'], 0)} B (min {b['min']}, max "
                  f"{b['max']}); {framing}; {versions} on {s['connections']} connection(s)")
            print(f"    token {s['token_chars']} chars; body (reconstructed from the parsed record, "
                  f"{s['example_body_reconstructed_bytes']} B): {s['example_body_reconstructed']}")
            print(f"    headers: {', '.join(s['header_names'])}")
        else:
            jwt_len = s["authorization_header_bytes"]
            print(f"  APNs ({name}): JSON body (raw DATA bytes) median {fmt(b['median'], 0)} B (min "
                  f"{b['min']}, max {b['max']}; {s['compact_body_bytes']} B if encoded compactly); HTTP/2 "
                  f"HEADERS frame (HPACK as h2 encodes it) first request on a connection "
                  f"{s['h2_headers_frame_first']} B, then median {fmt(steady.get('median'), 0)} B per push "
                  f"(the {jwt_len}-byte provider-token JWT is never indexed); DATA frame "
                  f"{fmt(s['data_frame_bytes_median'], 0)} B")
            print(f"    body: {s['example_body']}")
            print(f"    headers: {', '.join(s['header_names'])}")


# -- experiments ---------------------------------------------------------------------------------------------

# Experiments, not pushauth code: with --worker-experiment the worker starts with this file as its
# sitecustomize.py (first on its PYTHONPATH), which patches the running worker to try a change before anyone
# makes it (as bench/cycle.py's SERVER_WRAPPER does for the server). Each name switches one change on.
EXPERIMENTS = ("oldpool", "gcstats")
WORKER_PATCH = """'''
EXPERIMENT ONLY (not pushauth code): patches the push worker process at start-up, to measure what a change
would gain before anyone makes it. Enabled per change by PUSH_EXP (comma list):

  oldpool  the worker's Redis pool as before 169166a (non-blocking; use with --worker-max-connections 1024)
  gcstats  record the worker's garbage-collector pauses after its start-up gc.freeze() (printed at exit)

(bp, hc, reads, ack, gcfreeze and fcmhttp, measured here before, are now how the worker works: see
bench/README.md.)
'''
import os

EXP = set(filter(None, os.environ.get("PUSH_EXP", "").split(",")))

if EXP:
    import time

    import pushauth.store as store

    if "oldpool" in EXP:
        # The worker's Redis pool as committed at f234446 (before the BlockingConnectionPool change):
        # redis-py's default pool, which raises MaxConnectionsError at once when all are busy.
        import redis.asyncio as aioredis
        from redis.maint_notifications import MaintNotificationsConfig

        def open_redis_old(settings, *, health_check_interval_s=30):
            return aioredis.Redis.from_url(
                settings.redis_url, socket_timeout=settings.socket_timeout_s,
                socket_connect_timeout=settings.connect_timeout_s, max_connections=settings.max_connections,
                decode_responses=True, health_check_interval=health_check_interval_s, retry_on_timeout=False,
                retry=None, maint_notifications_config=MaintNotificationsConfig(enabled=False))

        store.open_redis = open_redis_old

    if "gcstats" in EXP:
        import atexit
        import gc
        import json as _json
        import sys as _sys

        _gc = {g: {"n": 0, "total_ms": 0.0, "max_ms": 0.0} for g in (0, 1, 2)}
        _t = [0.0]

        def _cb(phase, info):
            if phase == "start":
                _t[0] = time.perf_counter()
                return
            ms = (time.perf_counter() - _t[0]) * 1000
            st = _gc[info["generation"]]
            st["n"] += 1
            st["total_ms"] += ms
            st["max_ms"] = max(st["max_ms"], ms)

        gc.callbacks.append(_cb)
        atexit.register(lambda: _sys.stderr.write("BENCH-GC " + _json.dumps(
            {**_gc, "tracked": len(gc.get_objects())}) + "\\n"))

        _freeze = gc.freeze

        def freeze():
            # workers/push.py calls gc.collect(); gc.freeze() once it has started: count only the pauses
            # after that (the start-up collection walks every imported module once)
            _freeze()
            for st in _gc.values():
                st.update(n=0, total_ms=0.0, max_ms=0.0)

        gc.freeze = freeze
"""


def report_gc(worker_log: Path) -> list[dict[str, Any]]:
    """The worker's garbage-collector pauses (experiment gcstats), one entry per worker process."""
    out = []
    for line in worker_log.read_text(errors="replace").splitlines():
        if line.startswith("BENCH-GC "):
            out.append(json.loads(line.removeprefix("BENCH-GC ")))
    for i, st in enumerate(out, 1):
        print(f"  worker process {i}: " + "; ".join(
            f"gen {g}: {st[g]['n']} collections, {st[g]['total_ms']:.0f} ms total, "
            f"max pause {st[g]['max_ms']:.1f} ms" for g in ("0", "1", "2"))
            + f"; {st['tracked']} GC-tracked objects at exit")
    return out


# -- orchestration -------------------------------------------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    tmp: Path
    children: list[Child] = field(default_factory=list)
    worker: Worker | None = None
    results: dict[str, Any] = field(default_factory=dict)


async def run_async(ctx: Ctx) -> None:
    args, tmp = ctx.args, ctx.tmp
    providers: list[str] = ["fcm", "apns"] if args.provider == "both" else [args.provider]
    ca = TestCA.create(tmp / "ca")
    hosts = bench_hosts(tmp, ca)
    fakes = Fakes()
    service_account: Path | None = None
    p8: Path | None = None
    try:
        if "fcm" in providers:
            fakes.fcm = FakeFCM(ca, host=FCM_ADDR, port=HTTPS_PORT, keep_requests=False)
            await fakes.fcm.start()
            service_account = fakes.fcm.write_service_account(tmp / "service-account.json")
        if "apns" in providers:
            key = ec.generate_private_key(ec.SECP256R1())
            p8 = tmp / f"AuthKey_{APNS_KEY_ID}.p8"
            p8.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
            fakes.apns = BenchAPNs(ca, topic=TOPIC, key_id=APNS_KEY_ID, team_id=APNS_TEAM_ID,
                                   public_key=key.public_key(), host=APNS_ADDR, port=HTTPS_PORT)
            await fakes.apns.start()
        where = {"fcm": FCM_ADDR, "apns": APNS_ADDR}
        print(f"fakes (in this process, CPU {REST_CPU}): "
              + ", ".join(f"{p.upper()} on {where[p]}:{HTTPS_PORT}" for p in providers)
              + f"; the worker's private /etc/hosts: {hosts.hosts_file}")
        await run_with_fakes(ctx, providers, fakes, hosts, service_account, p8)
    finally:
        if ctx.worker is not None:
            ctx.worker.stop()
        if fakes.fcm:
            await fakes.fcm.stop()
        if fakes.apns:
            await fakes.apns.stop()


async def run_with_fakes(ctx: Ctx, providers: list[str], fakes: Fakes, hosts: PrivateHosts,
                         service_account: Path | None, p8: Path | None) -> None:
    args, tmp, results = ctx.args, ctx.tmp, ctx.results
    pin_rest = REST_CPU if args.pin else None
    redis_child, redis_port = start_redis(tmp, pin_rest)
    ctx.children.append(redis_child)
    port = free_port()
    cfg = tmp / "config.toml"
    write_config(cfg, port=port, redis_port=redis_port, log_level=args.log_level, providers=set(providers),
                 service_account=service_account, p8=p8, args=args)
    # The worker's own config: the same, except its Redis pool size (see --worker-max-connections).
    worker_cfg = tmp / "worker.toml"
    write_config(worker_cfg, port=port, redis_port=redis_port, log_level=args.log_level,
                 providers=set(providers), service_account=service_account, p8=p8, args=args,
                 max_connections=args.worker_max_connections)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHAUTH_")}
    server = bench_child("pushauth server", [sys.executable, "-m", "pushauth", "-c", str(cfg), "serve"],
                         tmp / "server.log", cpu=pin_rest, env=env)
    ctx.children.append(server)
    base = f"http://{HOST}:{port}"
    wait_http(base + "/.well-known/jwks.json", server)
    worker = ctx.worker = Worker(hosts, worker_cfg, tmp, args.pin)
    if args.worker_experiment:
        patch_dir = tmp / "worker-experiment"
        patch_dir.mkdir()
        (patch_dir / "sitecustomize.py").write_text(WORKER_PATCH)
        worker.extra_path = [str(patch_dir)]
        worker.extra_env = {"PUSH_EXP": ",".join(args.worker_experiment)}
        print(f"EXPERIMENT: the worker runs patched ({', '.join(args.worker_experiment)}; see WORKER_PATCH "
              "in bench/push.py): these figures are not pushauth's as committed")
    print(f"server: {sys.executable} -m pushauth -c {cfg} serve (pid {server.pid}), "
          f"log level {args.log_level}")
    print(f"redis: 127.0.0.1:{redis_port} (pid {redis_child.pid}), --save '' --appendonly no")
    print(f"worker: {shlex.join(worker.argv)}")
    print(f"  env: SSL_CERT_FILE={hosts.ca_file} (test CA), PYTHONPATH={REPO}; "
          f"push.fcm.concurrency {args.fcm_concurrency}, push.apns.connections {args.apns_connections}, "
          f"push.apns.concurrency {args.apns_concurrency}; worker store.max_connections "
          f"{args.worker_max_connections or 'default (128)'}")
    r = aioredis.Redis(host=HOST, port=redis_port, decode_responses=True)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        load = Load(session, base)
        bench = Bench(args, load, r, server, redis_child, worker, fakes, tmp)
        bench.server_on(WORKER_CPU)
        devices: dict[str, list[Device]] = {}
        for p in providers:
            t = now()
            devices[p] = await enroll(load, p, args.phones)
            print(f"enrolled {len(devices[p])} {p.upper()} phones (one user each, distinct tokens) in "
                  f"{now() - t:.1f} s")
        bench.server_on(REST_CPU)
        results["phones"] = {p: len(d) for p, d in devices.items()}
        runs: list[dict[str, Any]] = []
        lats: list[dict[str, Any]] = []
        results["throughput"] = runs
        results["latency"] = lats
        print("\ncolumns: pushes = received by the fake(s) in the window (first push -> last); pushes/s over "
              "that window;\n  10-90%/s = rate between the 10th and 90th percent of the pushes; wrk ms/p = "
              "worker CPU per push\n  (/proc/<pid>/stat); wrk core = worker CPU / wall; core0/core1 = "
              "whole-core busy (/proc/stat);\n  others = share of core0/core1 used by processes outside "
              "this benchmark; lost/dup = pushes lost / duplicated")
        plan: list[tuple[str, list[Device]]] = [(p, devices[p]) for p in providers]
        for p, devs in plan:
            print(f"\n== {p.upper()}: throughput, {args.challenges} challenges queued, then one worker "
                  "drains them")
            tp = await bench.run_throughput(p, devs, args.challenges)
            runs.append(tp)
            print_throughput_header()
            print_throughput(tp)
            print_throughput_notes(tp)
            if args.rate_duration > 0:
                print(f"\n== {p.upper()}: latency at {args.rate:g} challenges/s for {args.rate_duration:g} s "
                      f"(open loop, {args.warmup:g} s warm-up first; the worker from the run above)")
                lat = await bench.run_latency(p, devs, args.rate, args.rate_duration, args.warmup)
                lats.append(lat)
                print_latency(lat)
                print_payload(p, lat["payload"])
            worker.stop()
        if len(providers) == 2 and args.mixed:
            mixed = [d for pair in zip(devices["fcm"], devices["apns"], strict=False) for d in pair]
            print(f"\n== mixed: throughput, {args.challenges} challenges, half to FCM phones, half to APNs")
            tp = await bench.run_throughput("mixed", mixed, args.challenges)
            runs.append(tp)
            print_throughput_header()
            print_throughput(tp)
            print_throughput_notes(tp)
            worker.stop()
        if args.profile:
            profiles: dict[str, Any] = {}
            results["profiles"] = profiles
            for p, devs in plan:
                print(f"\n== {p.upper()}: profiled throughput run (py-spy attached to the worker at its "
                      f"first push, rate {args.profile_rate}/s{', --native' if args.profile_native else ''}; "
                      "figures perturbed by the sampling)")
                tp = await bench.run_throughput(f"{p} profiled", devs, args.challenges, profile=True)
                print_throughput_header()
                print_throughput(tp)
                worker.stop()
                raw = Path(tp["profile_file"])
                if not raw.exists():  # noqa: ASYNC240 (once, after the run)
                    print(f"  py-spy wrote nothing (see {tmp / 'pyspy.log'})")
                    continue
                prof = analyse_profile(raw, args.top)
                prof["run"] = tp
                profiles[p] = prof
                print_profile(p, prof, tp["worker_cpu_ms_per_push"] * 1000)
    await r.aclose()
    if "gcstats" in args.worker_experiment:
        worker.stop()
        print("\n== worker garbage collector (experiment gcstats, after the worker's gc.freeze())")
        results["worker_gc"] = report_gc(tmp / "worker.log")


def _experiments(value: str) -> list[str]:
    names = [n for n in value.split(",") if n]
    unknown = sorted(set(names) - set(EXPERIMENTS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown experiment(s) {unknown}; known: {', '.join(EXPERIMENTS)}")
    return names


CODE_FILES = ("pushauth/push/dispatch.py", "pushauth/store/streams.py", "pushauth/store/connection.py",
              "pushauth/push/fcm.py", "pushauth/push/apns.py", "workers/push.py")


def code_fingerprint() -> dict[str, str]:
    import hashlib

    out = {}
    for name in CODE_FILES:
        try:
            out[name] = hashlib.sha256((REPO / name).read_bytes()).hexdigest()[:12]
        except OSError:
            out[name] = "missing"
    return out


def slow_core(p: dict[str, Any]) -> bool:
    """The worker's core ran > 25% slower than usual just before the run (another VM on the host). The
    reading after the run is informational only: the worker, still settling on that core, disturbs it."""
    return bool(p["worker_core_es256_sign_us"][0] > 1.25 * NORMAL_SIGN_US)


def disturbed(usage: dict[str, Any]) -> str:
    other, steal = usage["core_used_by_others"], usage["core_steal"]
    out = ""
    if any(v > 0.05 for v in other.values()):
        shares = "/".join(f"{max(0.0, v) * 100:.0f}" for _, v in sorted(other.items()))
        out += f" DISTURBED (others {shares}%)"
    if any(v > 0.02 for v in steal.values()):
        stolen = "/".join(f"{v * 100:.0f}" for _, v in sorted(steal.items()))
        out += f" STOLEN (hypervisor steal {stolen}%)"
    return out


def busy_before(seconds: float = 1.0) -> dict[int, float]:
    """How busy each core is before the benchmark starts anything (other engineers' runs)."""
    a = core_jiffies()
    time.sleep(seconds)
    b = core_jiffies()
    return {c: (b[c][0] - a[c][0]) / max(1, b[c][2] - a[c][2]) for c in sorted(b)}


def print_summary(results: dict[str, Any]) -> int:
    print(f"\n== summary (bar: >= {BAR_PUSHES_PER_S:.0f} pushes/s per worker, p99 enqueue-to-provider < "
          f"{BAR_P99_MS:.0f} ms at 200/s)")
    bad = 0
    for p in results.get("throughput", []):
        u = p["usage"]
        ok = p["pushes_per_s"] >= BAR_PUSHES_PER_S
        lost = max(p["missing"], p["not_sent"])
        bad += lost + p["duplicates"]
        print(f"  throughput {p['name']:<6}: {p['pushes_per_s']:6.0f} pushes/s "
              f"({fmt(p['mid_pushes_per_s'], 0)} in the 10-90% part), worker "
              f"{p['worker_cpu_ms_per_push'] * 1000:.0f} us CPU/push "
              f"(=> {p['worker_cpu_bound_pushes_per_s']:.0f}/s per fully busy core), worker core "
              f"{u['worker_util'] * 100:.0f}%, CPU 1 {u['core_busy'].get(REST_CPU, math.nan) * 100:.0f}%; "
              f"lost {lost}, duplicated {p['duplicates']}  [{'meets' if ok else 'MISSES'} the bar]"
              + disturbed(u) + (" SLOW CORE (calibration)" if slow_core(p) else ""))
    for p in results.get("latency", []):
        a2, a_s = p["latency_after_201_ms"], p["latency_after_send_ms"]
        ok = a2["p99"] < BAR_P99_MS and a_s["p99"] < BAR_P99_MS
        bad += p["missing"] + p["duplicates"]
        print(f"  latency {p['name']:<4} at {p['rate']:g}/s: after the 201 p50 {fmt(a2['p50'])} / p90 "
              f"{fmt(a2['p90'])} / p99 {fmt(a2['p99'])} / p99.9 {fmt(a2['p99.9'])} ms; after sending the "
              f"POST p50 {fmt(a_s['p50'])} / p99 {fmt(a_s['p99'])} / p99.9 {fmt(a_s['p99.9'])} ms; missing "
              f"{p['missing']}, duplicated {p['duplicates']}  [{'meets' if ok else 'MISSES'} the bar]"
              + disturbed(p["usage"]))
    for p in results.get("latency", []):
        for prov, s in p["payload"].items():
            h = s["h2_headers_frame_steady"].get("median")
            if prov == "fcm" and s.get("http1_request_head_bytes"):
                print(f"  payload FCM: body {fmt(s['body_bytes']['median'], 0)} B, HTTP/1.1 request line "
                      f"and headers {fmt(s['http1_request_head_bytes']['median'], 0)} B")
            elif prov == "fcm":
                print(f"  payload FCM: body {fmt(s['body_bytes']['median'], 0)} B, HTTP/2 HEADERS frame "
                      f"{s['h2_headers_frame_first']} B first on a connection, {fmt(h, 0)} B after "
                      "(as received)")
            else:
                print(f"  payload APNs: body {fmt(s['body_bytes']['median'], 0)} B, HEADERS frame "
                      f"{s['h2_headers_frame_first']} B first on a connection, {fmt(h, 0)} B after")
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--provider", choices=("fcm", "apns", "both"), default="both",
                    help="which provider(s) to measure (default both, plus a mixed throughput run)")
    ap.add_argument("--phones", type=int, default=1000, help="phones (= users) per provider (default 1000)")
    ap.add_argument("--challenges", type=int, default=10_000,
                    help="challenges queued per throughput run (default 10000)")
    ap.add_argument("--create-concurrency", type=int, default=32,
                    help="concurrent POST /v1/challenges while queueing (default 32)")
    ap.add_argument("--rate", type=float, default=200.0, help="latency phase: challenges/s (default 200)")
    ap.add_argument("--rate-duration", type=float, default=15.0,
                    help="latency phase: seconds (default 15; 0 skips the latency phase)")
    ap.add_argument("--warmup", type=float, default=1.0, help="latency phase: warm-up seconds (default 1)")
    ap.add_argument("--no-mixed", dest="mixed", action="store_false",
                    help="skip the mixed FCM+APNs throughput run (only with --provider both)")
    ap.add_argument("--fcm-concurrency", type=int, default=200, help="push.fcm.concurrency (default 200)")
    ap.add_argument("--apns-connections", type=int, default=4, help="push.apns.connections (default 4)")
    ap.add_argument("--apns-concurrency", type=int, default=200, help="push.apns.concurrency (default 200)")
    ap.add_argument("--worker-max-connections", type=int, default=0,
                    help="the worker's store.max_connections (default 0: pushauth's default, 128)")
    ap.add_argument("--worker-experiment", type=_experiments, default=[], metavar="NAME[,NAME...]",
                    help="experiment: run the worker patched with these changes (" + ", ".join(EXPERIMENTS)
                         + "; see WORKER_PATCH and bench/README.md)")
    ap.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="warning",
                    help="server and worker log level (default warning)")
    ap.add_argument("--profile", action="store_true",
                    help="extra throughput run per provider with py-spy sampling the worker")
    ap.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second (default 250)")
    ap.add_argument("--profile-native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--top", type=int, default=25, help="profile entries to print")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    ap.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (config, logs, profiles)")
    args = ap.parse_args(argv)
    if (why := available()) is not None:
        raise SystemExit(f"the push sandbox cannot run here: {why}")
    if args.profile and find_pyspy() is None:
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    started = time.monotonic()
    print("command: " + shlex.join(sys.orig_argv))
    tree = source_tree()
    print(f"source: {tree}")
    code = code_fingerprint()
    print("worker code (sha256/12; other engineers edit these): "
          + ", ".join(f"{k.rsplit('/', 1)[-1]} {v}" for k, v in code.items()))
    if args.pin and not {WORKER_CPU, REST_CPU} <= os.sched_getaffinity(0):
        print(f"note: only CPUs {sorted(os.sched_getaffinity(0))} available; not pinning")
        args.pin = False
    if args.pin:
        os.sched_setaffinity(0, {REST_CPU})
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"python {sys.version.split()[0]}")
    if args.pin:
        print(f"pinning: push worker on CPU {WORKER_CPU}; pushauth server, redis-server, the fakes and this "
              f"load generator on CPU {REST_CPU} (the fakes share that core with the load: a worker figure "
              f"is a lower bound when CPU {REST_CPU} is saturated)")
    results: dict[str, Any] = {"command": shlex.join(sys.orig_argv), "source": tree, "code": code, "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "loadavg_start": os.getloadavg()[0]}
    results["busy_before"] = busy_before()
    print("cores busy in the second before the start: " + ", ".join(
        f"CPU {c} {v * 100:.0f}%" for c, v in results["busy_before"].items())
        + ("  (WARNING: the machine is not quiet)" if any(v > 0.05 for v in results["busy_before"].values())
           else ""))
    cal_cpus: list[int | None] = [WORKER_CPU, REST_CPU] if args.pin else [None]
    results["calibration_start"] = [calibrate(c) for c in cal_cpus]
    print_calibration(results["calibration_start"])
    tmp = Path(tempfile.mkdtemp(prefix="pushauth-bench-push-"))
    ctx = Ctx(args, tmp, results=results)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    rc = 0
    try:
        asyncio.run(run_async(ctx))
        results["calibration_end"] = [calibrate(c) for c in cal_cpus]
        print("\nat the end: ", end="")
        print_calibration(results["calibration_end"])
        bad = print_summary(results)
        if bad:
            print(f"exit status 1: {bad} pushes lost or duplicated", file=sys.stderr)
            rc = 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        rc = 130
    except RuntimeError as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        rc = 2
    finally:
        if ctx.worker is not None:
            ctx.worker.stop()
        for child in reversed(ctx.children):
            child.stop(3 if rc else 10)
        results["loadavg_end"] = os.getloadavg()[0]
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        print(f"total time: {results['elapsed_s']:.0f} s")
        if args.json is not None:
            args.json.write_text(msgspec.json.format(msgspec.json.encode(jsonable(results))).decode() + "\n")
            print(f"results written to {args.json}")
        if args.keep_tmp or args.profile:
            print(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())

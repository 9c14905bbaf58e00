#!/usr/bin/env python3
"""Full sign-in cycle benchmark (issue 2). Not a test: run it with `make bench` or
`.venv/bin/python bench/cycle.py --help`.

One cycle is what a real sign-in does, end to end, over HTTP against ONE real `pushauth serve` process:

    login flow   POST /v1/challenges                       -> 201 {id, number}
    login flow   GET  /v1/challenges/{id}?wait=10          (started now; it is the waiting login page)
    phone        GET  /v1/device/challenges/{id}           signed request; the challenge JWS is verified
    phone        POST /v1/device/challenges/{id}/response  signed request: approve + the number
    login flow   ... the waiting GET returns `approved` with an assertion

The script starts its own redis-server and pushauth server (ephemeral keys, a throw-away config) and
pins the server to CPU 0; the load generator (this process) and redis-server share CPU 1. Figures:
cycles/s (closed loop, a few concurrencies), CPU per cycle of the server / load generator / Redis (from
/proc/<pid>/stat, getrusage and INFO cpu), per-step latency percentiles at a fixed arrival rate
(open loop), answer-to-notified latency, and Redis memory per pending challenge. `--profile` samples the
server with py-spy (or runs it under cProfile) and prints where its CPU goes. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import math
import os
import resource
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import msgspec
import redis.asyncio as aioredis
from joserfc.jwk import ECKey

from pushauth import ids
from pushauth.crypto import device_auth
from pushauth.crypto.secrets import sha256_hex
from pushauth.phone import Phone, PhoneError, ServerRejected
from pushauth.store.keyspace import KeySpace
from testkit.processes import Child

HOST = "127.0.0.1"
API_KEY = "bench-api-key-" + "0" * 32
ADMIN_TOKEN = "bench-admin-token-" + "0" * 32
APP_ID = "bench"
PREFIX = "pa"
SERVER_CPU = 0
CLIENT_CPU = 1
WAIT_S = 10
CLK_TCK = os.sysconf("SC_CLK_TCK")
STEPS = ("create", "wait", "fetch", "respond", "notify_after_200", "notify_after_send", "cycle")
STEP_HELP = {
    "create": "login flow POST /v1/challenges",
    "wait": "login flow GET ?wait=10, start to `approved`",
    "fetch": "phone GET challenge + JWS verify",
    "respond": "phone POST response (sign+send+200)",
    "notify_after_200": "phone got 200 -> waiter got `approved`",
    "notify_after_send": "phone sent answer -> waiter got `approved`",
    "cycle": "create start -> both answers in",
}
PERCENTILES = (50.0, 90.0, 99.0, 99.9)

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def now() -> float:
    return time.perf_counter()


# -- child processes -----------------------------------------------------------------------------------------


def bench_child(name: str, argv: list[str], log: Path, *, cpu: int | None,
                env: dict[str, str] | None = None) -> Child:
    """A benchmark's child process (testkit's): pinned to `cpu`, its output in `log`, sent SIGTERM by the
    kernel if this benchmark dies without cleaning up (Ctrl-C twice, SIGKILL)."""
    return Child(argv, log, env=env, name=name, cpu=cpu, death_signal=signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a whole process (all threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def core_jiffies() -> dict[int, tuple[int, int, int]]:
    """Per CPU (busy, steal, total) jiffies from /proc/stat; busy excludes idle, iowait and steal."""
    out: dict[int, tuple[int, int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]] + [0] * (8 - min(8, len(vals)))
                idle, steal = v[3] + v[4], v[7]
                total = sum(v)
                out[int(name[3:])] = (total - idle - steal, steal, total)
    return out


def calibrate(cpu: int | None) -> dict[str, float]:
    """How fast this core is right now: ES256 sign and verify through pushauth.crypto.jws (what the server
    does per challenge), best of 5 x 100, in microseconds. Machines (and shared cloud cores) drift; these
    let two runs be compared."""
    from pushauth.crypto import jws

    old = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        key = ECKey.generate_key("P-256", private=True)
        claims = {"iss": "http://127.0.0.1:8080", "aud": "d" * 33, "sub": "user@example.org", "jti": "c" * 43,
                  "nonce": "n" * 22, "iat": 1, "exp": 2, "app": "Benchmark", "number_matching": True}
        token = jws.sign(claims, key, typ="t", kid="k")

        def best(fn: Callable[[], object]) -> float:
            runs = []
            for _ in range(5):
                t = now()
                for _ in range(100):
                    fn()
                runs.append((now() - t) / 100 * 1e6)
            return min(runs)

        return {"cpu": -1 if cpu is None else cpu,
                "es256_sign_us": best(lambda: jws.sign(claims, key, typ="t", kid="k")),
                "es256_verify_us": best(lambda: jws.verify(token, key))}
    finally:
        os.sched_setaffinity(0, old)


def print_calibration(cal: list[dict[str, float]]) -> None:
    print("calibration (ES256 via pushauth.crypto.jws, best of 5): " + "; ".join(
        f"CPU {int(c['cpu'])}: sign {c['es256_sign_us']:.0f} us, verify {c['es256_verify_us']:.0f} us"
        for c in cal))


# -- statistics ----------------------------------------------------------------------------------------------


def percentile(sorted_vals: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_vals:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_vals)))
    return sorted_vals[min(rank, len(sorted_vals)) - 1]


def summarise(vals: list[float]) -> dict[str, float]:
    s = sorted(vals)
    out = {"n": float(len(s))}
    for p in PERCENTILES:
        out[f"p{p:g}"] = percentile(s, p) * 1000
    out["max"] = (s[-1] * 1000) if s else math.nan
    out["mean"] = (sum(s) / len(s) * 1000) if s else math.nan
    return out


# -- the load generator --------------------------------------------------------------------------------------


@dataclass
class VPhone:
    """A virtual phone: a real enrolled device (P-256 key) for one user."""

    phone: Phone
    key: ECKey
    user: str


@dataclass
class CycleOutcome:
    times: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    waiter_first: bool = False
    started: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


class Recorder:
    """What happened to the cycles that *completed* while this recorder was the active one."""

    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = {s: [] for s in STEPS}
        self.errors: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.completed = 0
        self.failed = 0
        self.waiter_first = 0
        self.marks: list[tuple[float, float]] = []  # (start, cycle latency) of each completed cycle

    def add(self, oc: CycleOutcome) -> None:
        self.requests.update(oc.requests)
        if oc.errors:
            self.failed += 1
            self.errors.update(oc.errors)
            return
        self.completed += 1
        self.waiter_first += oc.waiter_first
        for k, v in oc.times.items():
            self.lat[k].append(v)
        self.marks.append((oc.started, oc.times["cycle"]))


class Load:
    """The login flow and the phones, sharing one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.auth = {"Authorization": f"Bearer {API_KEY}"}
        self.rec = Recorder()

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        raw = None if body is None else _encode(body)
        headers = dict(self.auth)
        if raw is not None:
            headers["Content-Type"] = "application/json"
        async with self.session.request(method, self.base + path, data=raw, headers=headers) as resp:
            content = await resp.read()
            return resp.status, _decode(content) if content else None

    async def enroll(self, user: str) -> VPhone:
        status, body = await self.call("POST", "/v1/enrollments", {"user": user})
        if status != 201:
            raise RuntimeError(f"enrollment of {user} failed: {status} {body}")
        phone = await Phone.enroll(str(body["uri"]), name="bench phone", session=self.session,
                                   server_override=self.base)
        key = ECKey.import_key(phone.to_dict()["key"])
        return VPhone(phone, key, phone.user)

    async def _waiter(self, cid: str) -> tuple[int, Any, float]:
        async with self.session.get(f"{self.base}/v1/challenges/{cid}?wait={WAIT_S}",
                                    headers=self.auth) as resp:
            content = await resp.read()
            t = now()
            return resp.status, _decode(content) if content else None, t

    async def cycle(self, vp: VPhone) -> CycleOutcome:
        oc = CycleOutcome()
        try:
            await self._cycle(vp, oc)
        except (aiohttp.ClientError, TimeoutError, PhoneError, msgspec.DecodeError) as exc:
            oc.errors.append(f"exception {type(exc).__name__}")
        self.rec.add(oc)
        return oc

    async def _cycle(self, vp: VPhone, oc: CycleOutcome) -> None:
        t0 = oc.started = now()
        oc.requests["create"] += 1
        status, body = await self.call("POST", "/v1/challenges", {"user": vp.user})
        t1 = now()
        if status != 201 or not isinstance(body, dict):
            oc.errors.append(f"create {status} {_err(body)}")
            return
        oc.times["create"] = t1 - t0
        cid, number = str(body["id"]), body.get("number")
        oc.requests["wait"] += 1
        waiter = asyncio.create_task(self._waiter(cid))
        try:
            # The phone: a signed GET, and the challenge JWS verified as a real phone does (Phone.fetch).
            oc.requests["fetch"] += 1
            try:
                ch = await vp.phone.fetch(cid)
            except ServerRejected as exc:
                oc.errors.append(f"fetch {exc.status} {exc.error}")
                return
            t2 = now()
            oc.times["fetch"] = t2 - t1
            # The answer, exactly as Phone.approve sends it, but signed here so that the send time is known.
            answer: dict[str, str] = {"nonce": ch.nonce, "decision": "approve"}
            if number is not None:
                answer["number"] = str(number)
            raw = _encode(answer)
            path = f"/v1/device/challenges/{quote(cid, safe='')}/response"
            t3 = now()
            token = device_auth.sign_request(vp.key, method="POST", path_qs=path, body=raw,
                                             jti=secrets.token_urlsafe(18), iat=int(time.time()),
                                             kid=vp.phone.device_id)
            t_send = now()
            oc.requests["respond"] += 1
            rstatus, rbody = await vp.phone.signed_request("POST", path, raw_body=raw, token=token)
            t_ok = now()
            if rstatus != 200 or not isinstance(rbody, dict):
                oc.errors.append(f"respond {rstatus} {_err(rbody)}")
                return
            if rbody.get("status") != "approved":
                oc.errors.append(f"respond 200 status={rbody.get('status')}")
                return
            oc.times["respond"] = t_ok - t3
            wstatus, wbody, t_notified = await waiter
        finally:
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError, TimeoutError):
                    await waiter
        if wstatus != 200 or not isinstance(wbody, dict):
            oc.errors.append(f"wait {wstatus} {_err(wbody)}")
            return
        if wbody.get("status") != "approved" or not wbody.get("assertion"):
            oc.errors.append(f"wait 200 status={wbody.get('status')}")
            return
        oc.times["wait"] = t_notified - t1
        oc.times["notify_after_200"] = t_notified - t_ok
        oc.times["notify_after_send"] = t_notified - t_send
        oc.times["cycle"] = max(t_notified, t_ok) - t0
        oc.waiter_first = t_notified < t_ok


def _err(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("error", "?"))
    return "-"


# -- measurement windows -------------------------------------------------------------------------------------


@dataclass
class Snap:
    wall: float
    server: float
    client: float
    redis: float
    cores: dict[int, tuple[int, int, int]]
    expired_keys: int


class Bench:
    def __init__(self, args: argparse.Namespace, server: Child, redis_child: Child,
                 redis: aioredis.Redis, load: Load) -> None:
        self.args = args
        self.server = server
        self.redis_child = redis_child
        self.r = redis
        self.load = load
        self.phones: list[VPhone] = []

    async def snap(self) -> Snap:
        info = await self.r.info("cpu")
        stats = await self.r.info("stats")
        return Snap(wall=now(), server=proc_cpu_s(self.server.pid), client=self_cpu_s(),
                    redis=float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
                    cores=core_jiffies(), expired_keys=int(stats["expired_keys"]))

    def check_alive(self) -> None:
        for child in (self.server, self.redis_child):
            if not child.alive():
                raise RuntimeError(f"{child.name} exited (code {child.returncode}):\n"
                                   f"{child.log_tail()}")

    async def enroll(self, n: int, concurrency: int = 32) -> None:
        sem = asyncio.Semaphore(concurrency)
        tag = secrets.token_hex(3)

        async def one(i: int) -> VPhone:
            async with sem:
                return await self.load.enroll(f"bench-{tag}-{i:06d}@example.org")

        self.phones = list(await asyncio.gather(*(one(i) for i in range(n))))

    # closed loop: C concurrent cycles back to back
    async def run_max(self, name: str, concurrency: int, duration: float, ramp: float = 1.0,
                      *, on_window: Callable[[], Any] | None = None) -> dict[str, Any]:
        if concurrency > len(self.phones):
            raise SystemExit(f"--phones ({len(self.phones)}) must be >= concurrency ({concurrency})")
        stop = asyncio.Event()

        async def worker(idx: int) -> None:
            mine = self.phones[idx::concurrency]
            i = 0
            while not stop.is_set():
                oc = await self.load.cycle(mine[i % len(mine)])
                i += 1
                if not oc.ok:
                    await asyncio.sleep(0.01)  # do not spin on a failing server

        self.load.rec = Recorder()
        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        try:
            await asyncio.sleep(ramp)
            self.load.rec = rec = Recorder()
            a = await self.snap()
            waiter = on_window() if on_window is not None else None
            await asyncio.sleep(duration)
            b = await self.snap()
            self.load.rec = Recorder()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        if waiter is not None:
            await waiter
        self.check_alive()
        return self.phase_result(name, "max", a, b, rec, concurrency=concurrency)

    # open loop: cycles start at a fixed rate whatever happens to earlier ones
    async def run_rate(self, name: str, rate: float, duration: float,
                       *, on_window: Callable[[], Any] | None = None) -> dict[str, Any]:
        n = max(1, int(rate * duration))
        interval = 1.0 / rate
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[CycleOutcome]] = set()
        lateness: list[float] = []
        self.load.rec = rec = Recorder()
        a = await self.snap()
        waiter = on_window() if on_window is not None else None
        t0 = loop.time()
        for i in range(n):
            target = t0 + i * interval
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lateness.append(max(0.0, loop.time() - target))
            task = asyncio.create_task(self.load.cycle(self.phones[i % len(self.phones)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*list(tasks), return_exceptions=True)
        b = await self.snap()
        self.load.rec = Recorder()
        if waiter is not None:
            await waiter
        self.check_alive()
        out = self.phase_result(name, "rate", a, b, rec, rate=rate)
        late = sorted(lateness)
        out["start_lateness_ms"] = {"p50": percentile(late, 50) * 1000, "p99": percentile(late, 99) * 1000,
                                    "max": late[-1] * 1000}
        out["offered"] = n
        # When did the slowest 1% of cycles start? Clustered = a stall (GC pause, another process on the
        # core); spread evenly = queueing.
        if rec.marks:
            cut = percentile(sorted(c for _, c in rec.marks), 99)
            start = min(t for t, _ in rec.marks)
            out["slow_cycle_starts_s"] = sorted(round(t - start, 2) for t, c in rec.marks if c >= cut)
        return out

    def phase_result(self, name: str, mode: str, a: Snap, b: Snap, rec: Recorder, *,
                     concurrency: int | None = None, rate: float | None = None) -> dict[str, Any]:
        wall = b.wall - a.wall
        cycles = rec.completed
        per = 1000.0 / cycles if cycles else math.nan
        srv, cli, red = b.server - a.server, b.client - a.client, b.redis - a.redis
        cores: dict[int, float] = {}
        steal: dict[int, float] = {}
        for cpu in sorted(b.cores):
            busy, st, total = (b.cores[cpu][i] - a.cores[cpu][i] for i in range(3))
            cores[cpu] = busy / total if total else math.nan
            steal[cpu] = st / total if total else math.nan
        # CPU time on our cores used by processes that are not part of this benchmark (another test run on
        # the machine): it makes the figures noisy, so it is shown next to them.
        other: dict[int, float] = {}
        if self.args.pin:
            other[SERVER_CPU] = cores.get(SERVER_CPU, math.nan) - srv / wall
            other[CLIENT_CPU] = cores.get(CLIENT_CPU, math.nan) - (cli + red) / wall
        if srv / wall >= 0.95:
            bound = "server-bound: the server's core is saturated"
        elif self.args.pin and cores.get(CLIENT_CPU, 0.0) >= 0.95:
            bound = "load-generator-bound: CPU 1 (load generator + Redis) is saturated"
        else:
            bound = "not CPU-bound (arrival rate, concurrency or latency limits it)"
        return {
            "name": name, "mode": mode, "concurrency": concurrency, "rate": rate, "bound": bound,
            "window_s": wall, "cycles": cycles, "failed_cycles": rec.failed,
            "cycles_per_s": cycles / wall,
            "server_cpu_ms_per_cycle": srv * per, "client_cpu_ms_per_cycle": cli * per,
            "redis_cpu_ms_per_cycle": red * per,
            "server_core_util": srv / wall, "client_util": cli / wall, "redis_util": red / wall,
            "core_busy": cores, "core_steal": steal, "core_used_by_others": other,
            "server_bound_capacity_cycles_per_s": (cycles / srv) if srv > 0 else math.nan,
            "waiter_before_phone_200": rec.waiter_first,
            "latency_ms": {s: summarise(rec.lat[s]) for s in STEPS},
            "errors": dict(rec.errors.most_common()),
            "requests": dict(rec.requests),
            "expired_keys_in_window": b.expired_keys - a.expired_keys,
            "server_rss_mib_after": rss_mib(self.server.pid),
        }

    # -- Redis memory per pending challenge ------------------------------------------------------------

    async def mem_snap(self) -> dict[str, int]:
        # Redis frees idle clients' query/output buffers after ~2 s (clientsCron): let them settle, so that
        # what remains in the delta is data, not the buffers of the burst of requests that just ended.
        await asyncio.sleep(self.args.mem_settle)
        info = await self.r.info("memory")
        clients = await self.r.info("clients")
        stats = await self.r.memory_stats()
        db0 = stats.get("db.0", {})
        tables = 0
        if isinstance(db0, dict):
            tables = (int(db0.get("overhead.hashtable.main", 0))
                      + int(db0.get("overhead.hashtable.expires", 0)))
        keyspace = await self.r.info("keyspace")
        db = keyspace.get("db0", {})
        return {"used_memory": int(info["used_memory"]), "clients": int(info.get("mem_clients_normal", 0)),
                "scripts": int(info.get("used_memory_scripts", 0)), "dict_tables": tables,
                "connected_clients": int(clients["connected_clients"]),
                "keys": int(db.get("keys", 0)) if isinstance(db, dict) else 0,
                "expired_keys": int((await self.r.info("stats"))["expired_keys"])}

    async def create_many(self, users: list[str], concurrency: int) -> list[str]:
        sem = asyncio.Semaphore(concurrency)
        errors: Counter[str] = Counter()

        async def one(user: str) -> str | None:
            async with sem:
                status, body = await self.load.call("POST", "/v1/challenges", {"user": user})
            if status != 201 or not isinstance(body, dict):
                errors[f"create {status} {_err(body)}"] += 1
                return None
            return str(body["id"])

        out = [c for c in await asyncio.gather(*(one(u) for u in users)) if c is not None]
        if errors:
            print(f"  memory phase: create errors: {dict(errors)}")
        return out

    async def run_memory(self, total: int, concurrency: int) -> dict[str, Any]:
        users = [vp.user for vp in self.phones]
        per_user = max(1, math.ceil(total / len(users)))
        ks = KeySpace(PREFIX)

        def delta(a: dict[str, int], b: dict[str, int], k: int) -> dict[str, float]:
            d_used = b["used_memory"] - a["used_memory"]
            d_cli = b["clients"] - a["clients"]
            d_tab = b["dict_tables"] - a["dict_tables"]
            d_scr = b["scripts"] - a["scripts"]
            return {"challenges": k, "used_memory_delta": d_used, "client_buffers_delta": d_cli,
                    "dict_tables_delta": d_tab, "scripts_delta": d_scr, "keys_delta": b["keys"] - a["keys"],
                    "bytes_per_challenge": d_used / k if k else math.nan,
                    "bytes_per_challenge_excl_client_buffers": (d_used - d_cli - d_scr) / k
                    if k else math.nan}

        base = await self.mem_snap()
        # Pass 1: one pending challenge per user (the common case: the user's pending zset is new).
        first = await self.create_many(users, concurrency)
        s1 = await self.mem_snap()
        # Pass 2: more pending challenges for the same users (the zset exists; only the hash + one entry).
        rest_users = [u for _ in range(per_user - 1) for u in users][: max(0, total - len(users))]
        rest = await self.create_many(rest_users, concurrency)
        s2 = await self.mem_snap()
        cids = first + rest
        sample = cids[0]
        uid = ids.challenge_uid(sample)
        assert uid is not None
        usage: dict[str, int | None] = {}
        with contextlib.suppress(Exception):
            usage["challenge_hash_pending"] = await self.r.memory_usage(ks.challenge(uid, sample), samples=0)
            usage[f"pending_zset_{per_user}_entries"] = await self.r.memory_usage(ks.pending(uid), samples=0)
            nm = await self.r.hgetall(ks.challenge(uid, sample))
            usage["challenge_hash_fields"] = len(nm)
            usage["challenge_hash_payload_bytes"] = sum(len(str(k)) + len(str(v)) for k, v in nm.items())
        # A user with exactly one pending challenge: the zset created by pass 1 alone.
        # (Measured on a scratch key with the same member/score shape, so nothing of the server's is touched.)
        scratch = f"bench:scratch:{{{uid}}}:pending"
        await self.r.zadd(scratch, {sample: time.time() + 60})
        usage["pending_zset_1_entry"] = await self.r.memory_usage(scratch, samples=0)
        await self.r.delete(scratch)
        # The phones' jti replay-cache keys and a decided challenge are what a finished cycle leaves behind.
        jti_keys = [k async for k in self.r.scan_iter(match=f"{PREFIX}:*:jti:d*", count=1000)][:1]
        if jti_keys:
            usage["jti_key"] = await self.r.memory_usage(jti_keys[0], samples=0)
            usage["jti_ttl_s"] = await self.r.ttl(jti_keys[0])
        # Cancel them all: what stays is the decided challenge, kept for `retention_s` for the login flow.
        sem = asyncio.Semaphore(concurrency)
        cancel_errors: Counter[str] = Counter()

        async def cancel(cid: str) -> None:
            async with sem:
                status, body = await self.load.call("DELETE", f"/v1/challenges/{cid}")
            if status != 200:
                cancel_errors[f"cancel {status} {_err(body)}"] += 1

        await asyncio.gather(*(cancel(c) for c in cids))
        s3 = await self.mem_snap()
        with contextlib.suppress(Exception):
            usage["challenge_hash_decided"] = await self.r.memory_usage(ks.challenge(uid, sample), samples=0)
            usage["decided_ttl_s"] = await self.r.ttl(ks.challenge(uid, sample))
        expired = s3["expired_keys"] - base["expired_keys"]
        return {
            "users": len(users), "per_user": per_user, "baseline": base,
            "pending_total": delta(base, s2, len(cids)),
            "pending_first_per_user": delta(base, s1, len(first)),
            "pending_additional_same_user": delta(s1, s2, len(rest)),
            "retained_after_cancel": delta(base, s3, len(cids)),
            "memory_usage": usage,
            "cancel_errors": dict(cancel_errors),
            "keys_expired_during_measurement": expired,
        }


# -- profiling -----------------------------------------------------------------------------------------------

# Who a sample of server CPU is charged to: the innermost frame that is not the standard library (so a
# socket write made by redis-py is redis-py's, a random id made by pushauth is pushauth's); a sample with only
# standard-library frames is the event loop itself (select, recv, callbacks).
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ES256 JWS (joserfc, cryptography, pushauth.crypto)", ("joserfc/", "cryptography/", "pushauth/crypto/")),
    ("redis-py (commands, pub/sub, pool, incl. its socket I/O)", ("redis/", "hiredis")),
    ("aiohttp (HTTP parse, routing, responses, incl. writes)", ("aiohttp/", "yarl/", "multidict/",
                                                                 "propcache/")),
    ("logging (structlog)", ("structlog/",)),
    ("pushauth (handlers, middleware, domain code)", ("pushauth/",)),
)
EVENT_LOOP = "event loop itself (select, socket reads, callbacks)"
_STDLIB = frozenset(sys.stdlib_module_names)
# The frames that run the event loop (asyncio's own, or aiohttp's run_app when uvloop's C loop is used).
_LOOP_FRAMES = ("BaseEventLoop._run_once ", "BaseEventLoop.run_forever ", "run_app (aiohttp/")


def _frame_file(frame: str) -> str:
    i = frame.rfind(" (")
    return frame[i + 2:].rstrip(")") if i >= 0 else frame


def _is_stdlib(file: str) -> bool:
    if file.startswith("<frozen") or ("/lib/python3." in file and "site-packages" not in file):
        return True
    top = file.split("/", 1)[0].split(":", 1)[0].removesuffix(".py")
    return top in _STDLIB


def _bucket(frames: Sequence[str]) -> str:
    # Only what runs inside the event loop counts: the frames above it (`run_app`, the CLI) own nothing.
    loop = [i for i, f in enumerate(frames) if f.startswith(_LOOP_FRAMES)]
    for frame in reversed(frames[loop[-1] + 1:] if loop else frames):
        file = _frame_file(frame)
        if _is_stdlib(file):
            continue
        for name, needles in BUCKETS:
            if any(n in file for n in needles):
                return name
        return "other third-party"
    return EVENT_LOOP


def short_frame(frame: str) -> str:
    """`func (/long/path/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py:12)`."""
    i = frame.rfind(" (")
    if i < 0:
        return frame
    path = frame[i + 2:].rstrip(")")
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        j = path.find(marker)
        if j >= 0:
            path = path[j + len(marker):]
            break
    return f"{frame[:i]} ({path})"


def analyse_pyspy(raw_path: Path, top: int) -> dict[str, Any]:
    """Self and inclusive sample shares per function, and per category (innermost matching frame)."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    cat: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short_frame(f) for f in stack.split(";")]
        # py-spy puts the thread name first when --threads is on; we do not use it.
        total += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        cat[_bucket(stack.split(";"))] += n
    share = (lambda n: 100.0 * n / total) if total else (lambda n: math.nan)
    return {
        "samples": total,
        "self": [(f, share(n)) for f, n in self_c.most_common(top)],
        "inclusive": [(f, share(n)) for f, n in incl.most_common(top * 3)
                      if not f.startswith(("<module>", "run (", "run_forever", "_run_once", "_run (",
                                           "main (", "run_app", "_run_module", "_run_code"))][:top],
        "categories": [(c, share(n)) for c, n in cat.most_common()],
    }


def analyse_cprofile(prof_path: Path, top: int) -> dict[str, Any]:
    import pstats

    st = pstats.Stats(str(prof_path))
    raw = cast(dict[tuple[str, int, str], tuple[int, int, float, float, Any]],
               st.stats)  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0

    def name(k: tuple[str, int, str]) -> str:
        return short_frame(f"{k[2]} ({k[0]}:{k[1]})")

    by_self = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    by_cum = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)[: top * 3]
    return {
        "total_s": total,
        "self": [(name(k), 100.0 * v[2] / total, v[1]) for k, v in by_self],
        "inclusive": [(name(k), 100.0 * v[3] / total, v[1]) for k, v in by_cum
                      if not name(k).startswith(("<module>", "run (", "run_forever", "_run_once", "_run ("))
                      ][:top],
    }


# -- output --------------------------------------------------------------------------------------------------


def fmt(v: float | None, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}"


def print_phase_table(phases: list[dict[str, Any]]) -> None:
    print(f"{'phase':<20}{'cycles':>8}{'cycles/s':>10}{'srv ms/c':>10}{'cli ms/c':>10}{'rds ms/c':>10}"
          f"{'srv core':>10}{'core0':>7}{'core1':>7}{'others':>10}{'fail':>6}")
    for p in phases:
        cores, other = p["core_busy"], p["core_used_by_others"]
        others = "/".join(f"{max(0.0, other[c]) * 100:.0f}" for c in sorted(other)) if other else "-"
        print(f"{p['name']:<20}{p['cycles']:>8}{p['cycles_per_s']:>10.1f}"
              f"{fmt(p['server_cpu_ms_per_cycle']):>10}{fmt(p['client_cpu_ms_per_cycle']):>10}"
              f"{fmt(p['redis_cpu_ms_per_cycle']):>10}{p['server_core_util'] * 100:>9.0f}%"
              f"{cores.get(0, math.nan) * 100:>6.0f}%{cores.get(1, math.nan) * 100:>6.0f}%"
              f"{others + '%':>10}{p['failed_cycles']:>6}")
    noisy = [p["name"] for p in phases if any(v > 0.05 for v in p["core_used_by_others"].values())]
    stolen = [p["name"] for p in phases if any(v > 0.02 for v in p["core_steal"].values())]
    if noisy:
        print(f"  WARNING: other processes used > 5% of a benchmark core during {', '.join(noisy)}: "
              "those figures are disturbed; rerun on a quiet machine")
    if stolen:
        print(f"  WARNING: the hypervisor stole > 2% of a core during {', '.join(stolen)}")


def print_latency(p: dict[str, Any]) -> None:
    cols = [f"p{q:g}" for q in PERCENTILES] + ["max"]
    print(f"  {'step (ms)':<20}{'n':>7}" + "".join(f"{c:>9}" for c in cols) + "   what")
    for s in STEPS:
        lat = p["latency_ms"][s]
        print(f"  {s:<20}{int(lat['n']):>7}" + "".join(f"{fmt(lat[c]):>9}" for c in cols)
              + f"   {STEP_HELP[s]}")


def print_errors(p: dict[str, Any]) -> None:
    req = p["requests"]
    print("  requests: " + ", ".join(f"{k} {v}" for k, v in req.items()))
    if p["errors"]:
        print("  ERRORS (non-2xx or exception, per step): "
              + ", ".join(f"{k}: {v}" for k, v in p["errors"].items()))
    else:
        print("  errors: none")


def print_memory(m: dict[str, Any]) -> None:
    def row(label: str, d: dict[str, float]) -> None:
        print(f"  {label:<44}{int(d['challenges']):>7}{d['used_memory_delta']:>12}"
              f"{fmt(d['bytes_per_challenge'], 0):>10}"
              f"{fmt(d['bytes_per_challenge_excl_client_buffers'], 0):>12}"
              f"{d['keys_delta']:>8}{d['dict_tables_delta']:>10}")

    print(f"  {'':<44}{'chall.':>7}{'Δused_mem':>12}{'B/chall':>10}{'excl bufs*':>12}{'Δkeys':>8}"
          f"{'Δdict**':>10}")
    row(f"pending, {m['users']} users x {m['per_user']} (headline)", m["pending_total"])
    row("  first pending challenge of a user", m["pending_first_per_user"])
    row("  each further pending challenge, same user", m["pending_additional_same_user"])
    row("after cancelling all (retained, decided)", m["retained_after_cancel"])
    print("  B/chall = Δ INFO used_memory / challenges (incl. keyspace dict entries and any dict resize)")
    print("  * excl bufs = the same minus the change in client buffers (mem_clients_normal) and script cache")
    print("  ** Δdict = growth of the keyspace hash tables (MEMORY STATS overhead.hashtable.main+expires): "
          "dict entries, plus a table doubling when one happens in that step")
    print("  MEMORY USAGE (bytes): " + ", ".join(f"{k}={v}" for k, v in m["memory_usage"].items()))
    if m["keys_expired_during_measurement"]:
        print(f"  WARNING: {m['keys_expired_during_measurement']} keys expired during the measurement")
    if m["cancel_errors"]:
        print(f"  cancel errors: {m['cancel_errors']}")


def print_profile(prof: dict[str, Any]) -> None:
    if "samples" in prof:
        print(f"  py-spy: {prof['samples']} samples of the server's active CPU (idle excluded)")
        per = prof.get("server_us_per_cycle", math.nan)
        print("  by owner (innermost non-standard-library frame; C extensions count for their caller),")
        print(f"  and that share of the {fmt(per, 0)} us of server CPU per cycle measured in the window:")
        for c, s in prof["categories"]:
            print(f"    {s:6.1f}%  {fmt(s / 100 * per, 0):>5} us/cycle  {c}")
        print("  top self:")
        for f, s in prof["self"]:
            print(f"    {s:6.1f}%  {f}")
        print("  top inclusive (cumulative):")
        for f, s in prof["inclusive"]:
            print(f"    {s:6.1f}%  {f}")
    else:
        print(f"  cProfile: {prof['total_s']:.2f} s profiled "
              "(whole server life; cProfile inflates call costs)")
        print("  top self (tottime):")
        for f, s, n in prof["self"]:
            print(f"    {s:6.1f}%  {n:>9} calls  {f}")
        print("  top inclusive (cumtime):")
        for f, s, n in prof["inclusive"]:
            print(f"    {s:6.1f}%  {n:>9} calls  {f}")


# -- orchestration -------------------------------------------------------------------------------------------


# Experiments, not supported ways to run pushauth: the same `pushauth serve`, started through `python -c` so
# that the garbage collector's pauses can be recorded (printed to the server's stderr at exit as one
# `BENCH-GC {json}` line). The event loop is the server's own setting (server.event_loop, --server-loop).
SERVER_WRAPPER = """
import asyncio, atexit, gc, json, sys, time
if {gc_stats}:
    _start = [0.0]
    _stats = {{g: {{"collections": 0, "total_ms": 0.0, "max_ms": 0.0}} for g in (0, 1, 2)}}
    def _gc(phase, info):
        if phase == "start":
            _start[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - _start[0]) * 1000
        st = _stats[info["generation"]]
        st["collections"] += 1
        st["total_ms"] += ms
        st["max_ms"] = max(st["max_ms"], ms)
    gc.callbacks.append(_gc)
    def _report():
        import collections
        objs = gc.get_objects()
        types = collections.Counter(str(getattr(type(o), "__module__", "?")) + "." + type(o).__qualname__
                                    for o in objs)
        _stats["heap"] = {{"tracked_objects": len(objs), "top_types": types.most_common(12)}}
        t = time.perf_counter()
        gc.collect()
        _stats["heap"]["full_collect_ms_at_exit"] = (time.perf_counter() - t) * 1000
        sys.stderr.write("BENCH-GC " + json.dumps(_stats) + "\\n")
    atexit.register(_report)
if {gc_freeze}:
    # What the server itself could do: once started up, move everything alive (modules, app, clients) out
    # of the collector's reach, so a full collection only walks what requests created since.
    import pushauth.cli.serve_cmd as _serve
    _create_app = _serve.create_app
    async def _freeze(app):
        gc.collect()
        gc.freeze()
    def _patched(settings):
        app = _create_app(settings)
        app.on_startup.append(_freeze)
        return app
    _serve.create_app = _patched
from pushauth.cli import main
sys.exit(main())
"""


def write_config(path: Path, port: int, redis_port: int, log_level: str) -> None:
    path.write_text(f"""\
[server]
host = "{HOST}"
port = {port}
base_url = "http://{HOST}:{port}"

[store]
redis_url = "redis://{HOST}:{redis_port}/0"
prefix = "{PREFIX}"

[keys]
ephemeral = true

[[applications]]
id = "{APP_ID}"
name = "Benchmark login flow"
api_key_sha256 = ["{sha256_hex(API_KEY)}"]

[admin]
token_sha256 = ["{sha256_hex(ADMIN_TOKEN)}"]

# A benchmark phone signs in many times a minute, which the push-bombing rule (5 prompts in 5 minutes)
# would rightly refuse (the bench has enough phones to stay under 1000 per 5 minutes each); every other
# rule and the ledger itself run as in production.
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


def config_head(port: int, redis_port: int, app_name: str) -> str:
    """What every benchmark's server config starts with (bench/radius.py, oidc.py, ciba.py add their own
    sections): this host and Redis, throw-away keys, one application, and detection and rate limits set so
    that the load itself is not refused (see write_config above for why each is what it is)."""
    return f"""\
[server]
host = "{HOST}"
port = {port}
base_url = "http://{HOST}:{port}"
[store]
redis_url = "redis://{HOST}:{redis_port}/0"
prefix = "{PREFIX}"
[keys]
ephemeral = true
[[applications]]
id = "{APP_ID}"
name = "{app_name}"
api_key_sha256 = ["{sha256_hex(API_KEY)}"]
[detection]
push_bombing_max = 1000
[rate_limits]
ip_requests = 10000000
application_requests = 10000000
auth_failures = 0
"""


def env_for_server(sets: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHAUTH_")}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set wants SECTION.KEY=VALUE, got {item!r}")
        section, name = key.split(".", 1)
        env[f"PUSHAUTH_{section.upper()}__{name.upper()}"] = value
    return env


def start_redis(tmp: Path, cpu: int | None) -> tuple[Child, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH (make ensure-redis installs it)")
    for _ in range(3):
        port = free_port()
        child = bench_child("redis-server", [
            binary, "--port", str(port), "--bind", HOST, "--dir", str(tmp), "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no",
            "--logfile", str(tmp / "redis.log")], tmp / "redis.stderr", cpu=cpu)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and child.alive():
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return child, port
            time.sleep(0.05)
        child.stop()
    raise SystemExit("redis-server did not start; see " + str(tmp / "redis.log"))


def wait_http(url: str, child: Child, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise SystemExit(f"the pushauth server exited at start:\n{child.log_tail()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"the pushauth server did not answer {url} within {timeout:.0f} s:\n{child.log_tail()}")


def report_gc(server: Child) -> dict[str, Any]:
    """The server's garbage-collector pauses over its whole life (see SERVER_WRAPPER)."""
    text = server.log_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("BENCH-GC ")]
    if not lines:
        print("\nGC stats: the server wrote none (did it exit cleanly?)")
        return {}
    stats: dict[str, Any] = _decode(lines[-1].removeprefix("BENCH-GC "))
    print("\n== server garbage collector, whole server life")
    heap = stats.pop("heap", {})
    for gen, st in stats.items():
        n = st["collections"]
        print(f"  gen {gen}: {n:>7} collections, {st['total_ms']:9.1f} ms total, "
              f"mean {st['total_ms'] / n if n else 0:.3f} ms, max pause {st['max_ms']:.2f} ms")
    if heap:
        print(f"  at exit: {heap['tracked_objects']} GC-tracked objects, a full collection took "
              f"{heap['full_collect_ms_at_exit']:.1f} ms; most common: "
              + ", ".join(f"{t} {n}" for t, n in heap["top_types"][:8]))
        stats["heap"] = heap
    return stats


def source_tree() -> str:
    """Which code is being measured: the commit, and how many files differ from it (read-only git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"commit {head}" + (f" + {len(dirty)} modified tracked files" if dirty else " (clean)")


def find_pyspy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


async def run_async(args: argparse.Namespace, server: Child, redis_child: Child, redis_port: int,
                    base: str, tmp: Path, results: dict[str, Any]) -> None:
    concs = [int(c) for c in str(args.concurrency).split(",") if c]
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=WAIT_S + 20)
    r = aioredis.Redis(host=HOST, port=redis_port, decode_responses=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        load = Load(session, base)
        bench = Bench(args, server, redis_child, r, load)
        t = now()
        await bench.enroll(args.phones)
        print(f"enrolled {len(bench.phones)} phones (one user each) in {now() - t:.1f} s")
        results["phones"] = len(bench.phones)
        phases: list[dict[str, Any]] = []
        results["phases"] = phases
        if args.warmup > 0:
            w = await bench.run_max("warm-up", min(16, args.phones), args.warmup, ramp=0.5)
            print(f"warm-up: {w['cycles_per_s']:.0f} cycles/s, failed cycles {w['failed_cycles']}"
                  + (f", errors {w['errors']}" if w["errors"] else ""))

        if args.mode in ("all", "memory"):
            print(f"\n== Redis memory per pending challenge ({args.mem_challenges} challenges, idle server)")
            mem = await bench.run_memory(args.mem_challenges, 32)
            results["memory"] = mem
            print_memory(mem)

        print("\ncolumns: cycles = completed in the window; srv/cli/rds ms/c = CPU ms per cycle of the\n"
              "  server (/proc/<pid>/stat), this load generator (getrusage) and redis-server (INFO cpu);\n"
              "  srv core = server CPU / wall time; core0/core1 = whole-core busy (/proc/stat); others =\n"
              "  share of core0/core1 used by processes outside this benchmark; fail = failed cycles.")
        best: dict[str, Any] | None = None
        if args.mode in ("all", "max"):
            dur = args.duration or 8.0
            print(f"\n== closed loop (max throughput), {dur:g} s per concurrency")
            for c in concs:
                p = await bench.run_max(f"max c={c}", c, dur)
                phases.append(p)
                print_phase_table([p])
                if p["errors"]:
                    print_errors(p)
                if best is None or p["cycles_per_s"] > best["cycles_per_s"]:
                    best = p
            if best is not None:
                results["best_max"] = best["name"]
                print(f"best: {best['name']}")
                print_latency(best)
                print_errors(best)

        if args.mode in ("all", "rate"):
            dur = args.rate_duration if args.mode == "all" else (args.duration or args.rate_duration)
            print(f"\n== open loop, {args.rate:g} cycles/s for {dur:g} s")
            p = await bench.run_rate(f"rate {args.rate:g}/s", args.rate, dur)
            phases.append(p)
            print_phase_table([p])
            print_latency(p)
            print(f"  start lateness (client scheduling) ms: p50 {fmt(p['start_lateness_ms']['p50'])}"
                  f" p99 {fmt(p['start_lateness_ms']['p99'])} max {fmt(p['start_lateness_ms']['max'])};"
                  f" waiter answered before the phone's 200 in {p['waiter_before_phone_200']} cycles")
            slow = p.get("slow_cycle_starts_s", [])
            if slow:
                print(f"  the slowest 1% of cycles started at (s into the window): "
                      f"{', '.join(f'{t:g}' for t in slow[:40])}{' ...' if len(slow) > 40 else ''}")
            print_errors(p)

        if args.profile and args.profile_tool == "py-spy":
            results["profile"] = await profile_pyspy(args, bench, server, tmp, best, concs)
    await r.aclose()


async def profile_pyspy(args: argparse.Namespace, bench: Bench, server: Child, tmp: Path,
                        best: dict[str, Any] | None, concs: list[int]) -> dict[str, Any]:
    """A separate window with py-spy sampling the server: at the best concurrency (closed loop), or at
    --rate when --mode rate. py-spy is pinned to the load generator's core, so the server core is not
    disturbed except by the brief stops of each sample (use --profile-nonblocking to avoid even those,
    at the price of some broken stacks)."""
    out = tmp / "pyspy.txt"
    dur = args.profile_duration
    pyspy = cast(str, find_pyspy())
    argv = [pyspy, "record", "--pid", str(bench.server.pid), "--rate", str(args.profile_rate),
            "--duration", str(math.ceil(dur)), "--format", "raw", "--function", "--output", str(out)]
    if args.profile_nonblocking:
        argv.append("--nonblocking")
    spies: list[Child] = []  # started when the measured window opens

    async def wait_spy(spy: Child) -> None:
        await asyncio.to_thread(spy.wait, dur + 30)

    def on_window() -> Any:
        spies.append(bench_child("py-spy", argv, tmp / "pyspy.log", cpu=CLIENT_CPU if args.pin else None))
        return wait_spy(spies[0])

    try:
        if args.mode == "rate":
            print(f"\n== profile: py-spy on the server during {dur:g} s at {args.rate:g} cycles/s")
            p = await bench.run_rate(f"profiled {args.rate:g}/s", args.rate, dur, on_window=on_window)
        else:
            c = int(best["concurrency"]) if best is not None else concs[-1]
            print(f"\n== profile: py-spy on the server during {dur:g} s at concurrency {c}")
            p = await bench.run_max(f"profiled c={c}", c, dur + 0.5, on_window=on_window)
    finally:
        for spy in spies:
            spy.stop()
    print_phase_table([p])
    print("  (figures with py-spy attached; py-spy itself runs on the load generator's core)")
    if not out.exists():
        why = spies[0].log_tail() if spies else "(never started)"
        print(f"py-spy wrote nothing:\n{why}")
        return {"phase": p, "error": why}
    spy = spies[0]
    prof = analyse_pyspy(out, args.top)
    prof["raw_file"] = str(out)
    prof["phase"] = p
    prof["server_us_per_cycle"] = p["server_cpu_ms_per_cycle"] * 1000
    prof["pyspy_log"] = spy.log_tail(3)
    for line in spy.log_tail(5).splitlines():
        if "Samples:" in line:
            print("  " + line.strip())
    print_profile(prof)
    return prof


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("all", "max", "rate", "memory"), default="all",
                    help="all (default): memory, max sweep, then rate; or one of them")
    ap.add_argument("--concurrency", default="16,32,64",
                    help="closed-loop concurrent cycles; a comma list is swept and the best reported")
    ap.add_argument("--duration", type=float, default=None,
                    help="measured seconds per phase (default: 8 for max, --rate-duration for rate)")
    ap.add_argument("--rate", type=float, default=200.0, help="open-loop arrivals per second (default 200)")
    ap.add_argument("--rate-duration", type=float, default=15.0, help="open-loop seconds in --mode all")
    ap.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds before measuring (default 3)")
    ap.add_argument("--phones", type=int, default=1000,
                    help="virtual phones = users (default 1000); each cycle uses the next one")
    ap.add_argument("--mem-challenges", type=int, default=10_000,
                    help="pending challenges created for the memory measurement (default 10000)")
    ap.add_argument("--mem-settle", type=float, default=2.5,
                    help="seconds to let Redis free idle client buffers before each memory reading")
    ap.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="warning",
                    help="server log level (info = one access-log line per request, to a file)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="extra server setting, passed as PUSHAUTH_SECTION__KEY (repeatable)")
    ap.add_argument("--profile", nargs="?", const="auto", choices=("auto", "py-spy", "cprofile"),
                    help="profile the server: py-spy (sampling, separate window) or cprofile (whole run)")
    ap.add_argument("--profile-duration", type=float, default=10.0, help="seconds sampled (default 10)")
    ap.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second (default 250)")
    ap.add_argument("--profile-nonblocking", action="store_true",
                    help="py-spy --nonblocking: never stops the server, but some stacks come out broken")
    ap.add_argument("--top", type=int, default=25, help="profile entries to print")
    ap.add_argument("--server-loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                    help="the server's server.event_loop (default auto: uvloop when installed, as in "
                         "production)")
    ap.add_argument("--gc-stats", action="store_true",
                    help="experiment: record the server's garbage-collection pauses (via a wrapper)")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="experiment: gc.collect(); gc.freeze() at the end of server start-up (wrapper)")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    ap.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (config, logs, profiles)")
    args = ap.parse_args(argv)
    args.profile_tool = None
    if args.profile:
        spy = find_pyspy()
        args.profile_tool = "cprofile" if args.profile == "cprofile" or (
            args.profile == "auto" and spy is None) else "py-spy"
        if args.profile_tool == "py-spy" and spy is None:
            raise SystemExit("py-spy not found: .venv/bin/pip install py-spy (or use --profile cprofile)")

    if (args.gc_stats or args.gc_freeze) and args.profile_tool == "cprofile":
        raise SystemExit("--gc-stats / --gc-freeze and --profile cprofile do not combine")
    if args.server_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise SystemExit("--server-loop uvloop: .venv/bin/pip install uvloop first")
    started = time.monotonic()
    print("command: " + shlex.join(sys.orig_argv))
    tree = source_tree()
    print(f"source: {tree}")
    ncpu = len(os.sched_getaffinity(0))
    if args.pin and (ncpu < 2 or not {SERVER_CPU, CLIENT_CPU} <= os.sched_getaffinity(0)):
        print(f"note: only CPUs {sorted(os.sched_getaffinity(0))} available; not pinning")
        args.pin = False
    if args.pin:
        os.sched_setaffinity(0, {CLIENT_CPU})
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"python {sys.version.split()[0]}")
    if args.pin:
        print(f"pinning: pushauth server on CPU {SERVER_CPU}; load generator (this process) AND redis-server "
              f"on CPU {CLIENT_CPU} (Redis shares the load generator's core)")

    results: dict[str, Any] = {"command": shlex.join(sys.orig_argv), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "loadavg_start": os.getloadavg()[0], "source": tree}
    cal_cpus: list[int | None] = [SERVER_CPU, CLIENT_CPU] if args.pin else [None]
    results["calibration_start"] = [calibrate(c) for c in cal_cpus]
    print_calibration(results["calibration_start"])
    tmp = Path(tempfile.mkdtemp(prefix="pushauth-bench-"))
    children: list[Child] = []

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    rc = 0
    try:
        redis_child, redis_port = start_redis(tmp, CLIENT_CPU if args.pin else None)
        children.append(redis_child)
        port = free_port()
        cfg = tmp / "config.toml"
        write_config(cfg, port, redis_port, args.log_level)
        cmd = [sys.executable]
        if args.profile_tool == "cprofile":
            cmd += ["-m", "cProfile", "-o", str(tmp / "server.prof")]
        if args.gc_stats or args.gc_freeze:
            code = SERVER_WRAPPER.format(gc_stats=args.gc_stats, gc_freeze=args.gc_freeze)
            cmd += ["-c", code, "-c", str(cfg), "serve"]
        else:
            cmd += ["-m", "pushauth", "-c", str(cfg), "serve"]
        server = bench_child("pushauth server", cmd, tmp / "server.log", cpu=SERVER_CPU if args.pin else None,
                             env=env_for_server([f"server.event_loop={args.server_loop}", *args.set]))
        children.append(server)
        base = f"http://{HOST}:{port}"
        wait_http(base + "/.well-known/jwks.json", server)
        shown = ["<wrapper: pushauth serve"
                 + (" + GC timing" if args.gc_stats else "") + (" + gc.freeze()" if args.gc_freeze else "")
                 + ">" if len(c) > 200 else c for c in cmd]
        print(f"server: {' '.join(shown)} (pid {server.pid}), log level {args.log_level}"
              + (f", settings {args.set}" if args.set else ""))
        print(f"redis: 127.0.0.1:{redis_port} (pid {redis_child.pid}), --save '' --appendonly no")
        if args.profile_tool == "cprofile":
            print("NOTE: the server runs under cProfile: every figure below carries its overhead")
        asyncio.run(run_async(args, server, redis_child, redis_port, base, tmp, results))
        results["loadavg_end"] = os.getloadavg()[0]
        server.stop(40)
        if args.gc_stats:
            results["server_gc"] = report_gc(server)
        results["calibration_end"] = [calibrate(c) for c in cal_cpus]
        print("\nat the end: ", end="")
        print_calibration(results["calibration_end"])
        if args.profile_tool == "cprofile":
            prof_path = tmp / "server.prof"
            if prof_path.exists():
                print("\n== profile: cProfile of the server")
                prof = analyse_cprofile(prof_path, args.top)
                prof["file"] = str(prof_path)
                results["profile"] = prof
                print_profile(prof)
            else:
                print("cProfile wrote no output (server did not exit cleanly)")
        print_summary(results)
        failed = sum(p["failed_cycles"] for p in results.get("phases", []))
        if failed:
            print(f"exit status 1: {failed} cycles failed", file=sys.stderr)
            rc = 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        rc = 130
    finally:
        # Interrupted: long-polling waiters may still be open, and a graceful server shutdown would wait
        # for them; give it 3 s, then SIGKILL.
        for child in reversed(children):
            child.stop(3 if rc else 10)
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


def jsonable(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if hasattr(x, "__dataclass_fields__"):
        return jsonable(asdict(x))
    return x


def _iter_phases(results: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from results.get("phases", [])


def print_summary(results: dict[str, Any]) -> None:
    phases = list(_iter_phases(results))
    if not phases and "memory" not in results:
        return
    print("\n== summary (bar: >= 400 cycles/s, <= 2.5 ms server CPU/cycle, p99 answer-to-notified < 20 ms "
          "at 200/s, < 1 KiB Redis per pending challenge)")
    if phases:
        print_phase_table(phases)
    best = next((p for p in phases if p["name"] == results.get("best_max")), None)
    if best is not None:
        print(f"  max throughput: {best['cycles_per_s']:.0f} cycles/s at concurrency {best['concurrency']}; "
              f"server {best['server_cpu_ms_per_cycle']:.2f} ms CPU/cycle "
              f"(=> {best['server_bound_capacity_cycles_per_s']:.0f} cycles/s per fully busy core), "
              f"load generator {best['client_cpu_ms_per_cycle']:.2f} ms, "
              f"redis {best['redis_cpu_ms_per_cycle']:.2f} ms; {best['bound']}")
    for p in phases:
        if p["mode"] == "rate":
            n2 = p["latency_ms"]["notify_after_200"]
            ns = p["latency_ms"]["notify_after_send"]
            print(f"  {p['name']}: answer-to-notified after the phone's 200: p50 {fmt(n2['p50'])} ms, "
                  f"p99 {fmt(n2['p99'])} ms; after sending the answer: p50 {fmt(ns['p50'])} ms, "
                  f"p99 {fmt(ns['p99'])} ms; per-step p99 (ms): " + ", ".join(
                      f"{s} {fmt(p['latency_ms'][s]['p99'])}" for s in ("create", "fetch", "respond", "wait",
                                                                         "cycle")))
    mem = results.get("memory")
    if mem:
        t = mem["pending_total"]
        print(f"  Redis per pending challenge: {t['bytes_per_challenge']:.0f} B "
              f"({t['bytes_per_challenge_excl_client_buffers']:.0f} B without client buffers); "
              f"first of a user {mem['pending_first_per_user']['bytes_per_challenge']:.0f} B, "
              f"further ones {mem['pending_additional_same_user']['bytes_per_challenge']:.0f} B")
    if phases:
        print("  server RSS after each phase (MiB): " + ", ".join(
            f"{p['name']} {p['server_rss_mib_after']:.0f}" for p in phases))
    errs = sum(p["failed_cycles"] for p in phases)
    print(f"  failed cycles across measured phases: {errs}")


if __name__ == "__main__":
    sys.exit(main())

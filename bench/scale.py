#!/usr/bin/env python3
"""Scaling benchmark (issue 8): full sign-in cycles per second with 1 and with N `pushauth serve` processes
on one Redis or on a local Redis Cluster (3 masters + 3 replicas). Not a test:

    .venv/bin/python bench/scale.py                       # 1 and 3 servers, single Redis, then Cluster
    .venv/bin/python bench/scale.py --servers 1,3 --no-cluster --duration 10 --json /tmp/scale.json

A cycle is bench/cycle.py's (create, waiting login flow, phone fetch + verify, approve, waiter returns
approved with an assertion), with the phone enrolled through one server and the login flow on the NEXT
one, so every wake-up crosses instances. Closed loop at --concurrency. No pinning: this machine has 2 cores,
so N servers share them with Redis and the load generator; the figure says how much one more process adds
here, not what N cores would give (that is the per-process figure times N, as Redis has headroom: see
bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.cycle import (
    HOST,
    Load,
    VPhone,
    bench_child,
    free_port,
    start_redis,
    summarise,
    wait_http,
    write_config,
)
from testkit.processes import Child
from testkit.redis_cluster import RedisCluster


def config_for(tmp: Path, i: int, port: int, redis_port: int, cluster_url: str | None,
               public: str) -> Path:
    path = tmp / f"server{i}.toml"
    write_config(path, port, redis_port, "warning")
    text = path.read_text().replace(f'base_url = "http://{HOST}:{port}"', f'base_url = "{public}"')
    if cluster_url:
        text = text.replace(f'redis_url = "redis://{HOST}:{redis_port}/0"',
                            f'redis_url = "{cluster_url}"\ncluster = true')
    path.write_text(text)
    return path


async def drive(bases: list[str], phones_n: int, concurrency: int, duration: float) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        loads = [Load(session, b) for b in bases]
        phones: list[tuple[VPhone, Load]] = []
        for k in range(phones_n):
            vp = await loads[k % len(loads)].enroll(f"scale{k}@bench.example")
            phones.append((vp, loads[(k + 1) % len(loads)]))  # the login flow uses the next server
        stop = time.monotonic() + duration
        done = 0
        failed = 0
        lat: list[float] = []
        errors: dict[str, int] = {}

        async def worker(w: int) -> None:
            nonlocal done, failed
            k = w
            while time.monotonic() < stop:
                vp, load = phones[k % len(phones)]
                k += concurrency
                oc = await load.cycle(vp)
                if oc.errors:
                    failed += 1
                    for e in oc.errors:
                        errors[e] = errors.get(e, 0) + 1
                else:
                    done += 1
                    lat.append(oc.times["cycle"])

        t0 = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.monotonic() - t0
    return {"cycles_per_s": done / wall, "completed": done, "failed": failed, "errors": errors,
            "cycle_ms": summarise(lat)}


async def run_one(n: int, cluster: bool, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    children: list[Child] = []
    rc: RedisCluster | None = None
    try:
        if cluster:
            rc = RedisCluster(tmp / f"cluster-{n}").start()
            redis_port, cluster_url = 0, rc.url
        else:
            redis_child, redis_port = start_redis(tmp, None)
            children.append(redis_child)
            cluster_url = None
        ports = [free_port() for _ in range(n)]
        public = f"http://{HOST}:{ports[0]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHAUTH_")}
        for i, port in enumerate(ports):
            cfg = config_for(tmp, i, port, redis_port, cluster_url, public)
            argv = [sys.executable, "-m", "pushauth", "-c", str(cfg), "serve"]
            children.append(bench_child(f"server{i}", argv, tmp / f"server{i}-{n}-{cluster}.log", cpu=None,
                                        env=env))
        for i, port in enumerate(ports):
            wait_http(f"http://{HOST}:{port}/healthz", children[-n + i])
        bases = [f"http://{HOST}:{p}" for p in ports]
        result = await drive(bases, args.phones, args.concurrency, args.duration)
        result.update(servers=n, store="cluster" if cluster else "redis")
        return result
    finally:
        for child in reversed(children):
            child.stop()
        if rc is not None:
            rc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="1,3", help="server process counts to measure (default 1,3)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--phones", type=int, default=300)
    ap.add_argument("--no-cluster", action="store_true", help="single Redis only")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmpdir:
        tmp = Path(tmpdir)
        for cluster in ((False,) if args.no_cluster else (False, True)):
            for n in (int(x) for x in args.servers.split(",")):
                r = asyncio.run(run_one(n, cluster, args, tmp))
                results.append(r)
                c = r["cycle_ms"]
                print(f"{r['store']:<8} servers={n}: {r['cycles_per_s']:7.1f} cycles/s  "
                      f"cycle p50 {c['p50']:.1f} / p99 {c['p99']:.1f} / p99.9 {c['p99.9']:.1f} ms  "
                      f"failed {r['failed']} {r['errors'] or ''}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if all(r["failed"] == 0 for r in results) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

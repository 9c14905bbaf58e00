#!/usr/bin/env python3
"""Offline-code (TOTP) verification benchmark (issue 20). Not a test: `.venv/bin/python bench/codes.py -h`.

One `pushauth serve` on CPU 0 (keys in a throw-away folder: signing keys and the key-encryption key);
redis-server and this load generator on CPU 1. Before the run, --users authenticator-app methods are stored
active through the codes service itself (sealed under the same KEK the server opens them with), so the
run measures verification, not enrollment.

    throughput  closed loop at --concurrency for --duration s: POST /v1/codes/verify with a valid code
                (each user's next unused time step, now or the next: at most two per user, so users are taken
                round-robin); every answer must be {"valid": true} with an assertion

Figures: verifications/s, and the server's CPU per verification (from /proc/<pid>/stat), to compare with
a push sign-in cycle's (bench/cycle.py).
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
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.cycle import (
    API_KEY,
    HOST,
    bench_child,
    config_head,
    free_port,
    now,
    proc_cpu_s,
    start_redis,
    wait_http,
)
from pushauth.codes import totp
from pushauth.codes.seal import KekStore
from pushauth.config import load_settings
from pushauth.crypto.keys import KeyStore
from pushauth.runtime import open_runtime

REPO = Path(__file__).resolve().parent.parent
SERVER_CPU, OTHERS_CPU = 0, 1


def write_config(path: Path, port: int, redis_port: int, keys: Path) -> None:
    head = config_head(port, redis_port, "Codes").replace("[keys]\nephemeral = true\n",
                                                         f'[keys]\nephemeral = false\npath = "{keys}"\n')
    path.write_text(head + """\
[codes]
attempts = 100
[logging]
level = "warning"
format = "json"
""")


class User:
    def __init__(self, name: str, seed: totp.Seed) -> None:
        self.name, self.seed, self.last = name, seed, -1

    def next_code(self, at: int) -> str | None:
        """A code of the next time step this user has not used, from now on (the previous step's code would
        fall out of the window if a step boundary passed on its way to the server); None when spent."""
        step = max(self.last + 1, totp.step_of(at))
        if step > totp.step_of(at) + 1:
            return None
        self.last = step
        return totp.hotp(self.seed.raw(), step)


async def seed_users(config: Path, n: int) -> list[User]:
    """Methods stored active through the service (`Codes._store`: the bench's only use of a private
    method, to skip n enrollments and activations that are not what is measured)."""
    settings = load_settings(config)
    users = []
    async with open_runtime(settings) as runtime:
        codes = runtime.services.codes
        for i in range(n):
            name = f"otp{i}@bench.example"
            uid = await runtime.services.devices.uid_for(name, create=True)
            assert uid is not None
            seed = totp.Seed.new("SHA1")
            await codes._store(uid, f"t{uid}{'a' * 16}", seed, totp.Params(),
                               kind="app", by="bench", name="bench", expires_at=0, status="active")
            users.append(User(name, seed))
    return users


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    os.sched_setaffinity(0, {OTHERS_CPU})
    keys = tmp / "keys"
    KeyStore(keys).generate()
    KekStore(keys).generate()
    redis_child, redis_port = start_redis(tmp, OTHERS_CPU)
    port = free_port()
    config = tmp / "config.toml"
    write_config(config, port, redis_port, keys)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PUSHAUTH_")}, "PYTHONPATH": str(REPO)}
    serve = bench_child("serve", [sys.executable, "-m", "pushauth", "-c", str(config), "serve"],
                        tmp / "serve.log", cpu=SERVER_CPU, env=env)
    base = f"http://{HOST}:{port}"
    try:
        wait_http(base + "/healthz", serve)
        users = deque(await seed_users(config, args.users))
        print(f"{len(users)} users with an active authenticator app", flush=True)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers) as http:
            stop_at = now() + args.duration
            done, failed = 0, 0

            async def worker() -> None:
                nonlocal done, failed
                while now() < stop_at and users:
                    user = users.popleft()
                    code = user.next_code(int(time.time()))
                    if code is None:
                        continue  # spent for this window
                    users.append(user)
                    async with http.post(base + "/v1/codes/verify",
                                         json={"user": user.name, "code": code}) as resp:
                        body = await resp.json()
                    if resp.status == 200 and body.get("valid") and body.get("assertion"):
                        done += 1
                    else:
                        failed += 1
                        if failed <= 5:
                            print(f"  failed: {resp.status} {body}", file=sys.stderr)

            cpu0, t0 = proc_cpu_s(serve.pid), now()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            wall, cpu = now() - t0, proc_cpu_s(serve.pid) - cpu0
        result = {"verifications": done, "failed": failed, "per_s": done / wall,
                  "server_cpu_ms": cpu / max(done, 1) * 1000, "core_busy": cpu / wall,
                  "users_left": len(users)}
        print(f"{result['per_s']:.0f} code verifications/s, server {result['server_cpu_ms']:.3f} ms CPU each "
              f"(its core {result['core_busy']:.0%} busy), {failed} failed", flush=True)
        if not users:
            print("  (every user's codes were spent before the end: raise --users)", file=sys.stderr)
        return result
    finally:
        for child in (serve, redis_child):
            with contextlib.suppress(Exception):
                child.stop()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=12000, help="users seeded (each gives at most 2 codes)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pushauth-bench-codes-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

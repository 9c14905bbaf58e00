#!/usr/bin/env python3
"""OpenID Provider benchmark (issue 18). Not a test: `.venv/bin/python bench/oidc.py --help`.

One `pushauth serve` on CPU 0 with `[oidc] enabled` (a confidential client, `first_factor =
"passwordless"`: the provider's own cost, no directory); redis-server and this load generator on CPU 1.
Phones are real enrolled devices (pushauth/phone.py). Closed loop at --concurrency for --duration s each:

    oidc   browser  GET  /oidc/authorize?...          the sign-in page (a sign-in record in Redis)
           browser  POST /oidc/signin                 user name -> the prompt -> 303
           browser  GET  /oidc/wait?signin=           the number page
           browser  GET  /oidc/wait?...&poll=1        (held until the phone answers) -> 303 with the code
           phone    GET  /v1/device/challenges        what the push wakes the app to do
           phone    POST .../response                 approve with the number
           RP       POST /oidc/token                  client_secret_basic -> ID token + access token
    rest   bench/cycle.py's cycle: create, the waiting GET, the phone's fetch and answer

Figures: sign-ins/s and the server's CPU per sign-in (/proc/<pid>/stat) for both, back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import html
import json
import os
import re
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp

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
    wait_http,
)
from pushauth.crypto.secrets import sha256_hex

REPO = Path(__file__).resolve().parent.parent
SERVER_CPU, OTHERS_CPU = 0, 1
CLIENT_SECRET = "bench-oidc-client-secret-0123456789"  # noqa: S105 (a benchmark's own)
REDIRECT = "http://127.0.0.1:9/callback"


def write_config(path: Path, port: int, redis_port: int) -> None:
    path.write_text(config_head(port, redis_port, "Benchmark portal") + f"""\
[oidc]
enabled = true
[[oidc.clients]]
client_id = "portal"
name = "Benchmark portal"
application = "{APP_ID}"
secret_sha256 = ["{sha256_hex(CLIENT_SECRET)}"]
redirect_uris = ["{REDIRECT}"]
first_factor = "passwordless"
[logging]
level = "warning"
format = "json"
""")


async def oidc_signin(base: str, vp: VPhone, http: aiohttp.ClientSession) -> None:
    """One browser-less sign-in through the provider (raises on anything unexpected)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        query = urlencode({"client_id": "portal", "redirect_uri": REDIRECT, "response_type": "code",
                           "scope": "openid", "state": "s", "nonce": "n"})
        async with browser.get(f"{base}/oidc/authorize?{query}") as resp:
            page = await resp.text()
        signin = re.search(r'name="signin" value="([^"]+)"', page)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        if signin is None or csrf is None:
            raise RuntimeError(f"authorize: {resp.status}")
        form = {"signin": html.unescape(signin.group(1)), "csrf": html.unescape(csrf.group(1)),
                "user": vp.user}
        async with browser.post(f"{base}/oidc/signin", data=form, allow_redirects=False) as resp:
            location = resp.headers.get("Location", "")
        async with browser.get(base + location) as resp:
            page = await resp.text()
        number = re.search(r"<strong>(\d+)</strong>", page)
        refresh = re.search(r'url=([^"]+)"', page)
        if number is None or refresh is None:
            raise RuntimeError("no number page")

        async def poll() -> str:
            async with browser.get(base + html.unescape(refresh.group(1)), allow_redirects=False) as r:
                return r.headers.get("Location", "")

        waiting = asyncio.create_task(poll())
        pending = await vp.phone.pending()
        newest = max(pending, key=lambda ch: ch.iat)
        if await vp.phone.approve(newest, number=number.group(1)) != "approved":
            raise RuntimeError("not approved")
        callback = await waiting
    code = parse_qs(urlsplit(callback).query).get("code")
    if not code:
        raise RuntimeError(f"no code: {callback}")
    basic = base64.b64encode(f"portal:{CLIENT_SECRET}".encode()).decode()
    async with http.post(f"{base}/oidc/token", headers={"Authorization": f"Basic {basic}"},
                         data={"grant_type": "authorization_code", "code": code[0],
                               "redirect_uri": REDIRECT}) as resp:
        body = await resp.json()
        if resp.status != 200 or "id_token" not in body:
            raise RuntimeError(f"token: {resp.status} {body}")


async def closed_loop(one: Callable[[VPhone], Awaitable[Any]], phones: list[VPhone], duration_s: float,
                      server_pid: int) -> dict[str, Any]:
    stop = now() + duration_s
    done = failed = 0

    async def worker(vp: VPhone) -> None:
        nonlocal done, failed
        while now() < stop:
            try:
                await one(vp)
                done += 1
            except (RuntimeError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                failed += 1
                print(f"  failed: {exc}", file=sys.stderr)

    cpu0, t0 = proc_cpu_s(server_pid), now()
    await asyncio.gather(*(worker(vp) for vp in phones))
    wall, cpu = now() - t0, proc_cpu_s(server_pid) - cpu0
    return {"signins": done, "failed": failed, "per_s": done / wall,
            "server_cpu_ms": cpu / max(done, 1) * 1000, "server_core_busy": cpu / wall}


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    os.sched_setaffinity(0, {OTHERS_CPU})
    redis_child, redis_port = start_redis(tmp, OTHERS_CPU)
    port = free_port()
    config = tmp / "config.toml"
    write_config(config, port, redis_port)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    serve = bench_child("serve", [sys.executable, "-m", "pushauth", "-c", str(config), "serve"],
                        tmp / "serve.log", cpu=SERVER_CPU, env=env)
    base = f"http://{HOST}:{port}"
    results: dict[str, Any] = {}
    try:
        wait_http(base + "/healthz", serve)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            load = Load(http, base)
            phones = [await load.enroll(f"portal{i}@bench.example") for i in range(args.concurrency)]
            await asyncio.gather(*(oidc_signin(base, vp, http) for vp in phones[:4]))  # warm-up
            for mode in args.modes:
                for run_no in range(args.runs):
                    if mode == "oidc":
                        r = await closed_loop(lambda vp: oidc_signin(base, vp, http), phones, args.duration,
                                              serve.pid)
                    else:
                        r = await closed_loop(load.cycle, phones, args.duration, serve.pid)
                    results.setdefault(mode, []).append(r)
                    busy = f"{r['server_core_busy']:.0%}"
                    print(f"{mode:4} run {run_no + 1}: {r['per_s']:.0f} sign-ins/s, server "
                          f"{r['server_cpu_ms']:.2f} ms CPU per sign-in (its core {busy} busy), "
                          f"{r['failed']} failed", flush=True)
    finally:
        for child in (serve, redis_child):
            with contextlib.suppress(Exception):
                child.stop()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=32, help="sign-ins in flight (= phones)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    ap.add_argument("--runs", type=int, default=2, help="runs per mode, alternating")
    ap.add_argument("--modes", nargs="+", choices=("oidc", "rest"), default=["oidc", "rest"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pushauth-bench-oidc-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

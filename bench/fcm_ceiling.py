#!/usr/bin/env python3
"""The ceiling of each way to send FCM HTTP v1 on one core, with nothing else running (issues 3 and 16).

Not a test. `.venv/bin/python bench/fcm_ceiling.py` (root: the push sandbox needs a mount namespace and
port 443). The fake FCM of testkit/fakes runs in this process on CPU 1; a child process on CPU 0, in the
sandbox (its /etc/hosts sends fcm.googleapis.com to the fake; the test CA is its trust store), does
nothing but send messages like pushauth's (a 163-character token, the contract's data, Android priority
high and a ttl), at a fixed number of sends in flight. It reports sends/s and the child's CPU per send.

Modes (`--mode`):
    provider pushauth's FcmProvider.send, as the push worker calls it (aiohttp, HTTP/1.1 keep-alive pool)
    h2       the same request over HTTP/2 with httpx (h2 underneath), no SDK: what an HTTP/2 provider costs
    single   firebase-admin's send_each_async, one message per call (FcmProvider before issue 16)
    batch    send_each_async with 500 messages per call, the SDK's largest batch (FCM HTTP v1 has no batch
             endpoint: each message is still one HTTP/2 request)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from testkit.fakes.fcm import FakeFCM
from testkit.fakes.sandbox import PrivateHosts, TestCA, available

REPO = Path(__file__).resolve().parent.parent

FAKE_CPU, CLIENT_CPU = 1, 0

# (messages per call, call(first message's index) -> failures, close())
Sender = tuple[int, "Callable[[int], Awaitable[int]]", "Callable[[], Awaitable[None]]"]


async def _nothing() -> None:
    return None


def _token() -> str:
    return f"{secrets.token_urlsafe(16)[:22]}:APA91b{secrets.token_urlsafe(101)[:134]}"


def _data(i: int) -> dict[str, str]:
    return {"type": "challenge", "challenge_id": f"c{i:042d}", "server": "https://pushauth.example.org"}


async def _sdk_sender(service_account: str, mode: str) -> Sender:
    """firebase-admin's send_each_async, one message per call (`single`, as FcmProvider sent before issue 16)
    or 500 (`batch`, the SDK's largest). Returns (messages per call, call(start) -> failures)."""
    import datetime as dt
    import warnings

    import firebase_admin
    from firebase_admin import credentials, messaging

    warnings.filterwarnings("ignore", message=r"Message\.token is deprecated", category=DeprecationWarning)
    credential = credentials.Certificate(service_account)
    app = firebase_admin.initialize_app(credential, {"projectId": credential.project_id, "httpTimeout": 10},
                                        name="ceiling")

    def message(i: int) -> messaging.Message:
        android = messaging.AndroidConfig(priority="high", ttl=dt.timedelta(seconds=59))
        return messaging.Message(token=_token(), data=_data(i), android=android)

    per_call = 1 if mode == "single" else 500

    async def call(start: int) -> int:
        batch = await messaging.send_each_async([message(start + j) for j in range(per_call)],
                                                dry_run=False, app=app)
        return int(batch.failure_count)

    return per_call, call, _nothing


async def _provider_sender(service_account: str, in_flight: int) -> Sender:
    """pushauth's FcmProvider.send, as the worker calls it: aiohttp, HTTP/1.1 keep-alive pool."""
    from pushauth.config import FcmSettings
    from pushauth.push.base import OutcomeKind, PushMessage
    from pushauth.push.fcm import FcmProvider

    provider = FcmProvider.from_settings(FcmSettings(enabled=True, service_account_file=service_account,
                                                     concurrency=in_flight))

    async def call(start: int) -> int:
        message = PushMessage(f"c{start:042d}", "https://pushauth.example.org", int(time.time()) + 60)
        outcome = await provider.send(_token(), message)
        return int(outcome.kind is not OutcomeKind.SENT)

    return 1, call, provider.aclose


async def _h2_sender(service_account: str, in_flight: int) -> Sender:
    """The same HTTP v1 request over HTTP/2 with httpx (h2 underneath; what the SDK uses), without the SDK:
    what an HTTP/2 FcmProvider would cost per push."""
    import httpx
    from firebase_admin import credentials

    credential = credentials.Certificate(service_account)
    access = credential.get_access_token().access_token
    url = f"https://fcm.googleapis.com/v1/projects/{credential.project_id}/messages:send"
    client = httpx.AsyncClient(http2=True, limits=httpx.Limits(max_connections=in_flight), timeout=10)
    headers = {"Authorization": f"Bearer {access}", "Content-Type": "application/json; charset=UTF-8"}

    async def call(start: int) -> int:
        body = {"message": {"token": _token(), "data": _data(start),
                            "android": {"priority": "high", "ttl": "59s"}}}
        response = await client.post(url, json=body, headers=headers)
        return int(response.status_code != 200)

    return 1, call, client.aclose


async def client(service_account: str, total: int, in_flight: int, mode: str) -> dict[str, float]:
    """The child: send `total` messages and measure. Runs inside the sandbox."""
    os.sched_setaffinity(0, {CLIENT_CPU})
    if mode == "provider":
        per_call, call, close = await _provider_sender(service_account, in_flight)
    elif mode == "h2":
        per_call, call, close = await _h2_sender(service_account, in_flight)
    else:
        per_call, call, close = await _sdk_sender(service_account, mode)
    # warm-up: the OAuth2 token, the connections
    await asyncio.gather(*(call(-1 - i) for i in range(min(in_flight, 50))))
    gate = asyncio.Semaphore(max(1, in_flight // per_call))
    failures = 0

    async def one(start: int) -> None:
        nonlocal failures
        async with gate:
            failures += await call(start)

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(0, total, per_call)))
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    await close()
    return {"sends": total, "failures": failures, "seconds": wall, "sends_per_s": total / wall,
            "cpu_us_per_send": cpu / total * 1e6, "core_busy": cpu / wall}


async def run(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {FAKE_CPU})
    with tempfile.TemporaryDirectory(prefix="pushauth-fcm-ceiling-") as tmp:
        folder = Path(tmp)
        ca = TestCA.create(folder)
        hosts = PrivateHosts.create(folder, ca)
        async with FakeFCM(ca, host=hosts.fcm_addr, keep_requests=False) as fake:
            account = fake.write_service_account(folder / "service-account.json")
            for mode in args.mode:
                for _ in range(args.runs):
                    argv = [sys.executable, __file__, "--child", str(account), "--sends", str(args.sends),
                            "--in-flight", str(args.in_flight), "--mode", mode]
                    env = {**hosts.env(), "PYTHONPATH": str(REPO)}
                    proc = await asyncio.create_subprocess_exec(*hosts.command(argv), env=env,
                                                                stdout=subprocess.PIPE)
                    out, _ = await proc.communicate()
                    if proc.returncode != 0:
                        raise SystemExit(f"client failed ({proc.returncode})")
                    r = json.loads(out.decode().strip().splitlines()[-1])
                    print(f"{mode:6} in flight {args.in_flight}: {r['sends_per_s']:7.0f} sends/s, "
                          f"{r['cpu_us_per_send']:6.0f} us CPU/send (=> {1e6 / r['cpu_us_per_send']:.0f}/s "
                          f"per fully busy core), client core {r['core_busy']:.0%}, "
                          f"{r['failures']} failed", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sends", type=int, default=6000)
    ap.add_argument("--in-flight", type=int, default=200, help="sends in flight (push.fcm.concurrency)")
    ap.add_argument("--mode", nargs="+", choices=("provider", "h2", "single", "batch"),
                    default=["provider", "h2", "single", "batch"])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--child", metavar="SERVICE_ACCOUNT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(client(args.child, args.sends, args.in_flight, args.mode[0]))))
        return
    if (why := available()) is not None:
        raise SystemExit(f"cannot run: {why}")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

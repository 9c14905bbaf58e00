#!/usr/bin/env python3
"""The ceiling of firebase-admin's async send path on one core, with no pushauth code at all (issue 3).

Not a test. `.venv/bin/python bench/fcm_ceiling.py` (root: the push sandbox needs a mount namespace and
port 443). The fake FCM of testkit/fakes runs in this process on CPU 1; a child process on CPU 0, in the
sandbox (its /etc/hosts sends fcm.googleapis.com to the fake; the test CA is its trust store), does
nothing but call `messaging.send_each_async` the way FcmProvider does: the same app options, messages
like pushauth's (a 163-character token, the contract's data, Android priority high and a ttl), at a
fixed number of sends in flight. It reports sends/s and the child's CPU per send.

Modes (`--mode`):
    single   one message per send_each_async call, as FcmProvider sends (each push is its own call so
             that its outcome maps to its own device and stream entry)
    batch    500 messages per call, the SDK's largest batch: the best the SDK's async API can do, since
             FCM HTTP v1 has no batch endpoint (each message is still one HTTP/2 request)

If the child's CPU per send here is close to the push worker's per FCM push (bench/push.py), the worker's
FCM figure is the SDK's, not pushauth's.
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
from pathlib import Path

from testkit.fakes.fcm import FakeFCM
from testkit.fakes.sandbox import PrivateHosts, TestCA, available

REPO = Path(__file__).resolve().parent.parent

FAKE_CPU, CLIENT_CPU = 1, 0


async def client(service_account: str, total: int, in_flight: int, mode: str) -> dict[str, float]:
    """The child: send `total` messages and measure. Runs inside the sandbox."""
    import datetime as dt
    import warnings

    import firebase_admin
    from firebase_admin import credentials, messaging

    warnings.filterwarnings("ignore", message=r"Message\.token is deprecated", category=DeprecationWarning)

    os.sched_setaffinity(0, {CLIENT_CPU})
    credential = credentials.Certificate(service_account)
    app = firebase_admin.initialize_app(credential, {"projectId": credential.project_id, "httpTimeout": 10},
                                        name="ceiling")

    def message(i: int) -> messaging.Message:
        token = f"{secrets.token_urlsafe(16)[:22]}:APA91b{secrets.token_urlsafe(101)[:134]}"
        data = {"type": "challenge", "challenge_id": f"c{i:042d}", "server": "https://pushauth.example.org"}
        android = messaging.AndroidConfig(priority="high", ttl=dt.timedelta(seconds=59))
        return messaging.Message(token=token, data=data, android=android)

    per_call = 1 if mode == "single" else 500
    # warm-up: the OAuth2 token, the HTTP/2 connection
    await messaging.send_each_async([message(0)], dry_run=False, app=app)
    gate = asyncio.Semaphore(max(1, in_flight // per_call))
    failures = 0

    async def call(start: int) -> None:
        nonlocal failures
        async with gate:
            batch = await messaging.send_each_async([message(start + j) for j in range(per_call)],
                                                    dry_run=False, app=app)
            failures += batch.failure_count

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await asyncio.gather(*(call(i) for i in range(0, total, per_call)))
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
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
    ap.add_argument("--mode", nargs="+", choices=("single", "batch"), default=["single", "batch"])
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

"""What refusing duplicate JSON keys (pushauth/strictjson.py, issue 14 item 6) costs per sign-in cycle.

    .venv/bin/python bench/duplicate_keys.py [--number N]

A micro-benchmark (timeit, best of 7), not a test. The texts are what a cycle of bench/cycle.py makes the
server read: the login flow's `POST /v1/challenges` body, and for each of the phone's two signed requests
(fetch, answer) the JWS header and payload, plus the answer's body; taken from tests/vectors (the
`approve` device request) and shaped like bench/cycle.py's. For the JWS parts the check is all that is
added (they were decoded untyped already); a body is now also decoded untyped once, before its typed
decode. The last row is a body whose values hold ':' (an IPv6 login address), which takes the slow path.
"""

from __future__ import annotations

import argparse
import functools
import json
import timeit
from collections.abc import Callable
from pathlib import Path

import msgspec

from pushauth import strictjson
from pushauth.crypto import jws
from pushauth.web.schemas import CreateChallenge, DeviceAnswer

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors"


def best(call: Callable[[], object], number: int) -> float:
    """Seconds per call, best of 7 runs of `number` calls."""
    return min(timeit.repeat(call, number=number, repeat=7)) / number


def check_alone(text: bytes, number: int) -> float:
    """A JWS part: decoded untyped before this change too; only the check is new."""
    value = msgspec.json.decode(text)
    return best(functools.partial(strictjson.unique_keys, text, value), number)


def body_added(text: bytes, type_: type, number: int) -> float:
    """A body: the untyped decode and the check come before the typed decode there was before."""
    typed = functools.partial(msgspec.json.decode, text, type=type_)

    def both() -> None:
        strictjson.decode(text)
        typed()

    return best(both, number) - best(typed, number)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=100_000, help="calls per timing run")
    number = parser.parse_args().number

    approve = next(v for v in json.loads((VECTORS / "device_requests.json").read_text())["vectors"]
                   if v["name"] == "approve")
    header, payload = (jws.b64url_decode(part) for part in approve["jws"].split(".")[:2])
    answer = approve["request"]["body"].encode()
    create = b'{"user":"u00042@bench.example"}'
    create_ipv6 = msgspec.json.encode({"user": "alice@nhs.net", "context": {
        "ip": "2001:db8::7", "user_agent": "Mozilla/5.0 (Windows NT 10.0) Firefox/133.0",
        "location": "Leeds, GB"}})

    rows = [  # (what, added seconds per call, calls per cycle)
        (f"JWS header ({len(header)} B): the check", check_alone(header, number), 2),
        (f"JWS payload ({len(payload)} B): the check", check_alone(payload, number), 2),
        (f"create body ({len(create)} B): untyped decode + check",
         body_added(create, CreateChallenge, number), 1),
        (f"answer body ({len(answer)} B): untyped decode + check",
         body_added(answer, DeviceAnswer, number), 1),
        (f"create body, IPv6 context ({len(create_ipv6)} B): the slow path",
         body_added(create_ipv6, CreateChallenge, number), 0),
    ]
    for what, seconds, _ in rows:
        print(f"{what:<60} {seconds * 1e6:7.3f} us")
    per_cycle = sum(seconds * n for _, seconds, n in rows)
    total = "added per sign-in cycle (6 checks, 2 untyped decodes)"
    print(f"{total:<60} {per_cycle * 1e6:7.3f} us = {per_cycle / 1.97e-3:.2%} of the 1.97 ms of server CPU "
          "per cycle (README, Performance)")


if __name__ == "__main__":
    main()

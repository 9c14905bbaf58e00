"""Can this deployment serve sign-ins? What the servers' /readyz, `pushauth check` and `pushauth serve`'s
start-up line all ask, in one place (pushauth/web/ops.py only turns the answer into HTTP).

Ready means Redis answers and the signing keys are loaded; `warnings` lists what the settings turn on that
cannot work (offline codes without a key-encryption key), which does not change the status. The answer also
says which worker kinds have a fresh heartbeat (pushauth/store/heartbeats.py); missing workers make it
"degraded", not "not ready": sign-ins still work (phones poll; alerts wait in their stream), and taking every
server out of the balancer because an alert worker died would turn a delay into an outage.
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from pushauth import metrics
from pushauth.codes.seal import KekStore
from pushauth.config import Settings
from pushauth.store import KeySpace, heartbeats
from pushauth.store.connection import STORE_DOWN_ERRORS

_DOWN: tuple[type[BaseException], ...] = (TimeoutError, *STORE_DOWN_ERRORS)

# What a deployment lacks while no worker of a kind runs (sign-ins work regardless).
_WITHOUT = {
    "push": "no push reaches a phone (phones find prompts only by polling)",
    "alerts": "no alert reaches the security team's sinks",
    "expiry": "prompts that expire unanswered are counted only at the user's next sign-in",
    "radius": "VPNs, gateways and SSH servers get no answer to their RADIUS requests",
}


def expected_workers(settings: Settings) -> list[str]:
    """The worker kinds this deployment needs running as separate processes."""
    if settings.embedded:
        return []  # the server runs them itself
    kinds = ["expiry"]
    if settings.push.enabled:
        kinds.append("push")
    if settings.alerts.sinks:
        kinds.append("alerts")
    if settings.radius.clients:
        kinds.append("radius")  # `pushauth radius` (python -m workers.radius)
    return kinds


def worker_command(kind: str, config: Path | None) -> str:
    """The command that starts a worker of `kind` on the settings a server was started with."""
    return f"python -m workers.{kind}" + (f" -c {shlex.quote(str(config))}" if config else "")


async def missing_workers(redis: aioredis.Redis, settings: Settings) -> list[str]:
    """The worker kinds this deployment needs that have no fresh heartbeat."""
    alive = await heartbeats.live_workers(redis, KeySpace(settings.store.prefix))
    return [kind for kind in expected_workers(settings) if not alive.get(kind)]


def missing_workers_hint(missing: list[str], config: Path | None) -> dict[str, Any]:
    """Fields of the log line that says which workers are missing, what that costs, how to start each."""
    return {"missing": missing, "start": [worker_command(kind, config) for kind in missing],
            "meanwhile": "; ".join(_WITHOUT[kind] for kind in missing)}


async def readiness(redis: aioredis.Redis, settings: Settings,
                    keys_loaded: bool) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): 200 when Redis answers and the keys are loaded, else 503. The body's "status" is
    "ready", "degraded" (ready, but a needed worker kind has no fresh heartbeat) or "not ready"."""
    checks: dict[str, Any] = {"keys": "ok" if keys_loaded else "not loaded"}
    try:
        await asyncio.wait_for(redis.ping(), timeout=settings.store.socket_timeout_s)
        checks["redis"] = "ok"
    except _DOWN as exc:
        checks["redis"] = f"unreachable ({type(exc).__name__})"
        metrics.REDIS_ERRORS.labels("readyz").inc()
    workers: dict[str, Any] = {}
    if checks["redis"] == "ok":
        try:
            alive = await heartbeats.live_workers(redis, KeySpace(settings.store.prefix))
            workers = {kind: alive.get(kind, []) for kind in expected_workers(settings)}
        except STORE_DOWN_ERRORS:
            checks["redis"] = "unreachable"
    ready = checks["redis"] == "ok" and checks["keys"] == "ok"
    missing = sorted(kind for kind, names in workers.items() if not names)
    status = "ready" if ready and not missing else "degraded" if ready else "not ready"
    body = {"status": status, "checks": checks, "workers": workers}
    if missing:
        body["missing_workers"] = missing
    if warnings := config_warnings(settings):
        body["warnings"] = warnings
    return (200 if ready else 503), body


def config_warnings(settings: Settings) -> list[str]:
    """What works for push sign-ins but not for everything the settings turn on. Only warnings: a missing
    key-encryption key stops offline codes, never a push sign-in, so it must not take a server out of the
    balancer."""
    out = []
    kek = KekStore(Path(settings.keys.path))
    if settings.codes.enabled and not settings.keys.ephemeral and not kek.exists():
        out.append(f"offline codes are on ([codes] enabled) but there is no key-encryption key ({kek.path}): "
                   "no code method can be enrolled or used, and phones register without offline codes. Run "
                   "`pushauth keys generate-kek`.")
    return out

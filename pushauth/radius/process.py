"""`pushauth radius`: the RADIUS front as a process of its own, run like the workers
(pushauth/runtime/worker.py: signals, drain, heartbeat, --metrics-port, --check), on the same Redis and
services as `pushauth serve`.

    pushauth radius -c config.toml [--name N] [--metrics-port P] [--drain-s S] [--check]
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from pushauth.config import Settings
from pushauth.runtime import Runtime
from pushauth.runtime.jobs import Job
from pushauth.runtime.worker import Worker


def _refuses(settings: Settings) -> str | None:
    problems = settings.radius.problems({a.id for a in settings.applications})
    return "; ".join(problems) or None


@contextlib.asynccontextmanager
async def radius_job(runtime: Runtime, name: str) -> AsyncIterator[Job]:
    """Answer RADIUS Access-Requests on the runtime's services, with the listener that wakes sign-ins
    waiting for a phone. Here, not a `Runtime` method like the workers' jobs: the runtime sits below the
    fronts and imports none of them (ARCHITECTURE.md), so the front builds itself from it, as the app
    factory does."""
    # Late: the CLI imports this module for its --help on every command; pyrad loads only where RADIUS runs.
    from pushauth.radius.front import radius_server

    async with runtime.listening(), radius_server(runtime) as server:
        radius = runtime.settings.radius
        yield Job({"radius": server.run}, who={"name": name},
                  facts={"listen": radius.listen, "port": radius.port,
                         "clients": sorted(c.name for c in radius.clients)})


RADIUS = Worker(
    kind="radius", description="pushauth RADIUS front: push approval for VPNs, gateways and SSH (PAM)",
    event="radius", job=radius_job, refuses=_refuses, prog="pushauth radius",
    needs_redis="pushauth radius needs store.redis_url: phones answer through `pushauth serve`, and the two "
                "meet in Redis (the embedded store lives inside one process)",
)

"""`pushauth radius`: the RADIUS front as a process of its own, run like the workers
(pushauth/runtime/worker.py: signals, drain, heartbeat, --metrics-port, --check), on the same Redis and
services as `pushauth serve`.

    pushauth radius -c config.toml [--name N] [--metrics-port P] [--drain-s S] [--check]
"""

from __future__ import annotations

from pushauth.config import Settings
from pushauth.runtime import Runtime
from pushauth.runtime.worker import Worker


def _refuses(settings: Settings) -> str | None:
    problems = settings.radius.problems({a.id for a in settings.applications})
    return "; ".join(problems) or None


RADIUS = Worker(
    kind="radius", description="pushauth RADIUS front: push approval for VPNs, gateways and SSH (PAM)",
    event="radius", job=Runtime.radius_job, refuses=_refuses, prog="pushauth radius",
    needs_redis="pushauth radius needs store.redis_url: phones answer through `pushauth serve`, and the two "
                "meet in Redis (the embedded store lives inside one process)",
)

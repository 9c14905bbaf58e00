"""The push worker: `python -m workers.push [-c config.toml] [--name N] [--metrics-port P] [--check]`.

Consumes the push stream and delivers each prompt to its phone through FCM or APNs
(`Runtime.push_job`: pushauth/push/dispatch.py on pushauth/store/streams.py). Run as many as the load needs,
on any hosts: they share the stream through a consumer group and reclaim a crashed worker's entries.
Needs a push provider. Signals, drain, heartbeat and --check: pushauth/runtime/worker.py.
"""

from __future__ import annotations

import sys

from pushauth.config import Settings
from pushauth.runtime import Runtime
from pushauth.runtime.worker import Worker


def _needs_a_provider(settings: Settings) -> str | None:
    if settings.push.enabled:
        return None
    return "no push provider is enabled ([push.fcm] or [push.apns] enabled = true)"


WORKER = Worker(
    kind="push", description="pushauth push worker", event="push_worker", job=Runtime.push_job,
    refuses=_needs_a_provider,
    # No idle-connection PING before commands: the worker sends a few pipelines per batch of pushes, and a
    # connection Redis closed (a restart) is replaced when the pool hands it out (see open_redis).
    redis_health_check_interval_s=0,
    # The ~65k objects the provider SDKs bring live as long as the process: out of the collector's reach,
    # a full collection no longer stops every push for ~60 ms.
    freeze_gc=True,
)
main = WORKER.main

if __name__ == "__main__":
    sys.exit(main())

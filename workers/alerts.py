"""The alert delivery worker: `python -m workers.alerts [-c config.toml] [--name N] [--check] ...`.

Consumes the alert stream and delivers every alert to every configured sink ([[alerts.sinks]]), at least
once, retrying on the hours-long schedule in `alerts.retry_schedule_s`; also sweeps the per-user outboxes
for alerts a crashed server wrote but did not announce (`Runtime.alert_job`: pushauth/alerts/delivery.py).
Run one or more, anywhere: they share the stream through a consumer group and take over a crashed
worker's entries. Needs an enabled sink. Signals, drain, heartbeat and --check: pushauth/runtime/worker.py.
"""

from __future__ import annotations

import sys

from pushauth.config import Settings
from pushauth.runtime import Runtime
from pushauth.runtime.worker import Worker


def _needs_a_sink(settings: Settings) -> str | None:
    if any(sink.enabled for sink in settings.alerts.sinks):
        return None
    return "no alert sink is configured ([[alerts.sinks]])"


WORKER = Worker(kind="alerts", description="pushauth alert delivery worker", event="alert_worker",
                job=Runtime.alert_job, refuses=_needs_a_sink)
main = WORKER.main

if __name__ == "__main__":
    sys.exit(main())

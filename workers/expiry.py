"""The expiry worker: `python -m workers.expiry [-c config.toml] [--name N] [--metrics-port P] [--check]`.

Settles prompts soon after they expire unanswered (`Runtime.expiry_job`: pushauth/challenges/expiry.py), so
`ignored_prompts` alerts and the lockout count do not wait for the user's next sign-in. Several may run;
each prompt is claimed once. Signals, drain, heartbeat and --check: pushauth/runtime/worker.py.
"""

from __future__ import annotations

import sys

from pushauth.runtime import Runtime
from pushauth.runtime.worker import Worker

WORKER = Worker(kind="expiry", description="pushauth expiry worker", event="expiry_worker",
                job=Runtime.expiry_job)
main = WORKER.main

if __name__ == "__main__":
    sys.exit(main())

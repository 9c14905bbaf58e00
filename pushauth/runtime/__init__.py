"""One runtime for the server and the workers: the composition root (`Runtime`, built from `Settings`), the
jobs the workers run and their bounded drain, and the worker runner (`Worker`, one per `workers/<kind>.py`).

Nothing here imports `pushauth.web`, `pushauth.cli` or `workers`; they import this.
"""

from pushauth.runtime.jobs import Job, run_until_stopped, stop_task
from pushauth.runtime.root import Runtime, Services, open_runtime

__all__ = ["Job", "Runtime", "Services", "open_runtime", "run_until_stopped", "stop_task"]

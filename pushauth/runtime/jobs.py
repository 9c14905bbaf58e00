"""What a worker does, and how it stops: a `Job` is a few named loops that run until a stop event is set and
then finish what they hold; `run_until_stopped` gives them a bounded time to do so (the drain).

A loop here is a stream consumer's `run` (pushauth/store/streams.py), the expiry sweeper's or the outbox
sweep's. Stopping one that is still draining at the deadline is safe: a stream entry is acked only after
its work is stored, so what was in flight stays pending and another worker (or this one, restarted)
reclaims it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("workers")

Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]

# How long a worker process finishes its in-flight work after SIGTERM before leaving it for reclaim
# (`--drain-s`): under the 30 s that Kubernetes and most service managers wait before a SIGKILL.
DRAIN_S = 25.0
# The same for the workers an embedded-store server runs itself, within `pushauth serve`'s shutdown.
EMBEDDED_DRAIN_S = 10.0


@dataclass(frozen=True)
class Job:
    """`loops`: task name -> loop. `who` names the worker in its log lines; `facts` are added to the line
    saying it started (its providers, its sinks)."""

    loops: Mapping[str, Loop]
    who: Mapping[str, Any] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait for it, cancelling again every half second: a cancellation a library turns
    into something else (redis-py's pub/sub read, as its timeout fires) must not hold a shutdown forever."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


async def run_until_stopped(loops: Mapping[str, Loop], stop: asyncio.Event, *, drain_s: float) -> bool:
    """Run every loop until `stop` is set, then wait up to `drain_s` for them to finish what is in flight;
    loops still running then are cancelled (their unacked entries stay pending, for reclaim). A loop that
    fails sets `stop` (the others drain) and its exception is raised once all are done. Returns whether
    everything finished within the drain."""
    tasks = [asyncio.create_task(loop(stop), name=name) for name, loop in loops.items()]
    stopped = asyncio.create_task(stop.wait())
    running = set(tasks)
    try:
        while running and not stop.is_set():
            done, _ = await asyncio.wait(running | {stopped}, return_when=asyncio.FIRST_COMPLETED)
            running -= done
            if any(not t.cancelled() and t.exception() is not None for t in done if t is not stopped):
                stop.set()
    finally:
        stopped.cancel()
    late: set[asyncio.Task[None]] = set()
    if running:
        _, late = await asyncio.wait(running, timeout=drain_s)
    if late:
        log.warning("worker_drain_timeout", drain_s=drain_s, unfinished=sorted(t.get_name() for t in late),
                    meanwhile="what they held stays pending and is reclaimed")
        for task in late:
            await stop_task(task)
    for task in tasks:
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure
    return not late

"""The one worker runner, arq-style. A worker kind is a `Worker` declaration (workers/push.py,
workers/alerts.py, workers/expiry.py); this module gives each the same process:

    python -m workers.<kind> [-c config.toml] [--name NAME] [--metrics-port PORT] [--metrics-addr ADDR]
                             [--drain-s SECONDS]
    python -m workers.<kind> [-c config.toml] --check    exit 0 when a worker of this kind is alive, else 1

    start      settings, logging, the declaration's precondition, then the Runtime (pushauth/runtime/root.py)
               and the job it builds; "<event>_started"
    heartbeat  every HEARTBEAT_EVERY_S into the kind's hash (pushauth/store/heartbeats.py, which expires),
               read by the servers' /readyz, `pushauth check` and --check
    SIGTERM    (or SIGINT) stop taking work; finish what is in flight for at most --drain-s, then leave the
               rest pending for reclaim (pushauth/runtime/jobs.py); close what the job opened;
               "<event>_stopped"; exit 0
    errors     a bad config or a missing precondition: the reason on stderr, exit 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import structlog
from prometheus_client import start_http_server

from pushauth.config import Settings, load_settings
from pushauth.errors import PushAuthError
from pushauth.logs import configure
from pushauth.runtime.jobs import DRAIN_S, Job, run_until_stopped
from pushauth.runtime.root import Runtime, open_runtime
from pushauth.store import KeySpace, heartbeats
from pushauth.store.connection import STORE_DOWN_ERRORS

log = structlog.get_logger("workers")

_DOWN: tuple[type[BaseException], ...] = (TimeoutError, *STORE_DOWN_ERRORS)

HEARTBEAT_EVERY_S = 10.0


def _always(settings: Settings) -> str | None:
    return None


@dataclass(frozen=True)
class Worker:
    """A worker kind, declared.

    kind         its name: `python -m workers.<kind>`, its heartbeat, what /readyz expects
    description  its --help line
    event        its log events: "<event>_started", "<event>_stopped"
    job          builds what it does from the runtime and its name (a `Runtime.*_job`)
    refuses      why these settings give it nothing to do (a message), or None
    redis_health_check_interval_s  see `open_redis`
    freeze_gc    once started, move everything alive out of the collector's reach (a worker whose libraries
                 leave many long-lived objects: full collections then walk only what the work creates)
    """

    kind: str
    description: str
    event: str
    job: Callable[[Runtime, str], AbstractAsyncContextManager[Job]]
    refuses: Callable[[Settings], str | None] = _always
    redis_health_check_interval_s: int = 30
    freeze_gc: bool = False
    # The command line that runs it, when not `python -m workers.<kind>` (`pushauth radius`).
    prog: str = ""
    # Why it cannot run on the embedded store, when not "the server runs it itself".
    needs_redis: str = ""

    def main(self, argv: list[str] | None = None) -> int:
        return self.run_parsed(self._parser().parse_args(argv))

    def run_parsed(self, args: argparse.Namespace) -> int:
        """Run with options parsed by `add_arguments` (here, or as a subcommand of `pushauth`)."""
        try:
            if args.check:
                return asyncio.run(self.check(args.config))
            if args.metrics_port:
                start_http_server(args.metrics_port, addr=args.metrics_addr)
            asyncio.run(self.run(args.config, args.name or f"{socket.gethostname()}-{os.getpid()}",
                                 drain_s=args.drain_s))
        except PushAuthError as exc:
            print(f"{self.kind} worker: {exc}", file=sys.stderr)
            return 2
        return 0

    def _parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=self.prog or f"python -m workers.{self.kind}",
                                         description=self.description)
        self.add_arguments(parser)
        return parser

    def add_arguments(self, parser: argparse.ArgumentParser, *, config: bool = True) -> None:
        """The worker's options (`config=False`: a parent parser already takes -c/--config)."""
        if config:
            parser.add_argument("-c", "--config", type=Path, default=None)
        parser.add_argument("--name", default=None, help="worker name (default: host-pid)")
        parser.add_argument("--metrics-port", type=int, default=0,
                            help="serve Prometheus metrics on this port (default: off)")
        parser.add_argument("--metrics-addr", default="127.0.0.1", help="address for --metrics-port")
        parser.add_argument("--drain-s", type=float, default=DRAIN_S,
                            help="on SIGTERM, finish the work in flight for at most this long; what is left "
                                 f"stays pending for another worker (default: {DRAIN_S:g})")
        parser.add_argument("--check", action="store_true",
                            help=f"exit 0 when a {self.kind} worker has a fresh heartbeat, else 1")

    def _settings(self, config: Path | None) -> Settings:
        settings = load_settings(config)
        if settings.embedded:
            noun = self.event.replace("_", " ")  # "push worker"
            raise PushAuthError(self.needs_redis or f"the {noun} needs store.redis_url: with the embedded "
                                                    f"store the server runs the {noun} itself")
        return settings

    async def run(self, config: Path | None, name: str, *, drain_s: float = DRAIN_S) -> None:
        """Work until SIGTERM or SIGINT, then drain for at most `drain_s`."""
        settings = self._settings(config)
        configure(settings.logging.level, settings.logging.format)
        if (why := self.refuses(settings)) is not None:
            raise PushAuthError(why)
        stop = stop_on_signals()
        who: dict[str, Any] = {}
        try:
            async with (open_runtime(settings, health_check_interval_s=self.redis_health_check_interval_s)
                        as runtime, self.job(runtime, name) as job):
                if self.freeze_gc:
                    gc.collect()
                    gc.freeze()
                who = dict(job.who)
                log.info(f"{self.event}_started", **who, **job.facts)
                beating = partial(heartbeat, runtime.redis, runtime.keyspace, self.kind, name)
                await run_until_stopped({**job.loops, "heartbeat": beating}, stop, drain_s=drain_s)
        finally:
            if who:
                log.info(f"{self.event}_stopped", **who)

    async def check(self, config: Path | None) -> int:
        """Like arq's --check: 0 when a worker of this kind has a fresh heartbeat, 1 otherwise (or when the
        store cannot be asked); one line on stdout says which."""
        settings = self._settings(config)
        async with open_runtime(settings) as runtime:
            try:
                alive = await asyncio.wait_for(heartbeats.live_workers(runtime.redis, runtime.keyspace),
                                               settings.store.socket_timeout_s)
            except _DOWN as exc:
                print(f"{self.kind} workers: unknown, the store is unreachable ({type(exc).__name__})")
                return 1
        names = alive.get(self.kind, [])
        if names:
            print(f"{self.kind} workers alive: {', '.join(names)}")
            return 0
        print(f"no {self.kind} worker alive (none beat in the last {heartbeats.HEARTBEAT_TTL_S} s)")
        return 1


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: the worker stops taking work, finishes what is in flight."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def heartbeat(redis: aioredis.Redis, keyspace: KeySpace, kind: str, name: str,
                    stop: asyncio.Event) -> None:
    """Beat until stopped (the entry then ages out: a stopped worker is not alive)."""
    while not stop.is_set():
        try:
            await heartbeats.beat(redis, keyspace, kind, name)
        except STORE_DOWN_ERRORS as exc:
            log.warning("heartbeat_store_unavailable", kind=kind, error=type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HEARTBEAT_EVERY_S)

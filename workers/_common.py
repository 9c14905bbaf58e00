"""What every worker process shares: its command line, stopping on SIGTERM/SIGINT, a heartbeat the API
servers' /readyz and `pushauth check` read, and an optional Prometheus endpoint.

    python -m workers.<kind> [-c config.toml] [--name NAME] [--metrics-port PORT] [--metrics-addr ADDR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import structlog
from prometheus_client import start_http_server

from pushauth.errors import PushAuthError
from pushauth.store import KeySpace, heartbeats
from pushauth.store.connection import STORE_DOWN_ERRORS

log = structlog.get_logger("workers")

HEARTBEAT_EVERY_S = 10.0


@dataclass(frozen=True)
class WorkerArgs:
    config: Path | None
    name: str


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


def main_for(kind: str, description: str, run: Callable[[WorkerArgs], Coroutine[Any, Any, None]],
             argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m workers.{kind}", description=description)
    parser.add_argument("-c", "--config", type=Path, default=None)
    parser.add_argument("--name", default=None, help="worker name (default: host-pid)")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="serve Prometheus metrics on this port (default: off)")
    parser.add_argument("--metrics-addr", default="127.0.0.1", help="address for --metrics-port")
    args = parser.parse_args(argv)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_addr)
    try:
        asyncio.run(run(WorkerArgs(args.config, args.name or f"{socket.gethostname()}-{os.getpid()}")))
    except PushAuthError as exc:
        print(f"{kind} worker: {exc}", file=sys.stderr)
        return 2
    return 0

"""What one Redis command costs the calling process, client side, by pool (issue 22).

    .venv/bin/python bench/redis_path.py [--commands 20000] [--concurrency 32] [--rounds 3]

Starts its own redis-server (on CPU 1) and runs, pinned to CPU 0, the same small script call (the rate
limit's EVALSHA) through two clients, alternating rounds: `blocking`, the pool the server used before issue
22 (redis-py's BlockingConnectionPool with socket_timeout and a 30 s health-check interval), and `lean`,
`pushauth.store.open_redis` (LeanPool: no per-command asyncio.timeout, wait_for or PING check). Reported:
this process's CPU per command (time.process_time, so another process on the machine barely moves it) and
commands/s. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis
from redis.maint_notifications import MaintNotificationsConfig

from pushauth.config import StoreSettings
from pushauth.ratelimit import scripts as rate
from pushauth.store import open_redis
from testkit.redis_server import RedisServer


def blocking_client(url: str) -> aioredis.Redis:
    """The pool of pushauth/store/connection.py before issue 22."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=128, timeout=2.0, socket_timeout=2.0, socket_connect_timeout=1.0,
        health_check_interval=30, decode_responses=True, retry=None,
        maint_notifications_config=MaintNotificationsConfig(enabled=False))
    return aioredis.Redis.from_pool(pool)


async def run(client: aioredis.Redis, commands: int, concurrency: int) -> tuple[float, float]:
    """(CPU us per command, commands/s) for `commands` rate-limit checks, `concurrency` at a time."""
    per_worker = commands // concurrency

    async def worker(i: int) -> None:
        for _ in range(per_worker):
            await rate.rate_limit(client, f"bench:{i}", now=int(time.time()), quota=10_000_000, window_s=60,
                                  auth_failures=0)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))  # warm: connections, script cache
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = per_worker * concurrency
    return cpu / n * 1e6, n / wall


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        if server.pid is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(server.pid, {1})
            os.sched_setaffinity(0, {0})
        clients = {"blocking": blocking_client(server.url),
                   "lean": open_redis(StoreSettings(redis_url=server.url))}
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name, client in clients.items():
                results[name].append(await run(client, args.commands, args.concurrency))
        for client in clients.values():
            await client.aclose()
    for name, rows in results.items():
        best = min(rows)
        print(f"{name:9} CPU per command: best {best[0]:6.1f} us (all: "
              f"{', '.join(f'{cpu:.1f}' for cpu, _ in rows)}); {max(r[1] for r in rows):,.0f} commands/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))

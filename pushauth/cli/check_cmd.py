"""`pushauth check`: is this deployment able to serve sign-ins? Exit 0 when ready, 1 when anything is down
(Redis, the signing keys, or a worker kind with no fresh heartbeat), 2 for a bad config. For cron, a
monitoring agent or a container health check.

    pushauth -c config.toml check                  # checks Redis, keys and workers itself
    pushauth check --url https://pushauth.example  # asks a running server's /readyz
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import aiohttp

from pushauth.config import load_settings
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.errors import PushAuthError
from pushauth.readiness import readiness
from pushauth.runtime import open_runtime


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("check", help="exit non-zero when Redis, the keys or a worker is down")
    parser.add_argument("--url", default=None, help="ask this running server's /readyz instead")
    parser.set_defaults(func=run)


async def _local(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    settings = load_settings(args.config)
    try:
        KeyRingHolder.from_settings(settings.keys)
        keys_loaded = True
    except PushAuthError:
        keys_loaded = False
    async with open_runtime(settings) as runtime:
        return await readiness(runtime.redis, settings, keys_loaded)


async def _remote(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        try:
            async with http.get(url.rstrip("/") + "/readyz") as resp:
                return resp.status, dict(await resp.json())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return 503, {"status": "unreachable", "error": f"{type(exc).__name__}: {exc}"}


def run(args: argparse.Namespace) -> int:
    _, body = asyncio.run(_remote(args.url) if args.url else _local(args))
    print(json.dumps(body, indent=2))
    return 0 if body.get("status") == "ready" else 1

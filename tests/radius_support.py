"""What the RADIUS tests share: a pushauth server (for the phone) and the RADIUS front (pushauth/radius/) in
the test's process on one real Redis, the front on a loopback port; radclient through testkit's driver."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from support import AdminClient, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Challenge, Phone
from pushauth.radius.process import radius_job
from pushauth.runtime.root import open_runtime
from testkit.radius_clients import MESSAGE_AUTHENTICATOR, RadiusReply, radclient

SECRET = "vpn-shared-secret-for-tests-0123"
USER = "erin@nhs.net"
VPN_ADDRESS = "203.0.113.9"


async def ask(port: int, attributes: dict[str, str], *, secret: str = SECRET, retries: int = 1,
              timeout_s: float = 30, message_authenticator: bool = True) -> RadiusReply:
    """One Access-Request through radclient (`retries`: sends in all, the same packet each time)."""
    attrs: dict[str, str | bytes] = dict(attributes)
    if message_authenticator:
        attrs["Message-Authenticator"] = MESSAGE_AUTHENTICATOR  # radclient fills it in
    return await radclient(port, secret, attrs, retries=retries, timeout_s=timeout_s)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Front:
    port: int
    login: LoginFlow
    admin: AdminClient
    http: aiohttp.ClientSession
    redis: aioredis.Redis
    server: RunningServer

    async def phone(self, user: str = USER) -> Phone:
        return await Phone.enroll(await self.login.enroll_uri(user), session=self.http)

    async def prompts(self) -> int:
        """Sign-in prompts ever created (every challenge hash in Redis)."""
        return len([k async for k in self.redis.scan_iter(match="*:ch:*")])


ClientCfg = dict[str, Any]


@contextlib.asynccontextmanager
async def running_front(redis_url: str, keyring: KeyRingHolder, tmp_path: Path, clients: list[ClientCfg],
                        **sections: Any) -> AsyncIterator[Front]:
    secret_file = tmp_path / "vpn.secret"
    secret_file.write_text(SECRET + "\n")
    port = free_port()
    radius = {"listen": ["127.0.0.1"], "port": port,
              "clients": [{"secret_file": str(secret_file), "application": "webmail", **c} for c in clients],
              **sections.pop("radius", {})}
    settings = make_settings(redis_url, free_port(), radius=radius, **sections)
    server = await start_server(settings, keyring)
    stop = asyncio.Event()
    try:
        async with (aiohttp.ClientSession() as http, aioredis.Redis.from_url(redis_url) as redis,
                    open_runtime(settings, keyring=keyring) as runtime, radius_job(runtime, "test") as job):
            task = asyncio.create_task(job.loops["radius"](stop))
            await _listening(port)
            try:
                yield Front(port, LoginFlow(http, server.url), AdminClient(http, server.url), http, redis,
                            server)
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
    finally:
        await server.close()


async def _listening(port: int) -> None:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return  # taken: the front has it
        await asyncio.sleep(0.02)
    raise AssertionError("the RADIUS front never listened")


AUTO: ClientCfg = {"name": "vpn", "address": "127.0.0.1/32", "mode": "auto", "primary": "none",
                   "deadline_s": 12}
CHALLENGE: ClientCfg = {**AUTO, "name": "gateway", "mode": "challenge"}


@pytest.fixture
async def front(redis_url: str, keyring: KeyRingHolder, tmp_path: Path) -> AsyncIterator[Front]:
    async with running_front(redis_url, keyring, tmp_path, [AUTO]) as running:
        yield running


async def answer_when_prompted(phone: Phone, act: Callable[[Challenge], Awaitable[str]],
                               within_s: float = 10) -> Challenge:
    """Wait for the prompt on the phone, then `act` on it (approve, deny)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        pending = await phone.pending()
        if pending:
            await act(pending[0])
            return pending[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no prompt reached the phone")


def request(user: str = USER, password: str = "irrelevant", **extra: str) -> dict[str, str]:  # noqa: S107
    return {"User-Name": user, "User-Password": password, "Calling-Station-Id": VPN_ADDRESS, **extra}

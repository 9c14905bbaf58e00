"""What the RADIUS tests share: a pushauth server (for the phone) and the RADIUS front (pushauth/radius/) in
the test's process on one real Redis, the front on a loopback port (or several fronts, each on its own
port, as instances behind a load balancer); radclient through testkit's driver, and `RawClient`, pyrad's
packets on one fixed source port, for the very same bytes sent to one instance and then another."""

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
import msgspec
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from pyrad import packet as rp
from support import AdminClient, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Challenge, Phone
from pushauth.radius.packets import load_dictionary
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
    port: int  # the first instance's (ports[0])
    login: LoginFlow
    admin: AdminClient
    http: aiohttp.ClientSession
    redis: aioredis.Redis
    server: RunningServer
    ports: list[int]

    async def phone(self, user: str = USER) -> Phone:
        return await Phone.enroll(await self.login.enroll_uri(user), session=self.http)

    async def prompts(self) -> int:
        """Sign-in prompts ever created (every challenge hash in Redis)."""
        return len([k async for k in self.redis.scan_iter(match="*:ch:*")])


ClientCfg = dict[str, Any]


@contextlib.asynccontextmanager
async def running_front(redis_url: str, keyring: KeyRingHolder, tmp_path: Path, clients: list[ClientCfg],
                        *, instances: int = 1, **sections: Any) -> AsyncIterator[Front]:
    """The server and `instances` RADIUS fronts (one runtime, one Redis client each, as processes would
    have), alike but for their ports."""
    secret_file = tmp_path / "vpn.secret"
    secret_file.write_text(SECRET + "\n")
    ports = [free_port() for _ in range(instances)]
    radius = {"listen": ["127.0.0.1"], "port": ports[0],
              "clients": [{"secret_file": str(secret_file), "application": "webmail", **c} for c in clients],
              **sections.pop("radius", {})}
    settings = make_settings(redis_url, free_port(), radius=radius, **sections)
    server = await start_server(settings, keyring)
    stop = asyncio.Event()
    try:
        async with (aiohttp.ClientSession() as http, aioredis.Redis.from_url(redis_url) as redis,
                    contextlib.AsyncExitStack() as stack):
            tasks = []
            for port in ports:
                own = msgspec.structs.replace(settings, radius=msgspec.structs.replace(settings.radius,
                                                                                      port=port))
                runtime = await stack.enter_async_context(open_runtime(own, keyring=keyring))
                job = await stack.enter_async_context(radius_job(runtime, f"radius-{port}"))
                tasks.append(asyncio.create_task(job.loops["radius"](stop)))
            for port in ports:
                await _listening(port)
            try:
                yield Front(ports[0], LoginFlow(http, server.url), AdminClient(http, server.url), http, redis,
                            server, ports)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 30)
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


@dataclass(frozen=True)
class RawReply:
    raw: bytes
    code: int
    reply_message: str | None
    state: bytes | None


class RawClient:
    """A RADIUS client made of pyrad's packets and one UDP socket, so one fixed source port: a packet's
    bytes can be sent again, to any instance, as a client's retransmit through a load balancer reaches
    whichever instance the balancer picks."""

    def __init__(self, secret: str = SECRET) -> None:
        self._secret = secret.encode()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.setblocking(False)

    def close(self) -> None:
        self._sock.close()

    def request(self, attributes: dict[str, str], *, password: str | None = None,
                state: bytes | None = None) -> rp.AuthPacket:
        """An Access-Request with a Message-Authenticator (pyrad picks the Identifier and authenticator);
        `.RequestPacket()` gives the bytes to send, the same each time."""
        pkt = rp.AuthPacket(code=rp.AccessRequest, secret=self._secret, dict=load_dictionary())
        pkt.add_message_authenticator()
        for name, value in attributes.items():
            pkt[name] = value
        if password is not None:
            pkt["User-Password"] = pkt.PwCrypt(password)
        if state is not None:
            pkt["State"] = state
        return pkt

    def send(self, raw: bytes, port: int) -> None:
        self._sock.sendto(raw, ("127.0.0.1", port))

    async def receive(self, timeout_s: float) -> tuple[bytes, int] | None:
        """The next datagram and the port it came from, or None when nothing came within `timeout_s`."""
        loop = asyncio.get_running_loop()
        try:
            data, source = await asyncio.wait_for(loop.sock_recvfrom(self._sock, 4096), timeout_s)
        except TimeoutError:
            return None
        return data, int(source[1])

    async def answer(self, request: rp.AuthPacket, timeout_s: float) -> tuple[RawReply, int] | None:
        """The next datagram as a verified reply to `request` (same Identifier, a Response Authenticator
        and Message-Authenticator over its Request Authenticator, under the secret), and its source port;
        None when nothing came."""
        got = await self.receive(timeout_s)
        if got is None:
            return None
        raw, port = got
        reply = request.CreateReply(packet=raw)
        assert request.VerifyReply(reply, raw, enforce_ma=True), "not a reply to this request"
        messages = reply.get("Reply-Message") or []
        states = reply.get("State") or []
        return RawReply(raw, reply.code, messages[0] if messages else None,
                        bytes(states[0]) if states else None), port

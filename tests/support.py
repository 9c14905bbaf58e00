"""Running real pushauth servers in tests: settings, a server on a free port, login-flow calls, what a
relying party checks (assertions), metrics samples, waiting for something to become true."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from pushauth.config import Settings, from_mapping
from pushauth.crypto import jws
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.secrets import sha256_hex
from pushauth.phone import Phone, ServerRejected
from pushauth.web import create_app

T = TypeVar("T")
ASSERTION_TYP = "pushauth-assertion+jwt"

API_KEY = "test-api-key-for-the-webmail-application-0001"
OTHER_API_KEY = "test-api-key-for-another-application-000002"
ADMIN_TOKEN = "test-admin-token-for-the-security-team-0003"


def assert_error(status: int, body: Any, expected_status: int, code: str | None = None) -> None:
    """The contract's error shape: exactly `{"error": <code>, "message": <str>}`."""
    assert status == expected_status, body
    assert isinstance(body, dict), body
    assert set(body) == {"error", "message"}, body
    assert isinstance(body["error"], str), body
    assert body["error"], body
    assert isinstance(body["message"], str), body
    assert body["message"], body
    assert "Traceback" not in body["message"], body
    if code is not None:
        assert body["error"] == code, body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The lifecycle tests create many prompts for one user and deny with "not_me" freely; with the
# production defaults the detection rules would (rightly) rate-limit, suspend and lock that user. Those
# tests run with containment out of the way; tests/test_detection.py runs the defaults.
QUIET_DETECTION: dict[str, dict[str, Any]] = {
    "detection": {"push_bombing_max": 1000},
    "containment": {"suspend_on_not_me": False, "lockout_after_failures": 0},
}


def make_settings(redis_url: str, port: int, *, quiet_detection: bool = True,
                  **sections: Any) -> Settings:
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "base_url": f"http://127.0.0.1:{port}"},
        "store": {"redis_url": redis_url, "socket_timeout_s": 1.0, "connect_timeout_s": 0.5},
        "keys": {"ephemeral": True},
        "applications": [
            {"id": "webmail", "name": "NHSmail webmail", "api_key_sha256": [sha256_hex(API_KEY)]},
            {"id": "other", "name": "Other app", "api_key_sha256": [sha256_hex(OTHER_API_KEY)]},
        ],
        "admin": {"token_sha256": [sha256_hex(ADMIN_TOKEN)]},
        **(QUIET_DETECTION if quiet_detection else {}),
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_mapping(data)


@dataclass
class RunningServer:
    url: str
    settings: Settings
    app: web.Application
    runner: web.AppRunner

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_server(settings: Settings, keyring: KeyRingHolder) -> RunningServer:
    app = create_app(settings, keyring=keyring)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port)
    await site.start()
    return RunningServer(settings.server.base_url, settings, app, runner)


class LoginFlow:
    """What an identity provider does: create challenges, wait for them, cancel them, enroll users."""

    def __init__(self, http: aiohttp.ClientSession, url: str, api_key: str = API_KEY) -> None:
        self.http = http
        self.url = url
        self.headers = {"Authorization": f"Bearer {api_key}"}

    async def call(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, json=json, headers=self.headers) as resp:
            return resp.status, await resp.json()

    async def enroll_uri(self, user: str) -> str:
        status, body = await self.call("POST", "/v1/enrollments", {"user": user})
        assert status == 201, body
        return str(body["uri"])

    async def create(self, user: str, **extra: Any) -> dict[str, Any]:
        status, body = await self.call("POST", "/v1/challenges", {"user": user, **extra})
        assert status == 201, body
        return dict(body)

    async def status(self, cid: str, wait: int = 0) -> dict[str, Any]:
        status, body = await self.call("GET", f"/v1/challenges/{cid}?wait={wait}")
        assert status == 200, body
        return dict(body)


async def add_phone(rp: LoginFlow, first: Phone, user: str, http: aiohttp.ClientSession,
                    **enroll: Any) -> Phone:
    """A further phone for a user who has one, the way the product allows it from a login flow: the
    application enrolls it, and the user approves it on `first` with the number the new phone shows."""
    new = await Phone.enroll(await rp.enroll_uri(user), session=http, **enroll)
    assert (new.status, new.approval_number is not None) == ("pending_approval", True), new.status
    assert await first.approve_new_phone(new.approval_number or "") == "approved"
    return new


class Clock:
    """Moves pushauth's one clock (`pushauth.clock.now`, which the simulated phone signs with too)."""

    def __init__(self) -> None:
        self.offset = 0
        self.frozen_at: int | None = None

    def now(self) -> int:
        return (int(time.time()) if self.frozen_at is None else self.frozen_at) + self.offset

    def freeze(self) -> None:
        """From now on time moves only by `advance`: for exact windows and Retry-After values."""
        self.frozen_at = int(time.time())

    def advance(self, seconds: int) -> None:
        self.offset += seconds


class AdminClient:
    """The security team's API, as a test drives it."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def call(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, json=json, headers=self.headers) as resp:
            return resp.status, await resp.json()

    async def alerts(self, **query: str) -> list[dict[str, Any]]:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        status, body = await self.call("GET", "/v1/alerts" + (f"?{qs}" if qs else ""))
        assert status == 200, body
        return list(body["alerts"])

    async def user(self, user: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/v1/users/{user}")
        assert status == 200, body
        return dict(body)

    async def enroll_uri(self, user: str) -> str:
        """An enrollment the security team issues: the phone is active at once, even as a further one."""
        status, body = await self.call("POST", "/v1/enrollments", {"user": user})
        assert status == 201, body
        return str(body["uri"])

    async def audit(self, user: str) -> list[dict[str, Any]]:
        status, body = await self.call("GET", f"/v1/audit?user={user}")
        assert status == 200, body
        return list(body["entries"])


def verify_assertion(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """What a relying party does with an assertion: pick the key by `kid` from the server's JWKS and verify
    (raises jws.InvalidJWS). Returns the claims."""
    header = jws.read_header(token, typ=ASSERTION_TYP)
    [jwk] = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    return jws.verify(token, jws.import_public_jwk(jwk))


def phone_via(phone: Phone, url: str, session: aiohttp.ClientSession) -> Phone:
    """The same phone (same key, device id and pinned server) sending its requests to `url`: one instance
    behind the load balancer."""
    return Phone.from_dict({**phone.to_dict(), "server_override": url}, session=session)


async def eventually(probe: Callable[[], Awaitable[T | None]], within_s: float, what: str,
                     every_s: float = 0.05) -> T:
    """`probe()`'s first result that is not None, polled until `within_s` has passed (then fails naming
    `what`)."""
    deadline = time.monotonic() + within_s
    while (result := await probe()) is None:
        assert time.monotonic() < deadline, f"not within {within_s} s: {what}"
        await asyncio.sleep(every_s)
    return result


async def redis_snapshot(redis_url: str) -> dict[bytes, bytes | None]:
    """Every key in Redis and its value (DUMP), but the rate limits' buckets, which count every request:
    what a refused request must leave as it was."""
    async with aioredis.Redis.from_url(redis_url) as client:
        return {key: await client.dump(key) async for key in client.scan_iter() if b":rl:" not in key}


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name:
            got = ",".join(sorted(p for p in re.findall(r'\w+="[^"]*"', m.group(2) or "")))
            if got == want:
                return float(m.group(3))
    return 0.0


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


class ApprovalLoad:
    """Sign-ins approved one after another while a Redis primary fails over: what a failover test keeps
    running until `stop` is set. Only a 503 may be refused (`_transient` in tests/test_cluster.py says
    why), counted in `refused` (the time each attempt started). `acknowledged` holds (start time,
    challenge id) of every approval the phone was told about; `lost()` reads them back afterwards."""

    def __init__(self, rp: LoginFlow, phone: Phone, user: str, *, pause_s: float = 0.0) -> None:
        self.rp, self.phone, self.user, self.pause_s = rp, phone, user, pause_s
        self.refused: list[float] = []
        self.acknowledged: list[tuple[float, str]] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            t = time.monotonic()
            status, c = await self.rp.call("POST", "/v1/challenges", {"user": self.user})
            if status == 503:
                self.refused.append(t)
                await asyncio.sleep(0.05)
                continue
            assert status == 201, (status, c)
            try:
                assert await self.phone.approve(c["id"], number=c["number"]) == "approved"
            except ServerRejected as exc:
                if exc.status != 503:
                    raise
                self.refused.append(t)
                continue
            self.acknowledged.append((t, c["id"]))
            await asyncio.sleep(self.pause_s)

    async def lost(self) -> list[tuple[str, int, Any]]:
        """The acknowledged approvals that do not read back as approved with their assertion (an
        assertion without the approval is never acceptable)."""
        lost = []
        for _, cid in self.acknowledged:
            status, seen = await self.rp.call("GET", f"/v1/challenges/{cid}")
            approved = status == 200 and seen["status"] == "approved"
            if not approved:
                assert "assertion" not in seen  # never an assertion without the approval
            if not (approved and "assertion" in seen):
                lost.append((cid, status, seen))
        return lost

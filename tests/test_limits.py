"""Hostile clients at the HTTP layer: bodies over the limit, slow (slowloris) clients, malformed HTTP, bytes
that are not UTF-8, and a flood of 1,000 login flows long-polling at once.

Each test starts a real server on the shared real Redis. A refusal must be a 4xx in the contract's
`{"error", "message"}` shape, and the server must go on serving everyone else at normal speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
import structlog
from support import API_KEY, LoginFlow, RunningServer, assert_error, free_port, make_settings, start_server

from pushauth.crypto import device_auth, jws
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.logs import configure
from pushauth.phone import Phone, parse_enroll_uri
from pushauth.web.app import EVENTS

USER = "alice@nhs.net"
AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


async def _call(http: aiohttp.ClientSession, server: RunningServer, method: str, path: str, *,
                data: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with http.request(method, server.url + path, data=data, headers=headers) as resp:
        raw = await resp.read()
        is_json = raw and resp.content_type == "application/json"
        return resp.status, msgspec.json.decode(raw) if is_json else raw


async def _still_serving(http: aiohttp.ClientSession, server: RunningServer, login: LoginFlow,
                         phone: Phone) -> float:
    """A whole sign-in (create, fetch, approve, collect) works; returns how long it took."""
    start = time.perf_counter()
    created = await login.create(USER)
    ch = await phone.fetch(created["id"])
    assert await phone.approve(ch, created["number"]) == "approved"
    assert (await login.status(created["id"]))["status"] == "approved"
    status, _ = await _call(http, server, "GET", "/healthz")
    assert status == 200
    return time.perf_counter() - start


# -- bodies over server.max_body_bytes ----------------------------------------------------------------------


async def test_oversized_bodies_get_413_and_the_server_keeps_serving(
        server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow, phone: Phone) -> None:
    limit = server.settings.server.max_body_bytes

    def user_body(size: int) -> bytes:  # exactly `size` bytes of JSON
        return b'{"user":"' + b"a" * (size - 11) + b'"}'

    async def chunked(total: int) -> AsyncIterator[bytes]:  # no Content-Length: the limit applies as read
        sent = 0
        while sent < total:
            piece = b" " * min(4096, total - sent)
            sent += len(piece)
            yield piece

    # login flow API, with a valid API key so the handler reads the body
    for size in (limit + 1, 4 * limit, 1 << 20):
        status, body = await _call(http, server, "POST", "/v1/challenges", data=user_body(size), headers=AUTH)
        assert_error(status, body, 413, "payload_too_large")
    status, body = await _call(http, server, "POST", "/v1/challenges", data=chunked(limit + 4096),
                               headers=AUTH)
    assert_error(status, body, 413, "payload_too_large")
    # exactly at the limit is not "too large" (refused for what it says instead)
    assert len(user_body(limit)) == limit
    status, body = await _call(http, server, "POST", "/v1/challenges", data=user_body(limit), headers=AUTH)
    assert 400 <= status < 500
    assert status != 413
    # the phone API reads the body before the signature is checked (it is hashed into `bh`)
    path = f"/v1/device/challenges/{'x' * 20}/response"
    big = b'{"nonce":"' + b"n" * (2 * limit) + b'"}'
    token = device_auth.sign_request(phone._key, method="POST", path_qs=path, body=big, jti="j" * 22,
                                     iat=int(time.time()), kid=phone.device_id)
    for p, headers in ((path, {"Authorization": f"PushAuth {token}"}), ("/v1/devices", {})):
        status, body = await _call(http, server, "POST", p, data=big, headers=headers)
        assert_error(status, body, 413, "payload_too_large")
    # an admin route with a body
    status, body = await _call(http, server, "PUT", "/v1/users/bob/policy", data=b"{" + b" " * (limit + 10),
                               headers={"Authorization": "Bearer test-admin-token-for-the-security-team-0003",
                                        "Content-Type": "application/json"})
    assert_error(status, body, 413, "payload_too_large")

    await _still_serving(http, server, login, phone)


# -- slow clients -------------------------------------------------------------------------------------------


class SlowClient:
    """A raw TCP client that sends its request a few bytes at a time (or stops halfway)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, head: bytes) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(head)
        await self.writer.drain()

    async def trickle(self, data: bytes, every_s: float) -> None:
        assert self.writer is not None
        for i in range(len(data)):
            self.writer.write(data[i:i + 1])
            await self.writer.drain()
            await asyncio.sleep(every_s)

    def closed_by_server(self) -> bool:
        assert self.reader is not None
        return self.reader.at_eof()

    async def response(self) -> bytes:
        assert self.reader is not None
        return await asyncio.wait_for(self.reader.read(65536), 5)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def test_slow_clients_do_not_block_others(
        server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow, phone: Phone) -> None:
    """50 clients send their body one byte every 100 ms and 50 more trickle their headers and never finish
    them; meanwhile whole sign-ins keep completing as fast as without them.

    What this shows about timeouts (reported, not changed here): aiohttp has no timeout for reading a
    request's headers or body (only `keepalive_timeout`, between requests), so a client that stalls
    halfway holds its connection and its handler until it goes away; memory per connection stays
    bounded by `max_body_bytes` and the header limits. The test records that the stalled clients are
    still connected at its end. A reverse proxy's client_header_timeout/client_body_timeout, or a
    deadline around the body read, would cut them off."""
    port = server.settings.server.port
    baseline = min([await _still_serving(http, server, login, phone) for _ in range(3)])
    body = msgspec.json.encode({"user": "bob@nhs.net"})
    slow_body = [SlowClient(port) for _ in range(50)]
    slow_head = [SlowClient(port) for _ in range(50)]
    trickles: list[asyncio.Task[None]] = []
    try:
        for c in slow_body:
            await c.open(f"POST /v1/challenges HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode())
            trickles.append(asyncio.create_task(c.trickle(body[:-1], 0.1)))  # never the last byte
        for c in slow_head:
            await c.open(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            trickles.append(asyncio.create_task(c.trickle(b"X-Slow: " + b"z" * 40, 0.1)))  # never \r\n\r\n
        await asyncio.sleep(0.3)
        during = [await _still_serving(http, server, login, phone) for _ in range(10)]
        await asyncio.gather(*trickles)
        await asyncio.sleep(1.0)  # stalled now: nothing more will come
        stalled_open = sum(not c.closed_by_server() for c in slow_body + slow_head)
        after_stall = await _still_serving(http, server, login, phone)
    finally:
        for t in trickles:
            t.cancel()
        for c in slow_body + slow_head:
            c.close()
    print(f"\nslow clients: a sign-in took {baseline * 1000:.1f} ms alone, at most "
          f"{max(during) * 1000:.1f} ms (median {sorted(during)[5] * 1000:.1f} ms) with 100 slow clients, "
          f"{after_stall * 1000:.1f} ms with them stalled; {stalled_open} of 100 stalled clients still held "
          "their connection (aiohttp has no header/body read timeout)")
    # A sign-in is 4 requests; "quickly" is generous for a loaded 2-core CI machine.
    assert max(during) < 1.0
    assert after_stall < 1.0


async def test_a_stalled_body_then_closed_leaves_no_trace(
        server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow, phone: Phone) -> None:
    """A client that sends half of an approval and disconnects changes nothing: the challenge stays pending
    and the phone can still answer it."""
    created = await login.create(USER)
    ch = await phone.fetch(created["id"])
    path = f"/v1/device/challenges/{ch.id}/response"
    body = msgspec.json.encode({"nonce": ch.nonce, "decision": "deny", "reason": "not_me"})
    token = device_auth.sign_request(phone._key, method="POST", path_qs=path, body=body, jti="s" * 24,
                                     iat=int(time.time()), kid=phone.device_id)
    c = SlowClient(server.settings.server.port)
    await c.open(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: PushAuth {token}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                 + body[: len(body) // 2])
    await asyncio.sleep(0.2)
    c.close()
    await asyncio.sleep(0.2)
    assert (await login.status(ch.id))["status"] == "pending"
    assert await phone.approve(ch, created["number"]) == "approved"


# -- malformed HTTP and bytes that are not UTF-8 ------------------------------------------------------------


async def test_device_token_with_bytes_that_are_not_utf8_is_401(
        server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow, phone: Phone) -> None:
    """Regression (found by tests/test_jws_fuzz.py, fixed in pushauth/crypto/jws.py): a JWS header that is
    JSON except for a byte that is not UTF-8 inside a string made msgspec raise UnicodeDecodeError, which
    escaped `read_header` and became a 500."""
    created = await login.create(USER)
    header = b'{"alg":"ES256","typ":"pushauth-req+jwt\xff","kid":"' + phone.device_id.encode() + b'"}'
    token = f"{jws.b64url_encode(header)}.{jws.b64url_encode(b'{}')}.{jws.b64url_encode(bytes(64))}"
    for method, path in (("GET", "/v1/device/challenges"), ("GET", f"/v1/device/challenges/{created['id']}")):
        status, body = await _call(http, server, method, path, headers={"Authorization": f"PushAuth {token}"})
        assert_error(status, body, 401)
    # enrollment: the code must be real for the header to be read at all
    code = parse_enroll_uri(await login.enroll_uri("bob@nhs.net")).code
    register = msgspec.json.encode({"code": code, "name": "n", "platform": "other",
                                    "push": {"provider": "none"}})
    status, body = await _call(http, server, "POST", "/v1/devices", data=register,
                               headers={"Authorization": f"PushAuth {token}"})
    assert_error(status, body, 401)
    await _still_serving(http, server, login, phone)


@pytest.mark.parametrize(("path", "auth"), [("/v1/challenges", "app"), ("/v1/enrollments", "app"),
                                            ("/v1/devices", "none"), ("/v1/users/bob/unlock", "admin")])
async def test_json_body_with_bytes_that_are_not_utf8_is_400(
        server: RunningServer, http: aiohttp.ClientSession, path: str, auth: str) -> None:
    headers = {"Content-Type": "application/json"}
    if auth == "app":
        headers["Authorization"] = f"Bearer {API_KEY}"
    elif auth == "admin":
        headers["Authorization"] = "Bearer test-admin-token-for-the-security-team-0003"
    key = {"/v1/devices": b"code", "/v1/users/bob/unlock": b"what"}.get(path, b"user")
    status, body = await _call(http, server, "POST", path, data=b'{"' + key + b'":"a\xffb"}', headers=headers)
    if path == "/v1/devices":
        assert_error(status, body, 401)  # no device signature: refused before the body is looked at
    else:
        assert_error(status, body, 400, "bad_json")


MALFORMED_HTTP = {
    "header line over 8190 bytes": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000
                                   + b"\r\n\r\n",
    "more than 128 headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                             + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n",
    "negative Content-Length": b"POST /v1/challenges HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "request line garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS to a plain port
}


async def _raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize("what", list(MALFORMED_HTTP))
async def test_malformed_http_is_a_4xx_and_the_server_keeps_serving(
        server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow, phone: Phone,
        what: str) -> None:
    raw = await _raw_exchange(server.settings.server.port, MALFORMED_HTTP[what])
    status_line = raw.split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1].startswith(b"4"), raw[:200]
    await _still_serving(http, server, login, phone)


@pytest.mark.xfail(strict=True, reason="BUG: requests aiohttp's HTTP parser refuses (header line > 8190 "
                   "bytes, > 128 headers, bad Content-Length, not HTTP) are answered by aiohttp's own "
                   "RequestHandler.handle_error as text/plain, outside the middlewares: not the contract's "
                   "{error, message} JSON")
async def test_malformed_http_error_has_the_contract_shape(server: RunningServer) -> None:
    raw = await _raw_exchange(server.settings.server.port, MALFORMED_HTTP["header line over 8190 bytes"])
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), raw[:300]
    assert_error(int(head.split(b" ")[1]), msgspec.json.decode(body), 400)


async def test_malformed_http_is_one_warning_line_without_a_traceback(
        server: RunningServer, capfd: pytest.CaptureFixture[str]) -> None:
    configure("info", "json")  # as `pushauth serve` does at start
    structlog.configure(cache_logger_on_first_use=False)  # see test_alert_sinks: reset afterwards
    try:
        capfd.readouterr()
        for request in MALFORMED_HTTP.values():
            await _raw_exchange(server.settings.server.port, request)
        await asyncio.sleep(0.1)
    finally:
        structlog.reset_defaults()
    logs = capfd.readouterr().err
    lines = [msgspec.json.decode(line) for line in logs.splitlines() if '"bad_http_request"' in line]
    # TLS (or other non-HTTP bytes) as a connection's first request: aiohttp itself logs that at debug,
    # as internet noise, so it makes no line here.
    assert len(lines) == len(MALFORMED_HTTP) - 1, logs
    assert {line["level"] for line in lines} == {"warning"}
    assert all(str(line["status"]).startswith("4") for line in lines), lines
    assert "Traceback" not in logs, logs
    assert "Error handling request" not in logs, logs
    assert "aaaaaaaa" not in logs  # the client's bytes are not logged


# -- a flood of waiting login flows ------------------------------------------------------------------------

FLOOD = 1000


async def test_a_thousand_login_flows_waiting_at_once(redis_url: str, keyring: KeyRingHolder) -> None:
    """1,000 users, one pending challenge each, 1,000 `GET /v1/challenges/{id}?wait=10` parked at once on one
    server (one client session, connection limit off); then every phone approves. Every waiter must return
    `approved` with an assertion, none an error, none left `pending` by its deadline.

    One challenge per user, so push-bombing limits do not come into it (quiet detection besides)."""
    server = await start_server(make_settings(redis_url, free_port()), keyring)
    timings: dict[str, float] = {}
    try:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            login = LoginFlow(http, server.url)
            gate = asyncio.Semaphore(50)

            async def prepare(i: int) -> tuple[Phone, dict[str, Any], Any]:
                async with gate:
                    user = f"flood-{i:04d}@nhs.net"
                    phone = await Phone.enroll(await login.enroll_uri(user), session=http)
                    created = await login.create(user)
                    return phone, created, await phone.fetch(created["id"])

            start = time.perf_counter()
            prepared = await asyncio.gather(*(prepare(i) for i in range(FLOOD)))
            timings["enroll + create + fetch x1000"] = time.perf_counter() - start

            async def wait(cid: str) -> tuple[int, Any, float]:
                t0 = time.perf_counter()
                url = f"{server.url}/v1/challenges/{cid}?wait=10"
                async with http.get(url, headers=login.headers) as resp:
                    return resp.status, await resp.json(), time.perf_counter() - t0

            start = time.perf_counter()
            waiters = [asyncio.create_task(wait(created["id"])) for _, created, _ in prepared]
            events = server.app[EVENTS]
            while events.waiting < FLOOD:
                assert time.perf_counter() - start < 8, f"only {events.waiting} waiters parked"
                early = [w.result() for w in waiters if w.done()]
                assert not early, f"{len(early)} waiters returned before any answer: {early[:3]}"
                await asyncio.sleep(0.02)
            timings["1000 waiters parked"] = time.perf_counter() - start

            async def approve(phone: Phone, created: dict[str, Any], ch: Any) -> str:
                async with gate:
                    return await phone.approve(ch, created["number"])

            start = time.perf_counter()
            answers = await asyncio.gather(*(approve(*p) for p in prepared))
            timings["1000 approvals"] = time.perf_counter() - start
            results = await asyncio.gather(*waiters)
            timings["last waiter returned after the approvals began"] = time.perf_counter() - start
    finally:
        await server.close()

    assert answers == ["approved"] * FLOOD
    bad = [(status, body) for status, body, _ in results
           if status != 200 or body.get("status") != "approved" or "assertion" not in body]
    assert not bad, (len(bad), bad[:3])
    assert sorted(body["id"] for _, body, _ in results) == sorted(c["id"] for _, c, _ in prepared)
    longest = max(t for _, _, t in results)
    assert longest < 10, "a waiter ran into its wait=10 deadline"
    print("\n1000 waiting login flows: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
          + f"; longest wait {longest:.2f} s")

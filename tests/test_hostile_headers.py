"""Headers with bytes that are not UTF-8, or not the credential syntax, over a raw socket to a real server on
the real Redis (issue 14, item 4).

aiohttp hands a header's bytes over as text decoded with `surrogateescape`: `\\xff` becomes the lone
surrogate U+DCFF, which nothing downstream can encode again (a SHA-256 of it, Redis, JSON, a log line).
A credential that is malformed is a 401 in the contract's shape and a failed authentication, refused with
429 once its address is blocked; a header that is no credential is ignored or replaced. Never a 500, never
a traceback in the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest
from structlog.testing import capture_logs
from support import (
    ADMIN_TOKEN,
    API_KEY,
    LoginFlow,
    RunningServer,
    assert_error,
    free_port,
    make_settings,
    start_server,
)

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Phone

USER = "alice@nhs.net"
NOT_UTF8 = b"\xff\xfe\x80abcdef"
WRONG_KEY = b"a-well-formed-key-this-server-does-not-know-0000"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return msgspec.json.decode(self.raw)


async def send(url: str, method: str, path: str, headers: list[tuple[bytes, bytes]],
               body: bytes = b"", content_type: bytes | None = b"application/json") -> Answer:
    """One HTTP/1.1 request written byte for byte to the server's socket (no client library would send
    these headers), and its answer."""
    host, _, port = url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        lines = [f"{method} {path} HTTP/1.1".encode(), f"Host: {host}:{port}".encode(), b"Connection: close"]
        lines += [name + b": " + value for name, value in headers]
        if body:
            lines += [f"Content-Length: {len(body)}".encode()]
        if body and content_type is not None:
            lines += [b"Content-Type: " + content_type]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, raw = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in header_lines)
    return Answer(int(status_line.split()[1]), fields, raw)


@pytest.fixture
async def strict(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    """A server blocking an address after 5 failed authentications, with the demo page on and a metrics
    token (so that every header-reading path exists), trusting 127.0.0.0/8 as a proxy."""
    settings = make_settings(redis_url, free_port(), rate_limits={"auth_failures": 5},
                             demo={"enabled": True, "application": "webmail"},
                             server={"trusted_proxies": ["127.0.0.0/8"]})
    running = await start_server(settings, keyring)
    yield running
    await running.close()


@pytest.fixture
def quiet_log(caplog: pytest.LogCaptureFixture) -> Iterator[list[Any]]:
    """What pushauth logged (structlog) while the test ran; afterwards, asserts that neither it nor
    aiohttp (stdlib logging) logged an error or a traceback."""
    with capture_logs() as logs:
        yield logs
    errors = [e for e in logs if e.get("log_level") in ("error", "critical") or "exc_info" in e]
    assert not errors, errors
    records = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not records, [r.getMessage() for r in records]


# Each a credential header that is not the credential syntax: not UTF-8, UTF-8 but not ASCII, ASCII but not
# RFC 6750's b64token (a space, a quote, a comma), and a scheme word that is no scheme.
MALFORMED_BEARER = [b"Bearer " + NOT_UTF8, b"Bearer caf\xc3\xa9-key", b"Bearer two words",
                    b'Bearer "quoted"', b"Bearer a,b", b"\xff\xfe " + WRONG_KEY]


@pytest.mark.parametrize("value", MALFORMED_BEARER)
@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/challenges", b'{"user": "alice@nhs.net"}'),   # login flow
    ("GET", "/v1/alerts", b""),                                 # admin
])
async def test_a_malformed_bearer_credential_is_a_401_and_counts(
        strict: RunningServer, quiet_log: list[Any], value: bytes, method: str, path: str,
        body: bytes) -> None:
    for _ in range(5):
        answer = await send(strict.url, method, path, [(b"Authorization", value)], body)
        assert_error(answer.status, answer.json, 401, "unauthorized")
        assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="pushauth"')
    answer = await send(strict.url, method, path, [(b"Authorization", value)], body)
    assert_error(answer.status, answer.json, 429, "rate_limited")
    assert "failed authentications" in answer.json["message"]
    blocked = [e for e in quiet_log if e["event"] == "auth_failures_blocked"]
    assert [e["failures"] for e in blocked] == [5]


async def test_two_hundred_non_utf8_tokens_from_a_blocked_address_are_refused_quietly(
        strict: RunningServer, quiet_log: list[Any]) -> None:
    """The report in issue 14: 200 requests with a Bearer token that is not UTF-8 gave 200 500s and
    266 KB of tracebacks, from an address already blocked. Blocked first with well-formed wrong keys, the
    address gets 429 for all of them, before anything reads the token."""
    for _ in range(5):
        answer = await send(strict.url, "GET", "/v1/alerts", [(b"Authorization", b"Bearer " + WRONG_KEY)])
        assert_error(answer.status, answer.json, 401, "unauthorized")
    answers = await asyncio.gather(*(
        send(strict.url, "POST", "/v1/challenges", [(b"Authorization", b"Bearer " + NOT_UTF8)],
             b'{"user": "alice@nhs.net"}') for _ in range(200)))
    assert {a.status for a in answers} == {429}
    for answer in answers[:3]:
        assert_error(answer.status, answer.json, 429, "rate_limited")
    assert len(repr(quiet_log)) < 200 * 1024  # one short line per request, no traceback


@pytest.mark.parametrize("value", [b"PushAuth " + NOT_UTF8 + b".e30.e30", b"PushAuth caf\xc3\xa9.e30.e30",
                                   b"\xffPushAuth e30.e30.e30"])
@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/device/challenges", b""),
    ("POST", "/v1/devices", b'{"code": "no-such-code", "name": "x", "platform": "other",'
                            b' "push": {"provider": "none"}}'),
])
async def test_a_malformed_device_credential_is_a_401_and_counts(
        strict: RunningServer, quiet_log: list[Any], value: bytes, method: str, path: str,
        body: bytes) -> None:
    statuses = []
    for _ in range(6):
        answer = await send(strict.url, method, path, [(b"Authorization", value)], body)
        assert_error(answer.status, answer.json, answer.status)
        statuses.append(answer.status)
    # registration spends its code before the header is read: an unknown code is the first failure
    assert statuses == [401] * 5 + [429]


async def test_a_metrics_token_not_utf8_counts_too(redis_url: str, keyring: KeyRingHolder,
                                                    quiet_log: list[Any]) -> None:
    settings = make_settings(redis_url, free_port(), rate_limits={"auth_failures": 2},
                             metrics={"token_sha256": ["0" * 64]})
    running = await start_server(settings, keyring)
    try:
        for expected in (401, 401, 429):
            answer = await send(running.url, "GET", "/metrics", [(b"Authorization", b"Bearer " + NOT_UTF8)])
            assert_error(answer.status, answer.json, expected)
    finally:
        await running.close()


async def test_headers_that_are_no_credential_are_ignored_or_replaced(
        strict: RunningServer, http: aiohttp.ClientSession, quiet_log: list[Any]) -> None:
    await Phone.enroll(await LoginFlow(http, strict.url).enroll_uri(USER), session=http)
    # X-Forwarded-For from a trusted proxy: hops that are not addresses are not believed
    for forwarded in (NOT_UTF8, b"198.51.100.7\xff", b"\xd9\xa1.2.3.4, " + NOT_UTF8):
        answer = await send(strict.url, "GET", "/.well-known/jwks.json", [(b"X-Forwarded-For", forwarded)])
        assert answer.status == 200, answer
    # X-Request-Id: the caller's is echoed only when it is 1..64 ASCII letters, digits and -
    for request_id in (NOT_UTF8, b"caf\xc3\xa9", b"\xd9\xa1\xd9\xa2"):
        answer = await send(strict.url, "GET", "/healthz", [(b"X-Request-Id", request_id)])
        assert answer.status == 200
        assert len(answer.headers["X-Request-Id"]) == 16
        assert answer.headers["X-Request-Id"].isascii()
    answer = await send(strict.url, "GET", "/healthz", [(b"X-Request-Id", b"abc-123")])
    assert answer.headers["X-Request-Id"] == "abc-123"
    # a console session cookie that is not one: no session, so the sign-in page
    cookie = b"pushauth_console=" + NOT_UTF8 * 4
    answer = await send(strict.url, "GET", "/console", [(b"Cookie", cookie)])
    assert (answer.status, answer.headers["Location"]) == (303, "/console/login")
    answer = await send(strict.url, "GET", "/console/events", [(b"Cookie", cookie)])
    assert answer.status == 401
    # the demo page's double-submit CSRF token (not one the page made, even when both agree) and User-Agent
    for cookie_value, header_value in ((NOT_UTF8, NOT_UTF8), (NOT_UTF8, b"Q" * 43), (b"Q" * 43, NOT_UTF8)):
        headers = [(b"Cookie", b"pushauth_demo_csrf=" + cookie_value), (b"X-CSRF-Token", header_value)]
        answer = await send(strict.url, "POST", "/demo/challenges", headers, b'{"user": "alice@nhs.net"}')
        assert_error(answer.status, answer.json, 403, "csrf")
    token = b"Q" * 43
    answer = await send(strict.url, "POST", "/demo/challenges",
                        [(b"Cookie", b"pushauth_demo_csrf=" + token), (b"X-CSRF-Token", token),
                         (b"Sec-Fetch-Site", b"same-origin"), (b"User-Agent", b"Mozilla " + NOT_UTF8)],
                        b'{"user": "alice@nhs.net"}')
    assert (answer.status, answer.json["status"]) == (201, "pending"), answer
    # Origin that is not UTF-8: not this server's origin
    answer = await send(strict.url, "POST", "/demo/challenges",
                        [(b"Cookie", b"pushauth_demo_csrf=" + token), (b"X-CSRF-Token", token),
                         (b"Origin", b"http://\xff")], b'{"user": "alice@nhs.net"}')
    assert_error(answer.status, answer.json, 403, "csrf")


async def console_session(url: str) -> bytes:
    """The Cookie header of a console session signed in with the admin token."""
    sign_in = [(b"Authorization", b"Bearer " + ADMIN_TOKEN.encode()), (b"Sec-Fetch-Site", b"same-origin")]
    answer = await send(url, "POST", "/console/login", sign_in)
    assert answer.status == 204
    return answer.headers["Set-Cookie"].split(";", 1)[0].encode()


@pytest.mark.parametrize(("content_type", "body"), [
    (b"application/x-www-form-urlencoded; charset=no-such-charset", b"csrf=x"),
    (b"application/x-www-form-urlencoded; charset=\xff", b"csrf=x"),
    (b"multipart/form-data", b"csrf=x"),
    (b"multipart/form-data; boundary=zz", b"--zz\r\ngarbage"),
    (b"\xff/\xff", b"csrf=x"),
])
async def test_a_console_form_in_a_content_type_it_never_posts(
        strict: RunningServer, quiet_log: list[Any], content_type: bytes, body: bytes) -> None:
    """The console's pages post x-www-form-urlencoded forms; any other body is a form without its CSRF
    token (a 403 page), even from a signed-in session: never a 500."""
    cookie = await console_session(strict.url)
    answer = await send(strict.url, "POST", "/console/logout",
                        [(b"Cookie", cookie), (b"Sec-Fetch-Site", b"same-origin")], body, content_type)
    assert answer.status == 403
    assert b"did not come from this console session" in answer.raw


async def test_a_console_event_stream_with_a_last_event_id_in_other_digits(
        strict: RunningServer, quiet_log: list[Any]) -> None:
    """`Last-Event-ID: ١-١` (ARABIC-INDIC DIGIT ONE): digits to Python's `\\d` and `int()`, not to Redis."""
    session = await console_session(strict.url)
    host, _, port = strict.url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /console/events HTTP/1.1\r\nHost: x\r\nCookie: " + session
                     + b"\r\nLast-Event-ID: \xd9\xa1-\xd9\xa1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"retry: 3000" in await asyncio.wait_for(reader.readuntil(b"retry: 3000\n\n"), 10)
        await asyncio.sleep(0.2)  # a replay from the bad id would fail here
    finally:
        writer.close()
    # the login flow works, so nothing above broke the server
    answer = await send(strict.url, "POST", "/v1/challenges",
                        [(b"Authorization", b"Bearer " + API_KEY.encode())], b'{"user": "nobody@nhs.net"}')
    assert answer.status == 403

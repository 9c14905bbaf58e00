"""Real receivers on 127.0.0.1 for the alert sinks: HTTP (webhook, Slack, Teams), syslog and SMTP.

Each listens on a free port of its own, records what it received, and answers from a script (`replies`),
then with its default. Every check a real receiver would make is made here, independently of pushauth's
code: Standard Webhooks signatures with the `standardwebhooks` package, Slack's and Teams' payload shapes,
RFC 5424 syntax (`parse_syslog`, strict) and RFC 6587 octet counting, SMTP through `aiosmtpd`.
A receiver that finds a problem answers as the real one would (401, 400) and records it in `errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import re
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from types import TracebackType
from typing import Any, Self

import msgspec
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# -- HTTP --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    # Answer only after this long (a receiver slower than the sink's timeout).
    delay_s: float = 0.0


@dataclass(frozen=True)
class Request:
    path: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    client_port: int

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


# A check returns what is wrong with a request (the receiver answers 400 or 401 with it), or None.
Check = Callable[[Request], str | None]


class HttpReceiver:
    def __init__(self, *, check: Check | None = None, ssl_context: ssl.SSLContext | None = None,
                 default: Reply = Reply(200)) -> None:
        self._check = check
        self._ssl = ssl_context
        self.default = default
        self.replies: deque[Reply] = deque()
        self.requests: list[Request] = []
        self.errors: list[str] = []
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        got = Request(request.path_qs, {k.lower(): v for k, v in request.headers.items()},
                      await request.read(), peer[1] if peer else 0)
        self.requests.append(got)
        if request.method != "POST":
            return web.Response(status=405)
        if self._check is not None and (problem := self._check(got)) is not None:
            self.errors.append(problem)
            return web.Response(status=401 if problem.startswith("signature") else 400, text=problem)
        reply = self.replies.popleft() if self.replies else self.default
        if reply.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), reply.delay_s)
        return web.Response(status=reply.status, text=reply.body, headers=dict(reply.headers))

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()


def standard_webhooks_check(*secrets: str) -> Check:
    """A receiver holding `secrets` (one, or either side of a rotation): the Standard Webhooks reference
    library verifies id, timestamp (within 5 minutes) and signature over the exact body bytes."""
    verifiers = [Webhook(secret) for secret in secrets]

    def check(request: Request) -> str | None:
        for verifier in verifiers:
            try:
                verifier.verify(request.body, dict(request.headers))
            except WebhookVerificationError as exc:
                return f"signature: {exc}"
        if request.headers.get("content-type") != "application/json":
            return "content-type must be application/json"
        return None

    return check


def slack_check(request: Request) -> str | None:
    """What Slack's incoming webhooks reject with 400 invalid_payload / invalid_blocks, and its limits."""
    try:
        payload = request.json()
    except msgspec.DecodeError:
        return "invalid_payload"
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str) or not payload["text"]:
        return "invalid_payload: text"
    blocks = payload.get("blocks")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 50:
        return "invalid_blocks: 1..50 blocks"
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            if block["text"]["type"] != "plain_text" or len(block["text"]["text"]) > 150:
                return "invalid_blocks: header"
        elif kind == "section":
            fields = block.get("fields", [])
            if not 1 <= len(fields) <= 10 or any(len(f["text"]) > 2000 or f["type"] != "mrkdwn"
                                                 for f in fields):
                return "invalid_blocks: section fields"
        elif kind == "context":
            if not 1 <= len(block["elements"]) <= 10:
                return "invalid_blocks: context"
        else:
            return f"invalid_blocks: unexpected {kind}"
    if len(request.body) > 16000:
        return "too large"
    return None


def teams_check(request: Request) -> str | None:
    """The shape a Workflows "post to a channel when a webhook request is received" flow takes."""
    try:
        payload = request.json()
    except msgspec.DecodeError:
        return "invalid json"
    if payload.get("type") != "message" or not isinstance(payload.get("attachments"), list):
        return "not a message with attachments"
    for attachment in payload["attachments"]:
        if attachment.get("contentType") != "application/vnd.microsoft.card.adaptive":
            return "attachment is not an Adaptive Card"
        if "contentUrl" not in attachment or attachment["contentUrl"] is not None:
            return "contentUrl must be null"
        card = attachment.get("content", {})
        if card.get("type") != "AdaptiveCard" or card.get("version") != "1.4":
            return "not an Adaptive Card 1.4"
        for element in card.get("body", []):
            if element.get("type") not in ("TextBlock", "FactSet"):
                return f"unexpected element {element.get('type')}"
            facts = element.get("facts", []) if element["type"] == "FactSet" else []
            if not all(isinstance(f.get("title"), str) and isinstance(f.get("value"), str) for f in facts):
                return "facts need string title and value"
        for action in card.get("actions", []):
            if action.get("type") != "Action.OpenUrl" or not str(action.get("url", "")).startswith("http"):
                return "actions must be Action.OpenUrl with a URL"
    if len(request.body) > 28000:  # Teams' message size limit
        return "too large"
    return None


# -- syslog ------------------------------------------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"
_HEADER = re.compile(
    rb"<(0|[1-9]\d{0,2})>([1-9]\d{0,2}) "
    rb"(-|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    rb"([\x21-\x7e]{1,255}) ([\x21-\x7e]{1,48}) ([\x21-\x7e]{1,128}) ([\x21-\x7e]{1,32}) ")
_SD_NAME = re.compile(rb'[\x21-\x7e]{1,32}')


@dataclass(frozen=True)
class SyslogMessage:
    facility: int
    severity: int
    version: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: dict[str, dict[str, str]]
    msg: str
    bom: bool


def _sd_name(data: bytes, i: int, stop: bytes) -> tuple[str, int]:
    j = i
    while j < len(data) and data[j:j + 1] not in stop and data[j:j + 1] not in b'= ]"':
        j += 1
    if not _SD_NAME.fullmatch(data[i:j]):
        raise ValueError(f"bad SD-NAME at {i}: {data[i:j]!r}")
    return data[i:j].decode("ascii"), j


def parse_syslog(data: bytes) -> SyslogMessage:
    """RFC 5424 section 6, strictly: anything off is a ValueError."""
    m = _HEADER.match(data)
    if not m:
        raise ValueError(f"bad RFC 5424 header: {data[:120]!r}")
    pri = int(m.group(1))
    if pri > 191:
        raise ValueError("PRI above 191")
    i = m.end()
    sd: dict[str, dict[str, str]] = {}
    if data[i:i + 1] == b"-":
        i += 1
    else:
        while data[i:i + 1] == b"[":
            sd_id, i = _sd_name(data, i + 1, b"")
            if sd_id in sd:
                raise ValueError(f"SD-ID {sd_id} twice")
            params: dict[str, str] = {}
            while data[i:i + 1] == b" ":
                name, i = _sd_name(data, i + 1, b"")
                if data[i:i + 2] != b'="':
                    raise ValueError(f"expected =\" after {name}")
                i += 2
                value = bytearray()
                while True:
                    if i >= len(data):
                        raise ValueError("unterminated PARAM-VALUE")
                    c = data[i:i + 1]
                    if c == b"\\" and data[i + 1:i + 2] in (b'"', b"\\", b"]"):
                        value += data[i + 1:i + 2]
                        i += 2
                    elif c == b'"':
                        i += 1
                        break
                    elif c == b"]":
                        raise ValueError(f"unescaped ] in {name}")
                    else:
                        value += c
                        i += 1
                params[name] = value.decode("utf-8")  # strict: PARAM-VALUE is UTF-8
            if data[i:i + 1] != b"]":
                raise ValueError(f"SD-ELEMENT {sd_id} not closed at {i}")
            sd[sd_id] = params
            i += 1
        if not sd:
            raise ValueError("STRUCTURED-DATA is neither - nor an element")
    msg, bom = "", False
    if i < len(data):
        if data[i:i + 1] != b" ":
            raise ValueError("no SP before MSG")
        raw = data[i + 1:]
        bom = raw.startswith(_BOM)
        msg = raw[len(_BOM):].decode("utf-8") if bom else raw.decode("utf-8", "replace")
    return SyslogMessage(pri // 8, pri % 8, int(m.group(2)), m.group(3).decode(), m.group(4).decode(),
                         m.group(5).decode(), m.group(6).decode(), m.group(7).decode(), sd, msg, bom)


class _Arrivals:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.errors: list[str] = []
        self._arrived = asyncio.Event()

    def _add(self, message: bytes) -> None:
        self.messages.append(message)
        self._arrived.set()

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[SyslogMessage]:
        """The first `count` messages, parsed; waits for them to arrive."""
        async with asyncio.timeout(timeout_s):
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return [parse_syslog(m) for m in self.messages[:count]]


class SyslogUdpReceiver(_Arrivals, asyncio.DatagramProtocol):
    """RFC 5426: one message per datagram."""

    def __init__(self) -> None:
        super().__init__()
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._add(data)

    async def __aenter__(self) -> Self:
        self._transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0))
        self.port = int(self._transport.get_extra_info("sockname")[1])
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._transport is not None:
            self._transport.close()


class SyslogStreamReceiver(_Arrivals):
    """RFC 6587 octet counting over TCP, or over TLS (RFC 5425) with `ssl_context`. `stop` and `start`
    again on the same port stand for a collector restarting; `connections` counts accepted ones."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self.connections = 0
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        if (task := asyncio.current_task()) is not None:
            self._handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b" ")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        self.errors.append(f"connection closed inside a frame: {exc.partial!r}")
                    return
                if not re.fullmatch(rb"[1-9]\d{0,8} ", head):
                    self.errors.append(f"bad MSG-LEN {head!r}")
                    return
                self._add(await reader.readexactly(int(head[:-1])))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self._writers.discard(writer)
            writer.close()
            if task is not None:
                self._handlers.discard(task)

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self._ssl)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            # Every connection closed and its handler finished before this returns.
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=5)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


# -- SMTP --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: str | None


class SmtpReceiver:
    """aiosmtpd in this event loop. `tls_context` offers STARTTLS (and, with `require_tls`, insists on
    it); `implicit_tls` speaks TLS from the first byte instead. `users` turns AUTH on (only over TLS).
    `replies` scripts the answer to DATA ("451 4.3.0 Try again later"), then "250 OK"."""

    def __init__(self, *, tls_context: ssl.SSLContext | None = None, implicit_tls: bool = False,
                 users: Mapping[str, str] | None = None) -> None:
        self._tls = tls_context
        self._implicit = implicit_tls
        self._users = dict(users or {})
        self.replies: deque[str] = deque()
        self.mails: list[Mail] = []
        self.logins: list[tuple[str, bool]] = []  # (login, accepted)
        self._server: asyncio.Server | None = None
        self._logged_in: dict[int, str] = {}
        self.port = 0

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login = auth_data.login.decode()
        ok = self._users.get(login) == auth_data.password.decode()
        self.logins.append((login, ok))
        if ok:
            self._logged_in[id(session)] = login
        return AuthResult(success=ok, handled=False)  # aiosmtpd then answers 535 itself

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), message, tls,
                               self._logged_in.get(id(session))))
        return self.replies.popleft() if self.replies else "250 OK"

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        starttls = self._tls if not self._implicit else None

        def factory() -> SMTP:
            return SMTP(self, hostname="mail.test", tls_context=starttls,
                        require_starttls=starttls is not None,
                        authenticator=self._authenticate if self._users else None,
                        auth_require_tls=True, loop=loop)

        self._server = await loop.create_server(factory, "127.0.0.1", 0,
                                                ssl=self._tls if self._implicit else None)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

"""A fake APNs: HTTP/2 over TLS on (APNS_ADDR, 443), for the real aioapns client in a sandboxed child.

It checks what Apple checks and answers the way Apple answers:

- `POST /3/device/<token>`; token auth: `authorization: bearer <JWT>`, ES256 signed by the `.p8` key whose
  public half the fake holds, header `kid` = key id, claims `iss` = team id and an `iat` under an hour old
  (else 403 InvalidProviderToken / MissingProviderToken / ExpiredProviderToken). Certificate auth
  instead, when built with `client_ca`: a client certificate signed by that CA and no `authorization`.
- `apns-topic` (400 MissingTopic / TopicDisallowed), `apns-push-type: alert` (InvalidPushType),
  `apns-priority: 10` (BadPriority), an integer `apns-expiration` (BadExpirationDate), `apns-collapse-id`
  of at most 64 bytes (BadCollapseId), a UUID `apns-id` if given (BadMessageId), and a JSON payload with
  `aps` of at most 4 KiB (PayloadEmpty / PayloadTooLarge).
- Answers echo the request's `apns-id` (aioapns matches responses by it), errors carry Apple's body
  `{"reason": ...}` (+ `timestamp` for 410), and the fake honours HTTP/2 flow control both ways.

What it answers once the request is valid is scripted per token (`script`), consumed in order, then
`default` (200). `requests` records every request; `max_in_flight` the most requests it held at once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings

from fakes.sandbox import (
    APNS_ADDR,
    APNS_DEVELOPMENT_HOST,
    APNS_PRODUCTION_HOST,
    APNS_SANDBOX_HOST,
    HTTPS_PORT,
    PrivateHosts,
    TestCA,
)

MAX_PAYLOAD = 4096
JWT_MAX_AGE_S = 3600


def route_apns(hosts: PrivateHosts, addr: str = APNS_ADDR) -> PrivateHosts:
    """Make the sandbox resolve all three APNs names to `addr` (aioapns's `use_sandbox` connects to
    api.development.push.apple.com). A loopback address of the test's own (127.x.y.z) lets concurrent
    test runs each have a fake on 443."""
    names = (APNS_SANDBOX_HOST, APNS_PRODUCTION_HOST, APNS_DEVELOPMENT_HOST)
    lines = [line for line in hosts.hosts_file.read_text().splitlines()
             if not set(line.split()[1:]) & set(names)]
    hosts.hosts_file.write_text("\n".join([*lines, f"{addr} {' '.join(names)}"]) + "\n")
    return hosts


@dataclass(frozen=True)
class Answer:
    """What the fake says to a valid request. `hang`: never answer; `drop`: close the connection."""

    status: int = 200
    reason: str = ""
    delay_s: float = 0.0
    hang: bool = False
    drop: bool = False

    @classmethod
    def slow(cls, delay_s: float) -> Answer:
        return cls(delay_s=delay_s)


SUCCESS = Answer()
HANG = Answer(hang=True)
DROP = Answer(drop=True)
# Every error the provider must tell apart, as Apple sends them.
ERRORS: dict[str, Answer] = {reason: Answer(status, reason) for status, reason in [
    (400, "BadDeviceToken"), (400, "DeviceTokenNotForTopic"), (410, "Unregistered"),
    (403, "ExpiredProviderToken"), (403, "InvalidProviderToken"), (429, "TooManyRequests"),
    (500, "InternalServerError"), (503, "ServiceUnavailable"), (413, "PayloadTooLarge"),
]}


@dataclass(frozen=True)
class SeenRequest:
    token: str
    headers: dict[str, str]
    body: Any
    received_at: float
    auth: str  # "jwt", "cert" or ""
    jwt_header: dict[str, Any]
    jwt_claims: dict[str, Any]
    server_name: str | None  # TLS SNI
    alpn: str | None
    status: int
    reason: str


@dataclass
class _Stream:
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)
    answered: bool = False


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class FakeAPNs:
    def __init__(self, ca: TestCA, *, topic: str, key_id: str = "", team_id: str = "",
                 public_key: ec.EllipticCurvePublicKey | None = None, client_ca: str | None = None,
                 host: str = APNS_ADDR, port: int = HTTPS_PORT, max_concurrent_streams: int = 1000) -> None:
        self.ca, self.topic, self.key_id, self.team_id = ca, topic, key_id, team_id
        self.public_key, self.client_ca = public_key, client_ca
        self.host, self.port, self.max_concurrent_streams = host, port, max_concurrent_streams
        self.default = SUCCESS
        self.requests: list[SeenRequest] = []
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0
        # Answers that had to wait for the client to return flow-control credit.
        self.window_waits = 0
        self._scripts: dict[str, collections.deque[Answer]] = {}
        self._verified: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self._sni: dict[int, str | None] = {}
        self._server: asyncio.Server | None = None
        self._live: set[_H2Server] = set()

    def script(self, token: str, *answers: Answer) -> None:
        self._scripts.setdefault(token, collections.deque()).extend(answers)

    def seen(self, token: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.token == token]

    async def start(self) -> None:
        ctx = self.ca.server_context(APNS_SANDBOX_HOST, APNS_PRODUCTION_HOST, APNS_DEVELOPMENT_HOST,
                                     alpn=["h2"])
        if self.client_ca:
            ctx.load_verify_locations(self.client_ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.sni_callback = self._on_sni
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _H2Server(self), self.host, self.port, ssl=ctx, reuse_address=True)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._live):
            conn.close()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> FakeAPNs:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def _on_sni(self, sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
        self._sni[id(sslobj)] = name

    # --- checking a request --------------------------------------------------------------------

    def _answer_for(self, conn: _H2Server, stream: _Stream) -> tuple[Answer, SeenRequest]:
        h = stream.headers
        token = h.get(":path", "").removeprefix("/3/device/")
        jwt_header: dict[str, Any] = {}
        claims: dict[str, Any] = {}
        auth = ""
        try:
            body = json.loads(stream.body) if stream.body else None
        except ValueError:
            body = None
        try:
            if h.get(":method") != "POST":
                raise _Refused(405, "MethodNotAllowed")
            if not h.get(":path", "").startswith("/3/device/") or not token:
                raise _Refused(404, "BadPath")
            auth, jwt_header, claims = self._check_auth(conn, h.get("authorization"))
            self._check_headers(h)
            if not isinstance(body, dict) or not isinstance(body.get("aps"), dict):
                raise _Refused(400, "PayloadEmpty")
            if len(stream.body) > MAX_PAYLOAD:
                raise _Refused(413, "PayloadTooLarge")
            queue = self._scripts.get(token)
            answer = queue.popleft() if queue else self.default
        except _Refused as refused:
            answer = Answer(refused.status, refused.reason)
        seen = SeenRequest(token, dict(h), body, time.time(), auth, jwt_header, claims, conn.server_name,
                           conn.alpn, answer.status, answer.reason)
        self.requests.append(seen)
        return answer, seen

    def _check_auth(self, conn: _H2Server, authorization: str | None
                    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        if authorization is None:
            if conn.client_cert:
                return "cert", {}, {}
            raise _Refused(403, "MissingProviderToken")
        if conn.client_cert:
            raise _Refused(403, "InvalidProviderToken")  # both: Apple refuses a mixed connection
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _Refused(403, "InvalidProviderToken")
        if token not in self._verified:
            if self.public_key is None:
                raise _Refused(403, "InvalidProviderToken")
            try:
                header = jwt.get_unverified_header(token)
                claims = jwt.decode(token, self.public_key, algorithms=["ES256"],
                                    options={"require": ["iss", "iat"]}, issuer=self.team_id, leeway=60)
            except jwt.InvalidTokenError:
                raise _Refused(403, "InvalidProviderToken") from None
            if header.get("kid") != self.key_id or not isinstance(claims.get("iat"), int):
                raise _Refused(403, "InvalidProviderToken")
            self._verified[token] = (header, claims)
        header, claims = self._verified[token]
        if time.time() - claims["iat"] > JWT_MAX_AGE_S:
            raise _Refused(403, "ExpiredProviderToken")
        return "jwt", header, claims

    def _check_headers(self, h: dict[str, str]) -> None:
        if "apns-topic" not in h:
            raise _Refused(400, "MissingTopic")
        if h["apns-topic"] != self.topic:
            raise _Refused(400, "TopicDisallowed")
        if h.get("apns-push-type") != "alert":
            raise _Refused(400, "InvalidPushType")
        if h.get("apns-priority") != "10":
            raise _Refused(400, "BadPriority")
        if not h.get("apns-expiration", "").isdigit():
            raise _Refused(400, "BadExpirationDate")
        if not 0 < len(h.get("apns-collapse-id", "").encode()) <= 64:
            raise _Refused(400, "BadCollapseId")
        if "apns-id" in h:
            try:
                uuid.UUID(h["apns-id"])
            except ValueError:
                raise _Refused(400, "BadMessageId") from None


class _H2Server(asyncio.Protocol):
    """One client connection."""

    def __init__(self, fake: FakeAPNs) -> None:
        self.fake = fake
        self.transport: asyncio.Transport | None = None
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: fake.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
        })
        self.streams: dict[int, _Stream] = {}
        self.pending: dict[int, bytes] = {}  # answer bodies waiting for flow-control credit
        self.tasks: set[asyncio.Task[None]] = set()
        self.server_name: str | None = None
        self.alpn: str | None = None
        self.client_cert = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.fake.connections += 1
        self.fake._live.add(self)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.server_name = self.fake._sni.pop(id(sslobj), None)
            self.alpn = sslobj.selected_alpn_protocol()
            self.client_cert = bool(sslobj.getpeercert())
        self.conn.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fake._live.discard(self)
        for task in self.tasks:
            task.cancel()
        self.fake.in_flight -= sum(1 for s in self.streams.values() if not s.answered)
        self.streams.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except H2Error:
            self.flush()
            self.close()
            return
        for event in events:
            if isinstance(event, RequestReceived) and event.stream_id is not None:
                self.streams[event.stream_id] = _Stream(dict(event.headers or []))  # type: ignore[arg-type]
                self.fake.in_flight += 1
                self.fake.max_in_flight = max(self.fake.max_in_flight, self.fake.in_flight)
            elif isinstance(event, DataReceived) and event.stream_id is not None:
                if event.stream_id in self.streams:
                    self.streams[event.stream_id].body += event.data or b""
                self.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            elif isinstance(event, StreamEnded) and event.stream_id in self.streams:
                self.request_complete(event.stream_id)
            elif isinstance(event, StreamReset) and event.stream_id is not None:
                self.pending.pop(event.stream_id, None)
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None and not stream.answered:
                    self.fake.in_flight -= 1
            elif isinstance(event, WindowUpdated):
                self.send_pending()
            elif isinstance(event, ConnectionTerminated):
                self.flush()
                self.close()
                return
        self.flush()

    def request_complete(self, stream_id: int) -> None:
        answer, seen = self.fake._answer_for(self, self.streams[stream_id])
        apns_id = seen.headers.get("apns-id") or str(uuid.uuid4())
        if answer.drop:
            assert self.transport is not None
            self.transport.abort()
        elif answer.hang:
            pass
        elif answer.delay_s:
            task = asyncio.get_running_loop().create_task(self.answer_later(stream_id, answer, apns_id))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self.answer(stream_id, answer, apns_id)

    async def answer_later(self, stream_id: int, answer: Answer, apns_id: str) -> None:
        await asyncio.sleep(answer.delay_s)
        if stream_id in self.streams and self.transport is not None and not self.transport.is_closing():
            self.answer(stream_id, answer, apns_id)
            self.flush()

    def answer(self, stream_id: int, answer: Answer, apns_id: str) -> None:
        headers = [(":status", str(answer.status)), ("apns-id", apns_id)]
        if answer.status == 200:
            self.conn.send_headers(stream_id, headers, end_stream=True)
            self.done(stream_id)
            return
        error: dict[str, Any] = {"reason": answer.reason}
        if answer.status == 410:
            error["timestamp"] = int(time.time() * 1000)
        self.conn.send_headers(stream_id, [*headers, ("content-type", "application/json")])
        self.pending[stream_id] = json.dumps(error, separators=(",", ":")).encode()
        if not self.send_pending():
            self.fake.window_waits += 1

    def send_pending(self) -> bool:
        """Sends the waiting answer bodies the flow-control windows allow; False if any must wait."""
        for stream_id, body in list(self.pending.items()):
            try:
                window = self.conn.local_flow_control_window(stream_id)
            except H2Error:  # the client reset or closed the stream meanwhile
                del self.pending[stream_id]
                continue
            if window < len(body):
                continue
            self.conn.send_data(stream_id, body, end_stream=True)
            del self.pending[stream_id]
            self.done(stream_id)
        self.flush()
        return not self.pending

    def done(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None and not stream.answered:
            stream.answered = True
            self.fake.in_flight -= 1

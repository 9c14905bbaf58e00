"""A fake APNs: HTTP/2 over TLS on (PrivateHosts.apns_addr, 443), for the real aioapns client in a sandboxed
child.

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
The HTTP/2 server itself (framing, flow control, cancellation) is fakes/h2server.py, shared with the FCM fake.
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from testkit.fakes.h2server import H2App, H2Request, H2Response, H2ServerProtocol
from testkit.fakes.sandbox import APNS_HOSTS, HTTPS_PORT, TestCA

MAX_PAYLOAD = 4096
JWT_MAX_AGE_S = 3600


def write_p8(path: Path, key: Any) -> Path:
    """A private key as an unencrypted PKCS8 PEM file, the form of Apple's AuthKey_<key id>.p8."""
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


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


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class FakeAPNs(H2App):
    def __init__(self, ca: TestCA, *, topic: str, key_id: str = "", team_id: str = "",
                 public_key: ec.EllipticCurvePublicKey | None = None, client_ca: str | None = None,
                 host: str, port: int = HTTPS_PORT, max_concurrent_streams: int = 1000) -> None:
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
        self._live: set[H2ServerProtocol] = set()

    def script(self, token: str, *answers: Answer) -> None:
        self._scripts.setdefault(token, collections.deque()).extend(answers)

    def seen(self, token: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.token == token]

    async def start(self) -> None:
        ctx = self.ca.server_context(*APNS_HOSTS, alpn=["h2"])
        if self.client_ca:
            ctx.load_verify_locations(self.client_ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.sni_callback = self._on_sni
        self._server = await asyncio.get_running_loop().create_server(
            lambda: H2ServerProtocol(self, max_concurrent_streams=self.max_concurrent_streams),
            self.host, self.port, ssl=ctx, reuse_address=True)

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

    # --- the HTTP/2 connections (fakes/h2server.py) ----------------------------------------------

    def h2_connection_made(self, conn: H2ServerProtocol) -> None:
        self.connections += 1
        self._live.add(conn)
        assert conn.transport is not None
        sslobj = conn.transport.get_extra_info("ssl_object")
        if sslobj is not None:
            conn.server_name = self._sni.pop(id(sslobj), None)

    def h2_connection_lost(self, conn: H2ServerProtocol) -> None:
        self._live.discard(conn)

    def h2_stream_opened(self, conn: H2ServerProtocol, request: H2Request) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def h2_stream_closed(self, conn: H2ServerProtocol, request: H2Request) -> None:
        self.in_flight -= 1

    def h2_flow_control_wait(self, conn: H2ServerProtocol, request: H2Request) -> None:
        self.window_waits += 1

    def h2_request(self, conn: H2ServerProtocol, request: H2Request) -> H2Response:
        answer, seen = self._answer_for(conn, request)
        # aioapns matches answers to requests by apns-id.
        headers = [("apns-id", seen.headers.get("apns-id") or str(uuid.uuid4()))]
        body = b""
        if answer.status != 200:
            error: dict[str, Any] = {"reason": answer.reason}
            if answer.status == 410:
                error["timestamp"] = int(time.time() * 1000)
            headers.append(("content-type", "application/json"))
            body = json.dumps(error, separators=(",", ":")).encode()
        return H2Response(answer.status, headers, body, delay_s=answer.delay_s, hang=answer.hang,
                          drop=answer.drop)

    # --- checking a request --------------------------------------------------------------------

    def _answer_for(self, conn: H2ServerProtocol, stream: H2Request) -> tuple[Answer, SeenRequest]:
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

    def _check_auth(self, conn: H2ServerProtocol, authorization: str | None
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


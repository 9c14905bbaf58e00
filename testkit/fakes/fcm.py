"""A protocol-faithful fake of Firebase Cloud Messaging (HTTP v1) and of Google's OAuth2 token endpoint.

pushauth's FCM client (pushauth/push/fcm.py) reaches it unchanged (see sandbox.py): `POST
https://fcm.googleapis.com/v1/projects/{project}/messages:send` lands on PrivateHosts.fcm_addr:443 over TLS
with a test-CA certificate, and google-auth's OAuth2 service-account flow (RFC 7523 JWT bearer grant) goes to
the `token_uri` of the service-account file this fake writes, a plain-HTTP listener on 127.0.0.1.

What it checks, as Google does: the token request's JWT assertion (RS256, signed with the service account's
key, right `iss`/`aud`/`scope`, not expired); `Authorization: Bearer <a token it issued, not yet expired
or revoked>` on every send (else 401 UNAUTHENTICATED); the project id in the path; the message shape
(exactly one target, string data values, Android priority and ttl syntax), else 400 INVALID_ARGUMENT.

What it answers: per device token, a script of `Reply`s consumed in order (`fake.script(token, ...)`), then
success. Errors use FCM v1's real error body:

    {"error": {"code": 404, "message": "...", "status": "NOT_FOUND",
               "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                            "errorCode": "UNREGISTERED"}]}}

The module-level replies (UNREGISTERED, SENDER_ID_MISMATCH, ...) cover every error pushauth maps.

Protocols, as fcm.googleapis.com: one TLS listener whose ALPN offers "h2" first and "http/1.1" second.
an HTTP/2 client (firebase-admin's own httpx client, http2=True) gets HTTP/2 (fakes/h2server.py: one
connection carries many sends, up to SETTINGS_MAX_CONCURRENT_STREAMS = 100 at once, as Google's front ends
advertise); a client that offers only HTTP/1.1 (pushauth's) or no ALPN gets aiohttp's HTTP/1.1 server on the
same connection, with keep-alive. Both hand the
request to the same code (`_handle`), so checks and answers are the same; `SendRecord.http_version` and
`.connection` say how each send arrived. A client that gives up on a send cancels its handler (slow replies
stop sleeping): RST_STREAM or a closed connection on HTTP/2, a closed connection on HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from multidict import CIMultiDict, CIMultiDictProxy

from testkit.fakes.h2server import H2App, H2Request, H2Response, H2ServerProtocol, next_connection_id
from testkit.fakes.sandbox import FCM_HOST, HTTPS_PORT, TestCA

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Either scope lets a service account send through FCM v1.
FCM_SCOPES = frozenset({"https://www.googleapis.com/auth/cloud-platform",
                        "https://www.googleapis.com/auth/firebase.messaging"})
_TTL = re.compile(r"\d{1,12}(\.\d{1,9})?s")
_SEND_PATH = re.compile(r"/v1/projects/([^/]+)/([^/]+)")
MAX_BODY = 64 * 1024  # larger request bodies: 413
# What Google's front ends advertise in SETTINGS.
MAX_CONCURRENT_STREAMS = 100
JSON_UTF8 = "application/json; charset=UTF-8"


@dataclass(frozen=True)
class Reply:
    """One scripted answer to a send: success (status 200) or an FCM v1 error."""

    status: int = 200
    fcm_code: str | None = None  # details[FcmError].errorCode
    grpc_status: str = ""  # error.status, the canonical code
    message: str = ""
    field_violation: str | None = None  # a google.rpc.BadRequest detail naming this field
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0  # sleep this long before answering
    # Instead of FCM's JSON error: this HTML page (what Google's front ends, or a proxy, answer for a 502).
    html: str | None = None
    # No answer at all: the connection is aborted once the request has been read (as when a server closes
    # a keep-alive connection under a request).
    drop: bool = False

    def body(self, name: str) -> dict[str, Any]:
        if self.status == 200:
            return {"name": name}
        details: list[dict[str, Any]] = []
        if self.fcm_code:
            details.append({"@type": FCM_ERROR_TYPE, "errorCode": self.fcm_code})
        if self.field_violation:
            violation = {"field": self.field_violation, "description": self.message}
            details.append({"@type": BAD_REQUEST_TYPE, "fieldViolations": [violation]})
        error: dict[str, Any] = {"code": self.status, "message": self.message, "status": self.grpc_status}
        if details:
            error["details"] = details
        return {"error": error}


OK = Reply()
UNREGISTERED = Reply(404, "UNREGISTERED", "NOT_FOUND", "Requested entity was not found.")
SENDER_ID_MISMATCH = Reply(403, "SENDER_ID_MISMATCH", "PERMISSION_DENIED", "SenderId mismatch")
INVALID_TOKEN_ARGUMENT = Reply(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT",
                               "The registration token is not a valid FCM registration token")
# The other shape FCM uses for a bad token: a generic message and a field violation on message.token.
INVALID_TOKEN_FIELD = Reply(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT",
                            "Request contains an invalid argument.", field_violation="message.token")
INVALID_PAYLOAD_ARGUMENT = Reply(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT",
                                 "Invalid value at 'message.data[0].value' (TYPE_STRING), 1",
                                 field_violation="message.data[0].value")
UNAVAILABLE = Reply(503, "UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable.")
INTERNAL = Reply(500, "INTERNAL", "INTERNAL", "Internal error encountered.")
THIRD_PARTY_AUTH_ERROR = Reply(401, "THIRD_PARTY_AUTH_ERROR", "UNAUTHENTICATED",
                               "Auth error from APNS or Web Push Service")
UNAUTHENTICATED = Reply(401, None, "UNAUTHENTICATED",
                        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                        "login cookie or other valid authentication credential.")
# The service account's project is unknown to FCM (no FCM detail, only the canonical status).
PROJECT_NOT_FOUND = Reply(404, None, "NOT_FOUND", "Requested entity was not found.")
# A 502 from Google's front end: an HTML page, not FCM's JSON.
BAD_GATEWAY = Reply(502, html="<!DOCTYPE html><html lang=en><title>Error 502 (Server Error)!!1</title>"
                              "<p><b>502.</b> <ins>That's an error.</ins></html>")
# The connection closes under the request, before any answer.
DROP = Reply(drop=True)
PERMISSION_DENIED = Reply(403, None, "PERMISSION_DENIED",
                          "Permission 'cloudmessaging.messages.create' denied on resource "
                          "'//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist).")


def quota_exceeded(retry_after_s: int | None = None) -> Reply:
    headers = (("Retry-After", str(retry_after_s)),) if retry_after_s is not None else ()
    return Reply(429, "QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED",
                 "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute' of "
                 "service 'fcm.googleapis.com'.", headers=headers)


def slow(delay_s: float, then: Reply = OK) -> Reply:
    """`then`, after `delay_s` seconds (for client timeouts)."""
    return replace(then, delay_s=delay_s)


@dataclass(frozen=True)
class SendRecord:
    """One `messages:send` request as the fake received it (after authentication)."""

    at: float  # time.time() on arrival
    project: str
    token: str | None
    message: dict[str, Any]
    validate_only: bool
    headers: Mapping[str, str]  # case-insensitive names (lower case as sent over HTTP/2); no pseudo-headers
    http_version: str = "2"  # "2" or "1.1": what ALPN picked for its connection
    connection: int = 0  # an id of its connection (unique in this process)
    nth_on_connection: int = 0  # 0: the first request on its connection (HTTP/2 only; 0 over HTTP/1.1)
    body_bytes: int = 0  # the request body as received
    headers_frame_bytes: int | None = None  # HTTP/2: its HEADERS (+ CONTINUATION) frames on the wire

    @property
    def data(self) -> Any:
        return self.message.get("data")

    @property
    def android(self) -> Any:
        return self.message.get("android")


@dataclass
class _Counters:
    token_requests: int = 0
    token_rejections: list[str] = field(default_factory=list)
    token_answers: list[float] = field(default_factory=list)
    unauthenticated_sends: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    drop: bool = False


def _json_answer(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> _Answer:
    return _Answer(status, (("Content-Type", JSON_UTF8), *headers), text.encode())


def _error(status: int, grpc_status: str, message: str) -> _Answer:
    error = {"error": {"code": status, "message": message, "status": grpc_status}}
    return _json_answer(status, json.dumps(error))


class _AlpnDispatch(asyncio.Protocol):
    """The FCM listener's protocol until the TLS handshake is done: then it hands the connection to the
    HTTP/2 server or to aiohttp's HTTP/1.1 server, by the protocol ALPN picked."""

    def __init__(self, fake: FakeFCM) -> None:
        self.fake = fake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sslobj = transport.get_extra_info("ssl_object")
        alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
        self.fake.connections += 1
        protocol: asyncio.BaseProtocol
        if alpn == "h2":
            protocol = H2ServerProtocol(self.fake, max_concurrent_streams=MAX_CONCURRENT_STREAMS)
        else:  # "http/1.1", or a client that offered no ALPN
            runner = self.fake._fcm_runner
            if runner is None or runner.server is None:  # stopping
                transport.close()
                return
            handler = runner.server()
            self.fake._http1_connections[id(handler)] = next_connection_id()
            protocol = handler
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class FakeFCM(H2App):
    """FCM HTTP v1 `messages:send` on (PrivateHosts.fcm_addr, 443) over TLS, and an OAuth2 token endpoint on
    127.0.0.1.

        fake = FakeFCM(ca, host=hosts.fcm_addr)
        async with fake:                      # or: await fake.start() ... await fake.stop()
            fake.write_service_account(path)  # a service account whose token_uri is this fake
            fake.script("tok-1", fcm.UNAVAILABLE, fcm.UNAVAILABLE)   # then success
            ...
            fake.requests, fake.attempts("tok-1"), fake.token_requests, fake.max_in_flight, fake.sends
    """

    def __init__(self, ca: TestCA, *, host: str, project_id: str = "pushauth-test",
                 port: int = HTTPS_PORT, keep_requests: bool = True) -> None:
        self.ca = ca
        # False for benchmarks: count sends (`sends`) without keeping a record of each.
        self.keep_requests = keep_requests
        self.sends = 0
        self.project_id = project_id
        self.host, self.port = host, port
        self.requests: list[SendRecord] = []
        # Answer the token endpoint with 400 invalid_grant (a deleted or disabled service-account key).
        self.refuse_tokens = False
        # The `expires_in` of the access tokens it issues (Google's: 3600 s); a send with an expired one
        # gets 401 UNAUTHENTICATED, as from FCM.
        self.token_lifetime_s = 3600
        # The token endpoint sleeps this long before answering (a slow Google).
        self.token_delay_s = 0.0
        # Added to every send's answer time (for concurrency tests).
        self.delay_s = 0.0
        self._counters = _Counters()
        self._scripts: dict[str, deque[Reply]] = {}
        self._issued: dict[str, float] = {}  # access token -> when it expires (time.time())
        self._message_ids = itertools.count(1)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_key_id = secrets.token_hex(20)
        self.client_email = f"firebase-adminsdk-fake@{project_id}.iam.gserviceaccount.com"
        # TLS connections the FCM listener accepted (either protocol).
        self.connections = 0
        # The HEADERS frame bytes of the first request on each HTTP/2 connection (kept with keep_requests
        # off too: the benchmark's records start after the worker's connection is open).
        self.first_headers_frame_bytes: list[int] = []
        self._fcm_runner: web.AppRunner | None = None  # HTTP/1.1 (aiohttp), on the same listener
        self._fcm_server: asyncio.Server | None = None
        self._h2_live: set[H2ServerProtocol] = set()
        self._http1_connections: dict[int, int] = {}  # id(aiohttp RequestHandler) -> connection id
        self._oauth_runner: web.AppRunner | None = None
        self._oauth_port = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        oauth = web.Application()
        oauth.router.add_post("/token", self._token)
        self._oauth_runner = web.AppRunner(oauth, access_log=None, shutdown_timeout=0.5)
        await self._oauth_runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._oauth_port = sock.getsockname()[1]
        await web.SockSite(self._oauth_runner, sock, backlog=1024).start()

        # HTTP/1.1: every request goes to _http1, which routes as _h2_send does (in _handle). The limit on
        # the body is _handle's (MAX_BODY), the same for both protocols.
        fcm = web.Application(client_max_size=4 * MAX_BODY)
        fcm.router.add_route("*", "/{path:.*}", self._http1)
        # handler_cancellation: a client that gave up (timeout) cancels its slow handler, as on a real
        # server; shutdown_timeout: stop() does not wait for slow handlers.
        self._fcm_runner = web.AppRunner(fcm, access_log=None, handler_cancellation=True,
                                         shutdown_timeout=0.5)
        await self._fcm_runner.setup()
        ssl_context = self.ca.server_context(FCM_HOST, alpn=["h2", "http/1.1"])
        self._fcm_server = await asyncio.get_running_loop().create_server(
            lambda: _AlpnDispatch(self), self.host, self.port, ssl=ssl_context, reuse_address=True,
            backlog=1024)

    async def stop_fcm(self) -> None:
        """Stop the FCM listener only (sends get connection refused; tokens are still issued)."""
        if self._fcm_server is not None:
            server, self._fcm_server = self._fcm_server, None
            server.close()
            for conn in list(self._h2_live):
                conn.close()
            if self._fcm_runner is not None:  # closes the HTTP/1.1 connections
                runner, self._fcm_runner = self._fcm_runner, None
                await runner.cleanup()
            await server.wait_closed()

    async def stop_oauth(self) -> None:
        """Stop the token endpoint only (token requests get connection refused)."""
        if self._oauth_runner is not None:
            runner, self._oauth_runner = self._oauth_runner, None
            await runner.cleanup()

    async def stop(self) -> None:
        await self.stop_fcm()
        await self.stop_oauth()

    async def __aenter__(self) -> FakeFCM:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # -- set-up and inspection ---------------------------------------------------------------------

    @property
    def token_url(self) -> str:
        assert self._oauth_port, "start() the fake first"
        return f"http://127.0.0.1:{self._oauth_port}/token"

    def service_account(self) -> dict[str, str]:
        """A service-account key file's contents, as the Firebase console hands it out."""
        pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "1" + "".join(str(b % 10) for b in secrets.token_bytes(20)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_url,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/fake",
            "universe_domain": "googleapis.com",
        }

    def write_service_account(self, path: Path) -> Path:
        path.write_text(json.dumps(self.service_account(), indent=2), encoding="utf-8")
        path.chmod(0o600)
        return path

    def script(self, token: str, *replies: Reply) -> None:
        """Answer the next sends to `token` with `replies`, in order; then success."""
        self._scripts.setdefault(token, deque()).extend(replies)

    def attempts(self, token: str) -> int:
        return sum(1 for r in self.requests if r.token == token)

    def sends_to(self, token: str) -> list[SendRecord]:
        return [r for r in self.requests if r.token == token]

    @property
    def token_requests(self) -> int:
        return self._counters.token_requests

    @property
    def token_answers(self) -> list[float]:
        """When each access token was handed out (time.time())."""
        return list(self._counters.token_answers)

    @property
    def token_rejections(self) -> list[str]:
        """Why token requests were refused (other than `refuse_tokens`), for assertion messages."""
        return list(self._counters.token_rejections)

    @property
    def unauthenticated_sends(self) -> int:
        return self._counters.unauthenticated_sends

    @property
    def max_in_flight(self) -> int:
        return self._counters.max_in_flight

    @property
    def in_flight(self) -> int:
        """Requests being handled now (a client that gave up no longer counts)."""
        return self._counters.in_flight

    def issued_tokens(self) -> frozenset[str]:
        return frozenset(self._issued)

    def revoke_tokens(self) -> None:
        """Every access token issued so far is refused from now on (401), as after a key rotation."""
        self._issued.clear()

    # -- OAuth2 token endpoint ---------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        self._counters.token_requests += 1
        form = await request.post()
        if self.token_delay_s:
            await asyncio.sleep(self.token_delay_s)
        if self.refuse_tokens:
            refusal = {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            return web.json_response(refusal, status=400)
        problem = self._check_assertion(form.get("grant_type"), form.get("assertion"))
        if problem:
            self._counters.token_rejections.append(problem)
            return web.json_response({"error": "invalid_grant", "error_description": problem}, status=400)
        access_token = "ya29.fake-" + secrets.token_urlsafe(32)
        self._issued[access_token] = time.time() + self.token_lifetime_s
        self._counters.token_answers.append(time.time())
        return web.json_response({"access_token": access_token, "expires_in": self.token_lifetime_s,
                                  "token_type": "Bearer"})

    def _check_assertion(self, grant_type: object, assertion: object) -> str | None:
        if grant_type != JWT_BEARER_GRANT:
            return f"unsupported grant_type {grant_type!r}"
        if not isinstance(assertion, str) or assertion.count(".") != 2:
            return "assertion is not a compact JWT"
        head_b64, claims_b64, sig_b64 = assertion.split(".")
        try:
            header = json.loads(_b64url_decode(head_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            signature = _b64url_decode(sig_b64)
        except ValueError:
            return "assertion is not valid base64url JSON"
        if header.get("alg") != "RS256":
            return f"alg {header.get('alg')!r}, expected RS256"
        if header.get("kid") != self.private_key_id:
            return "kid is not this service account's private_key_id"
        try:
            self._key.public_key().verify(signature, f"{head_b64}.{claims_b64}".encode(),
                                          padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "Invalid JWT Signature."
        now = time.time()
        if claims.get("iss") != self.client_email:
            return "iss is not the service account"
        # google-auth always addresses the assertion to Google's token endpoint, whatever token_uri says.
        if claims.get("aud") != GOOGLE_TOKEN_AUDIENCE:
            return "aud is not the token endpoint"
        if not FCM_SCOPES.intersection(str(claims.get("scope", "")).split()):
            return "scope does not allow FCM"
        iat, exp = claims.get("iat"), claims.get("exp")
        if not (isinstance(iat, int) and isinstance(exp, int)):
            return "iat/exp missing"
        if iat > now + 60 or exp <= now or exp - iat > 3600:
            return "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable time."
        return None

    # -- FCM messages:send -------------------------------------------------------------------------

    # HTTP/2 (fakes/h2server.py calls these)

    def h2_connection_made(self, conn: H2ServerProtocol) -> None:
        self._h2_live.add(conn)

    def h2_connection_lost(self, conn: H2ServerProtocol) -> None:
        self._h2_live.discard(conn)

    # In flight over HTTP/2: from a request's HEADERS to the end of its answer (or its reset), as aiohttp's
    # handler runs from the request line to the answer.
    def h2_stream_opened(self, conn: H2ServerProtocol, request: H2Request) -> None:
        self._counters.in_flight += 1
        self._counters.max_in_flight = max(self._counters.max_in_flight, self._counters.in_flight)

    def h2_stream_closed(self, conn: H2ServerProtocol, request: H2Request) -> None:
        self._counters.in_flight -= 1

    def h2_request(self, conn: H2ServerProtocol, request: H2Request) -> Awaitable[H2Response]:
        if request.index == 0:
            self.first_headers_frame_bytes.append(request.headers_frame_bytes)
        return self._h2_send(conn, request)

    async def _h2_send(self, conn: H2ServerProtocol, request: H2Request) -> H2Response:
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if not k.startswith(":"))
        via = _Via("2", conn.id, request.index, request.headers_frame_bytes)
        answer = await self._handle(request.method, request.path, headers, bytes(request.body), via)
        return H2Response(answer.status, answer.headers, answer.body, drop=answer.drop)

    # HTTP/1.1 (aiohttp)

    async def _http1(self, request: web.Request) -> web.Response:
        counters = self._counters
        counters.in_flight += 1
        counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
        try:
            body = await request.read()
            via = _Via(f"{request.version.major}.{request.version.minor}",
                       self._http1_connections.get(id(request.protocol), 0))
            answer = await self._handle(request.method, request.raw_path, CIMultiDict(request.headers), body,
                                        via)
        finally:
            counters.in_flight -= 1
        if answer.drop and request.transport is not None:
            request.transport.abort()  # the response below goes nowhere
        return web.Response(status=answer.status, body=answer.body, headers=CIMultiDict(answer.headers))

    # Both

    async def _handle(self, method: str, target: str, headers: CIMultiDict[str], body: bytes,
                      via: _Via) -> _Answer:
        route = _SEND_PATH.fullmatch(target.partition("?")[0])
        if route is None:
            return _error(404, "NOT_FOUND", "The requested URL was not found on this server.")
        if method != "POST":
            return _error(405, "METHOD_NOT_ALLOWED", f"Method {method} is not allowed.")
        project, rpc = route.groups()
        if rpc != "messages:send":
            return _error(404, "NOT_FOUND", "Method not found.")
        auth = headers.get("Authorization", "")
        if not (auth.startswith("Bearer ") and self._issued.get(auth[len("Bearer "):], 0.0) > time.time()):
            self._counters.unauthenticated_sends += 1
            return _error(401, "UNAUTHENTICATED", UNAUTHENTICATED.message)
        if project != self.project_id:
            return _error(403, "PERMISSION_DENIED", PERMISSION_DENIED.message.format(project=project))
        if len(body) > MAX_BODY:
            return _error(413, "INVALID_ARGUMENT", "Request payload size exceeds the limit.")
        try:
            parsed = json.loads(body)
        except ValueError:
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        problem = _check_body(parsed)
        if problem:
            return _error(400, "INVALID_ARGUMENT", problem)
        message = parsed["message"]
        token = message.get("token")
        self.sends += 1
        if self.keep_requests:
            self.requests.append(SendRecord(
                at=time.time(), project=project, token=token, message=message,
                validate_only=bool(parsed.get("validate_only")), headers=CIMultiDictProxy(headers),
                http_version=via.http_version, connection=via.connection, nth_on_connection=via.nth,
                body_bytes=len(body), headers_frame_bytes=via.headers_frame_bytes))
        queue = self._scripts.get(token) if token else None
        reply = queue.popleft() if queue else OK
        delay = reply.delay_s + self.delay_s
        if delay:
            await asyncio.sleep(delay)
        if reply.drop:
            return _Answer(502, (), b"", drop=True)
        if reply.html is not None:
            return _Answer(reply.status, (("Content-Type", "text/html; charset=UTF-8"), *reply.headers),
                           reply.html.encode())
        name = f"projects/{project}/messages/0:{next(self._message_ids)}%{secrets.token_hex(8)}"
        text = json.dumps(reply.body(name)).replace("{project}", project)
        return _json_answer(reply.status, text, reply.headers)


@dataclass(frozen=True)
class _Via:
    """How a request arrived."""

    http_version: str
    connection: int
    nth: int = 0
    headers_frame_bytes: int | None = None


def _check_body(body: Any) -> str | None:
    """What FCM v1 would reject with 400 INVALID_ARGUMENT, for the fields pushauth uses."""
    if not isinstance(body, dict) or set(body) - {"message", "validate_only"}:
        return "Invalid JSON payload received. Unknown name at top level."
    message = body.get("message")
    if not isinstance(message, dict):
        return "Invalid JSON payload received. 'message' must be an object."
    targets = [k for k in ("token", "topic", "condition") if k in message]
    if len(targets) != 1:
        return "Exactly one of token, topic or condition must be specified."
    if "token" in message and not (isinstance(message["token"], str) and message["token"]):
        return "The registration token is not a valid FCM registration token"
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return "Invalid value at 'message.data' (map<string, string>)"
    android = message.get("android", {})
    if not isinstance(android, dict):
        return "Invalid value at 'message.android'"
    if android.get("priority", "normal") not in ("normal", "high", "NORMAL", "HIGH"):
        return f"Invalid value at 'message.android.priority' ({android.get('priority')!r})"
    if "ttl" in android and not (isinstance(android["ttl"], str) and _TTL.fullmatch(android["ttl"])):
        return "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)"
    return None


__all__ = [
    "BAD_GATEWAY", "DROP", "INTERNAL", "INVALID_PAYLOAD_ARGUMENT", "INVALID_TOKEN_ARGUMENT",
    "INVALID_TOKEN_FIELD", "OK", "PERMISSION_DENIED", "PROJECT_NOT_FOUND", "SENDER_ID_MISMATCH",
    "THIRD_PARTY_AUTH_ERROR", "UNAUTHENTICATED", "UNAVAILABLE", "UNREGISTERED", "FakeFCM", "Reply",
    "SendRecord", "quota_exceeded", "slow",
]

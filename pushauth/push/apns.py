"""APNs (Apple Push Notification service) through aioapns, behind the narrow contract in `base.py`.

Token-based auth (the `.p8` signing key, its key id and the team id) is the default; certificate auth (one
PEM holding certificate and key) is the alternative. Every push is an alert with `mutable-content: 1`,
priority 10, `apns-collapse-id` = challenge id and `apns-expiration` = the challenge's expiry.

A client certificate expires, and Apple then refuses every push. Its notAfter is the gauge
`pushauth_push_apns_certificate_expiry_timestamp_seconds{topic}`, read when the provider is built and again
with every new aioapns client (aioapns re-reads the file, so a certificate renewed on disk shows up without a
restart). Under 30 days left logs `push_apns_certificate_expiring`, past it `push_apns_certificate_expired`;
neither stops the worker, which may serve FCM too. Token auth has no expiry and no gauge.

Things about aioapns 4.0 this module works around rather than patches (see `ApnsProvider`):

- Its connection pool calls `asyncio.get_event_loop()` when built, so the client is created lazily on
  the first send, inside the running loop.
- It retries failed connections itself, sleeping a second between attempts; we allow one attempt and let
  the worker's backoff do the retrying, so a send to an unreachable Apple returns in about a second.
- A response it cannot match (an error without a JSON `reason`, a reset stream) leaves the send waiting
  forever; every send is bounded by a timeout. Cancelling its future instead of abandoning it would make a
  late answer raise `InvalidStateError` inside the protocol and tear the connection down, so a send that
  times out is left to finish in the background.
- It does not wait for HTTP/2 flow-control credit before sending a request body: past the server's
  64 KiB window it raises FlowControlError, leaves the stream half-open and sleeps a second. And its pool
  fills one connection up to 1,000 streams before it opens the next. So the provider runs one aioapns
  client per connection (`max_connections=1`), spreads sends over them, and caps each at
  `PER_CONNECTION_STREAMS` requests in flight, which stays inside the window.
- It never acknowledges the DATA it receives (Fatal1ty/aioapns pull request #75, unmerged), so a
  connection can take in only one window (64 KiB) of error bodies in its life; after that it stalls or
  dies. Each client counts the error bodies it has taken in and is replaced well before that. It also
  keeps a small record for every successful push until its connection closes, so a client is replaced
  after a bounded number of sends as well.
- It puts `api.development.push.apple.com` (Apple's other name for the sandbox host) on the wire for
  `use_sandbox`, and sets no ALPN; we give it an SSL context that offers h2.
- It exposes no response headers, so a `Retry-After` from Apple (which APNs does not normally send) cannot
  be honoured: `retry_after_s` is always None and the worker's backoff applies.
"""

from __future__ import annotations

import asyncio
import math
import re
import ssl
import time
from pathlib import Path
from typing import Any

import structlog
from aioapns import APNs, NotificationRequest, PushType
from aioapns.common import NotificationResult
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from h2.exceptions import H2Error

from pushauth import metrics
from pushauth.config import ApnsSettings
from pushauth.errors import ConfigError
from pushauth.push.base import AuthErrorLog, Outcome, OutcomeKind, PushMessage

log = structlog.get_logger(__name__)

SENT, RETRY, FAILED = OutcomeKind.SENT, OutcomeKind.RETRY, OutcomeKind.FAILED
INVALID_TOKEN, AUTH_ERROR = OutcomeKind.INVALID_TOKEN, OutcomeKind.AUTH_ERROR

# What every APNs error reason means for the worker. Apple's reasons are unique across status codes, so
# the reason decides; `_BY_STATUS` covers a reason Apple adds later.
# https://developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns
REASONS: dict[str, OutcomeKind] = {
    # The token is dead or belongs to another app or environment: mark it stale; the phone polls until
    # it registers a new one. (A sandbox token sent to production is BadDeviceToken too, so a wrong
    # `sandbox` setting shows up as every token going stale.)
    "BadDeviceToken": INVALID_TOKEN,            # 400
    "DeviceTokenNotForTopic": INVALID_TOKEN,    # 400
    "Unregistered": INVALID_TOKEN,              # 410 the app was removed; body carries `timestamp`
    "ExpiredToken": INVALID_TOKEN,              # 410
    # Our credentials or our configuration are wrong. Retrying cannot help and a retry storm would only
    # get the key throttled: fail, and log loudly for an operator.
    "InvalidProviderToken": AUTH_ERROR,         # 403 bad key, key id or team id
    "ExpiredProviderToken": AUTH_ERROR,         # 403 JWT older than an hour (clock skew)
    "MissingProviderToken": AUTH_ERROR,         # 403
    "UnrelatedKeyIdInToken": AUTH_ERROR,        # 403
    "BadEnvironmentKeyInToken": AUTH_ERROR,     # 403 a sandbox-only key used against production
    "BadCertificate": AUTH_ERROR,               # 403
    "BadCertificateEnvironment": AUTH_ERROR,    # 403
    "Forbidden": AUTH_ERROR,                    # 403
    "BadTopic": AUTH_ERROR,                     # 400 `topic` is not the app's bundle id
    "TopicDisallowed": AUTH_ERROR,              # 400
    "MissingTopic": AUTH_ERROR,                 # 400
    # Transient: retry with backoff and jitter.
    "TooManyRequests": RETRY,                   # 429 too many pushes to this one device
    "TooManyProviderTokenUpdates": RETRY,       # 429
    "IdleTimeout": RETRY,                       # 400 the connection idled out under us
    "InternalServerError": RETRY,               # 500
    "ServiceUnavailable": RETRY,                # 503
    "Shutdown": RETRY,                          # 503 the server is draining
    # Everything else is a request Apple will never accept (PayloadTooLarge 413, BadExpirationDate,
    # BadCollapseId, BadPriority, BadMessageId, InvalidPushType, DuplicateHeaders, PayloadEmpty, BadPath,
    # MethodNotAllowed): FAILED with the reason.
}
_BY_STATUS = {"403": AUTH_ERROR, "410": INVALID_TOKEN, "429": RETRY, "500": RETRY, "502": RETRY,
              "503": RETRY, "504": RETRY}

# The alert (`PushMessage.alert`) is generic on purpose. It passes through Apple and shows on a locked
# screen, so it names no user, application, place or number. `mutable-content` wakes the app's
# notification service extension, which fetches the signed challenge (or the notices) from `server` over
# the device's own authenticated API and replaces the text with the real details before the user sees it.
# High priority: deliver now, wake the device (10). aioapns types this as an int.
PRIORITY = 10
# The longest a send may take before it counts as transient. Never longer than the challenge lives.
SEND_TIMEOUT_S = 10.0
# Requests in flight on one connection. aioapns sends without waiting for flow-control credit, and Apple
# returns credit in half-window steps (32 KiB), so the request bodies in flight must fit in 32 KiB:
# 100 of ~250-300 bytes do. More concurrency than connections x 100 needs more connections.
PER_CONNECTION_STREAMS = 100
# aioapns never returns flow-control credit, so a connection's 65,535-byte receive window is all the
# error bodies it can ever take. Retire a client well before it could run out.
ERROR_BODY_BUDGET = 40_000
# aioapns keeps ~150 bytes per successful push until the connection closes; bound that.
MAX_SENDS_PER_CLIENT = 200_000
# APNs tokens are hex (32 bytes today; Apple says the length may change). Anything else would only put
# odd characters into the request path.
_TOKEN = re.compile(r"[0-9A-Fa-f]{16,512}")
# A client certificate with less than this left is logged as expiring: time to renew it with Apple.
CERT_WARN_S = 30 * 86400.0


def classify(status: str, reason: str) -> Outcome:
    """The outcome for an APNs answer (`status` as aioapns reports it, e.g. "410")."""
    if status == "200":
        return Outcome(SENT)
    kind = REASONS.get(reason) or _BY_STATUS.get(status, FAILED)
    return Outcome(kind, reason or f"http_{status}")


def _load_key(path: str) -> str:
    where = "push.apns.key_file"
    try:
        pem = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read {path}: {type(exc).__name__}") from None
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: {path} is not an unencrypted PEM private key (.p8)") from None
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)):
        raise ConfigError(f"{where}: {path} is not an EC P-256 key (APNs signs with ES256)")
    return pem


def _check_cert(path: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"push.apns.cert_file: {path} is not a readable PEM with certificate and "
                          f"unencrypted key: {type(exc).__name__}") from None


class _Client:
    """One aioapns client holding one connection, and what it has taken in, so it can be retired before
    aioapns chokes on it."""

    __slots__ = ("apns", "closed", "error_bytes", "inflight", "retired", "sends", "streams")

    def __init__(self, apns: APNs, streams: int) -> None:
        self.apns = apns
        self.streams = asyncio.Semaphore(streams)
        self.inflight = 0  # sends assigned to this client, waiting for a stream or in flight
        self.sends = 0
        self.error_bytes = 0
        self.retired = False
        self.closed = False

    @property
    def worn_out(self) -> bool:
        return self.error_bytes >= ERROR_BODY_BUDGET or self.sends >= MAX_SENDS_PER_CLIENT

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.apns.pool.close()


async def _quiet(_request: NotificationRequest, _result: NotificationResult) -> None:
    """aioapns's error hook; without one it logs every failed push itself. We log what matters."""


class ApnsProvider:
    """Sends challenge pushes to Apple. Build with `from_settings`; `send` never raises for an Apple or
    network failure; `aclose` closes the connections."""

    name = "apns"

    def __init__(self, *, topic: str, sandbox: bool, connections: int, concurrency: int,
                 key_pem: str = "", key_id: str = "", team_id: str = "", cert_file: str = "",
                 send_timeout_s: float = SEND_TIMEOUT_S) -> None:
        if bool(key_pem) == bool(cert_file):
            raise ValueError("give either key_pem (+ key_id, team_id) or cert_file")
        self._topic = topic
        self._sandbox = sandbox
        self._key_pem = key_pem
        self._key_id = key_id
        self._team_id = team_id
        self._cert_file = cert_file
        self._timeout = send_timeout_s
        self._slots = asyncio.Semaphore(concurrency)
        self._per_connection = min(PER_CONNECTION_STREAMS, -(-concurrency // connections))
        if concurrency > connections * PER_CONNECTION_STREAMS:
            log.warning("push_concurrency_capped", provider=self.name, concurrency=concurrency,
                        effective=connections * PER_CONNECTION_STREAMS,
                        hint="raise push.apns.connections")
        self._clients: list[_Client | None] = [None] * connections
        self._retiring: set[_Client] = set()
        self._background: set[asyncio.Future[NotificationResult]] = set()
        self._auth_log = AuthErrorLog(self.name)
        self._cert_logged: tuple[float, int] | None = None  # (notAfter, whole days left) last logged
        self._closed = False

    @classmethod
    def from_settings(cls, settings: ApnsSettings) -> ApnsProvider:
        """Reads the credentials once; an unusable key or certificate is a ConfigError now, not at the
        first push."""
        common: dict[str, Any] = {"topic": settings.topic, "sandbox": settings.sandbox,
                                  "connections": settings.connections, "concurrency": settings.concurrency}
        if settings.cert_file:
            _check_cert(settings.cert_file)
            provider = cls(cert_file=settings.cert_file, **common)
            provider._watch_certificate()
            return provider
        return cls(key_pem=_load_key(settings.key_file), key_id=settings.key_id, team_id=settings.team_id,
                   **common)

    def __repr__(self) -> str:
        auth = f"key_id={self._key_id!r}" if self._key_pem else "cert"
        return f"ApnsProvider(topic={self._topic!r}, sandbox={self._sandbox}, {auth})"

    async def send(self, token: str, message: PushMessage) -> Outcome:
        if self._closed:
            return Outcome(RETRY, "provider_closed")
        if not _TOKEN.fullmatch(token):
            return Outcome(INVALID_TOKEN, "malformed_token")
        async with self._slots:
            try:
                client = self._pick()
            except (OSError, ssl.SSLError, ValueError) as exc:
                # The certificate file went missing or bad since start (aioapns re-reads it per client).
                log.error("push_auth_error", provider=self.name, reason="client_setup_failed",
                          error=type(exc).__name__)
                return Outcome(AUTH_ERROR, "client_setup_failed")
            client.inflight += 1
            try:
                async with client.streams:
                    return await self._send(client, token, message)
            finally:
                client.inflight -= 1
                self._close_if_idle(client)

    async def aclose(self) -> None:
        self._closed = True
        clients = [c for c in (*self._clients, *self._retiring) if c is not None]
        self._clients = [None] * len(self._clients)
        self._retiring.clear()
        for client in clients:
            client.close()
        # Let the transports finish closing (and abandoned sends fail) while the loop still runs.
        # aioapns offers nothing to wait on: poll, for at most 2 s.
        for _ in range(200):
            if not any(c.apns.pool.connections for c in clients):
                break
            await asyncio.sleep(0.01)
        if self._background:
            await asyncio.wait(self._background, timeout=1.0)

    # --- internals -------------------------------------------------------------------------------

    async def _send(self, client: _Client, token: str, message: PushMessage) -> Outcome:
        # Measured after every wait for a slot, so the expiration cannot drift past the challenge's.
        now = time.time()
        if message.expires_at <= now:
            return Outcome(FAILED, "expired")
        request = NotificationRequest(
            device_token=token,
            message={"aps": {"alert": message.alert, "mutable-content": 1, "sound": "default"},
                     **message.data()},
            # aioapns writes apns-expiration = int(time.time()) + time_to_live as it sends the headers,
            # i.e. the challenge's expiry. (If it first has to open the connection, the expiration moves
            # later by that wait, at most a TLS handshake.)
            time_to_live=message.expires_at - int(now),
            priority=PRIORITY,
            collapse_key=message.collapse_id,  # a retried push replaces, never stacks, on the phone
            push_type=PushType.ALERT,
        )
        client.sends += 1
        task = asyncio.ensure_future(client.apns.send_notification(request))
        try:
            done, _ = await asyncio.wait((task,), timeout=min(self._timeout, message.expires_at - now))
        finally:
            if not task.done():
                self._abandon(task)
        if not done:
            return Outcome(RETRY, "timeout")
        try:
            result = task.result()
        except Exception as exc:  # never raise for a network or client failure
            return self._failure(exc)
        return self._answer(client, result)

    def _pick(self) -> _Client:
        """The least busy connection; the first one while traffic is light."""
        loads = [c.inflight if c is not None else 0 for c in self._clients]
        index = loads.index(min(loads))
        client = self._clients[index]
        if client is not None and client.worn_out:
            client.retired = True
            self._retiring.add(client)
            self._close_if_idle(client)
            client = None
        if client is None:
            client = self._clients[index] = _Client(self._new_apns(), self._per_connection)
        return client

    def _new_apns(self) -> APNs:
        ctx = ssl.create_default_context()
        ctx.set_alpn_protocols(["h2"])
        common: dict[str, Any] = {
            "topic": self._topic, "use_sandbox": self._sandbox, "max_connections": 1,
            # One attempt: aioapns would otherwise sleep and retry inside the send; the worker retries.
            "max_connection_attempts": 1, "ssl_context": ctx, "err_func": _quiet,
        }
        if self._cert_file:
            apns = APNs(client_cert=self._cert_file, **common)
            self._watch_certificate()  # after aioapns has read the file: what this client will present
            return apns
        return APNs(key=self._key_pem, key_id=self._key_id, team_id=self._team_id, **common)

    def _watch_certificate(self) -> None:
        """Sets the expiry gauge from the certificate file as it is now, and logs one that expires soon or
        has expired, at most once per whole day left: the `connections` clients a burst of sends opens
        together say it once, and a client opened days later says it again, with the new count."""
        try:
            # The first certificate in the PEM is the client's own; the key is never looked at.
            cert = x509.load_pem_x509_certificate(Path(self._cert_file).read_bytes())
        except (OSError, ValueError) as exc:
            # OpenSSL accepted the file (or it changed since): only the metric is lost, never a push.
            log.warning("push_apns_certificate_unreadable", path=self._cert_file, topic=self._topic,
                        error=type(exc).__name__)
            return
        not_after_utc = cert.not_valid_after_utc
        not_after = not_after_utc.timestamp()
        metrics.APNS_CERT_EXPIRY.labels(self._topic).set(not_after)
        left = not_after - time.time()
        days_left = math.floor(left / 86400)
        if left >= CERT_WARN_S or self._cert_logged == (not_after, days_left):
            return
        self._cert_logged = (not_after, days_left)
        where = {"path": self._cert_file, "topic": self._topic, "not_after": not_after_utc.isoformat()}
        if left <= 0:
            # Not a ConfigError: Apple refuses with BadCertificate / an auth error, already mapped, and the
            # worker keeps serving any other provider.
            log.error("push_apns_certificate_expired", **where)
        else:
            log.warning("push_apns_certificate_expiring", days_left=days_left, **where)

    def _close_if_idle(self, client: _Client) -> None:
        if client.retired and client.inflight == 0:
            client.close()
            self._retiring.discard(client)

    def _abandon(self, task: asyncio.Future[NotificationResult]) -> None:
        # Not cancelled: see the module docstring. It ends when Apple answers or the connection closes.
        self._background.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Future[NotificationResult]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a late failure of an abandoned send is not news

    def _answer(self, client: _Client, result: NotificationResult) -> Outcome:
        status, reason = str(result.status), result.description or ""
        outcome = classify(status, reason)
        if outcome.kind is SENT:
            return Outcome(SENT, provider_id=result.notification_id)
        # The body was {"reason": ...} plus, for 410, a "timestamp": count it against the window.
        client.error_bytes += len(reason) + 48
        if outcome.kind is AUTH_ERROR:
            self._auth_log.error(outcome.reason, status=status, topic=self._topic,
                                 key_id=self._key_id or None, sandbox=self._sandbox)
        return outcome

    def _failure(self, exc: Exception) -> Outcome:
        # aioapns raises MaxAttemptsExceeded for a refused or dropped connection (it catches its own
        # ConnectionError and ConnectionClosed); the others are for completeness.
        if isinstance(exc, TimeoutError):  # before OSError, its base class
            return Outcome(RETRY, "timeout")
        if isinstance(exc, MaxAttemptsExceeded | ApnsConnectionError | ConnectionClosed | OSError):
            return Outcome(RETRY, "connection_error")
        if isinstance(exc, H2Error):
            return Outcome(RETRY, "protocol_error")
        # Only the type: an exception's text could quote the request path, which holds the token.
        log.warning("push_client_error", provider=self.name, error=type(exc).__name__)
        return Outcome(RETRY, "client_error")

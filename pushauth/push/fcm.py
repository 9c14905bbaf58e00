"""Firebase Cloud Messaging (HTTP v1) through firebase-admin's async API.

One `FcmProvider` per worker: it owns a named firebase-admin app (never the default app, so nothing else in
the process can reach or delete it), caps sends in flight with a semaphore, and maps every answer to an
`Outcome` through `_ERROR_TABLE` below. `send` never raises for a vendor or network failure.

What firebase-admin 7.x does underneath, and what this module does about it:

- Internal retries. The SDK's async client (`HttpxRetryTransport` with `DEFAULT_HTTPX_RETRY_CONFIG`) retries
  HTTP 500 and 503 by itself: up to 5 attempts in all, sleeping 0, 1, 2 and 4 s in between (7 s), ignoring
  `Retry-After`. 429 and every other status are returned at once, and so are network errors (connection
  refused, timeouts). There is no public option to turn this off (`_MessagingService` builds the client
  with the default retry config; only `httpTimeout` is configurable), and we do not patch SDK classes. So:
  every send runs under one deadline, `min(challenge expiry, SEND_TIMEOUT_S)`, which covers the wait for a
  slot, the OAuth2 token and all of the SDK's attempts. The SDK therefore never sends after the challenge
  has expired, and the worker gets one answer per `send` in bounded time and owns the backoff between
  sends. A single 503 followed by success comes back as SENT (the SDK absorbed it); five 503s in a row as
  RETRY "UNAVAILABLE" after ~7 s.
- 401 from FCM. The SDK's auth flow refreshes the OAuth2 token and resends, twice, before giving up: a
  THIRD_PARTY_AUTH_ERROR or UNAUTHENTICATED costs 3 sends and 2 token requests.
- OAuth2 token refresh is synchronous in google-auth (requests, `time.sleep` between its own retries,
  a 120 s default timeout). Inside the SDK's async path it would run on the event loop and stall every
  other send (APNs too) while Google's token endpoint is slow. `_fresh_token` refreshes in a worker thread
  instead, one refresh at a time, before the SDK needs it; the SDK then finds a fresh token and never
  refreshes on the loop (except on the 401 path above).
- Closing. `firebase_admin.delete_app` closes the messaging service's httpx client with `asyncio.run()`,
  which raises inside a running loop. `aclose` closes that client on its own loop first, then deletes the
  app from a worker thread, where the SDK's `asyncio.run()` finds the client already closed.

Nothing here logs a device token or a payload: logs carry the provider, the outcome reason and, for
credential errors, the SDK's message (which is about our service account, not about a device).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import re
import time
import warnings
from collections.abc import Callable
from typing import Any

import firebase_admin
import google.auth.credentials
import google.auth.transport.requests
import httpx
import structlog
from firebase_admin import credentials, exceptions, messaging
from google.auth import exceptions as auth_errors

from pushauth.clock import retry_after_s
from pushauth.config import FcmSettings
from pushauth.errors import ConfigError
from pushauth.push.base import Outcome, OutcomeKind, PushMessage

log = structlog.get_logger(__name__)

# The longest one `send` may take, all included (slot, token, the SDK's internal retries). Also the SDK's
# per-request httpx timeout. Bounded further by the challenge's expiry.
SEND_TIMEOUT_S = 10.0
# Taken off the FCM ttl for the request's trip to Google (see `send`).
TRANSIT_MARGIN_S = 1.0
# The longest one OAuth2 token request may take (google-auth's own default is 120 s).
TOKEN_TIMEOUT_S = 10.0

_app_names = itertools.count(1)

# firebase-admin 7.7 deprecates `Message.token` in favour of `Message.fid` (Firebase Installation IDs, a
# registration mode the phone app has to opt in to). The contract's push token is an FCM registration
# token, which FCM still accepts; moving to FIDs is a phone-app and contract change, not this module's.
# Silenced for this module's calls only.
warnings.filterwarnings("ignore", message=r"Message\.token is deprecated", category=DeprecationWarning,
                        module=re.escape(__name__))


def _about_token(exc: BaseException) -> bool:
    """Whether an INVALID_ARGUMENT is about the registration token rather than the payload. FCM says so in
    the message ("The registration token is not a valid FCM registration token") and/or in a
    google.rpc.BadRequest detail with a field violation on `message.token`."""
    if "registration token" in str(exc).lower():
        return True
    response = getattr(exc, "http_response", None)
    if not isinstance(response, httpx.Response):
        return False
    try:
        details = response.json()["error"]["details"]
        return any(v.get("field") == "message.token"
                   for d in details if isinstance(d, dict)
                   for v in d.get("fieldViolations", ()) if isinstance(v, dict))
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def _retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", False))


def _always(_: BaseException) -> bool:
    return True


# Every FCM answer and failure -> what the worker does. Each exception in the chain (the innermost cause
# first: an httpx.ConnectError before the UnavailableError the SDK wraps it in) is looked up row by row;
# the first row whose class matches and whose test passes decides. Subclasses come before their bases
# (UnregisteredError is a NotFoundError, SenderIdMismatchError a PermissionDeniedError,
# QuotaExceededError a ResourceExhaustedError, ThirdPartyAuthError an UnauthenticatedError).
# Anything that matches no row is FAILED with the class name of the innermost exception.
#
#   exception class                   test          kind                       reason
_ERROR_TABLE: tuple[tuple[type[BaseException], Callable[[BaseException], bool], OutcomeKind, str], ...] = (
    # 404 UNREGISTERED: the app was uninstalled or the token expired. Mark the token stale.
    (messaging.UnregisteredError,        _always,      OutcomeKind.INVALID_TOKEN, "UNREGISTERED"),
    # 403 SENDER_ID_MISMATCH: the token belongs to another Firebase project. Mark the token stale.
    (messaging.SenderIdMismatchError,    _always,      OutcomeKind.INVALID_TOKEN, "SENDER_ID_MISMATCH"),
    # 400 INVALID_ARGUMENT about the token (malformed / not an FCM token): mark it stale ...
    (exceptions.InvalidArgumentError,    _about_token, OutcomeKind.INVALID_TOKEN, "INVALID_ARGUMENT"),
    # ... about anything else: our payload is wrong; resending it will not help.
    (exceptions.InvalidArgumentError,    _always,      OutcomeKind.FAILED,        "INVALID_ARGUMENT"),
    # 429 QUOTA_EXCEEDED (project or per-device rate): retry after Retry-After / backoff.
    (messaging.QuotaExceededError,       _always,      OutcomeKind.RETRY,         "QUOTA_EXCEEDED"),
    (exceptions.ResourceExhaustedError,  _always,      OutcomeKind.RETRY,         "RESOURCE_EXHAUSTED"),
    # 401 THIRD_PARTY_AUTH_ERROR: the APNs key / web-push credentials in the Firebase console are wrong.
    (messaging.ThirdPartyAuthError,      _always,      OutcomeKind.AUTH_ERROR,    "THIRD_PARTY_AUTH_ERROR"),
    # 401 UNAUTHENTICATED: FCM refused our access token even after the SDK refreshed it twice.
    (exceptions.UnauthenticatedError,    _always,      OutcomeKind.AUTH_ERROR,    "UNAUTHENTICATED"),
    # 403 PERMISSION_DENIED without an FCM code: the service account may not send for this project.
    (exceptions.PermissionDeniedError,   _always,      OutcomeKind.AUTH_ERROR,    "PERMISSION_DENIED"),
    # Google's token endpoint: a retryable refusal (5xx, temporarily_unavailable) is transient ...
    (auth_errors.RefreshError,           _retryable,   OutcomeKind.RETRY,         "token_endpoint"),
    # ... any other refusal (invalid_grant: key deleted or disabled, clock skew) is our credential.
    (auth_errors.RefreshError,           _always,      OutcomeKind.AUTH_ERROR,    "credentials_refused"),
    # Token endpoint unreachable.
    (auth_errors.TransportError,         _always,      OutcomeKind.RETRY,         "token_endpoint"),
    # Network: timeouts first (httpx.TimeoutException is an httpx.TransportError), then the rest
    # (connection refused or reset, TLS failure, protocol error).
    (httpx.TimeoutException,             _always,      OutcomeKind.RETRY,         "timeout"),
    (httpx.TransportError,               _always,      OutcomeKind.RETRY,         "connection"),
    (TimeoutError,                       _always,      OutcomeKind.RETRY,         "timeout"),
    (exceptions.DeadlineExceededError,   _always,      OutcomeKind.RETRY,         "timeout"),
    # 503 UNAVAILABLE / 500 INTERNAL, after the SDK's own 5 attempts: retry with backoff.
    (exceptions.UnavailableError,        _always,      OutcomeKind.RETRY,         "UNAVAILABLE"),
    (exceptions.InternalError,           _always,      OutcomeKind.RETRY,         "INTERNAL"),
)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and its causes, innermost first (FirebaseError keeps its cause in `.cause`)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    chain.reverse()
    return chain


def _retry_after(chain: list[BaseException]) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or HTTP date) on the error's HTTP response."""
    for exc in reversed(chain):
        response = getattr(exc, "http_response", None) or getattr(exc, "response", None)
        if isinstance(response, httpx.Response):
            return retry_after_s(response.headers.get("retry-after"))
    return None


def classify(exc: BaseException) -> Outcome:
    """The Outcome for a failed send, from `_ERROR_TABLE`."""
    chain = _chain(exc)
    for link in chain:
        for cls, test, kind, reason in _ERROR_TABLE:
            if isinstance(link, cls) and test(link):
                retry_after = _retry_after(chain) if kind is OutcomeKind.RETRY else None
                return Outcome(kind, reason, retry_after_s=retry_after)
    return Outcome(OutcomeKind.FAILED, type(chain[0]).__name__)


class _TimeoutRequest:
    """google-auth's requests transport with a bounded timeout for token requests."""

    def __init__(self) -> None:
        self._inner = google.auth.transport.requests.Request()

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: float | None = None, **kwargs: Any) -> Any:
        return self._inner(url, method=method, body=body, headers=headers,
                           timeout=timeout or TOKEN_TIMEOUT_S, **kwargs)


class FcmProvider:
    """FCM HTTP v1 through firebase-admin's `send_each_async`, one message per call."""

    name = "fcm"

    def __init__(self, credential: credentials.Certificate, *, concurrency: int) -> None:
        self._project_id: str = str(credential.project_id)
        # A name of our own: never the default app, and one app per provider instance.
        self._app: Any = firebase_admin.initialize_app(
            credential, {"projectId": self._project_id, "httpTimeout": SEND_TIMEOUT_S},
            name=f"pushauth-fcm-{next(_app_names)}-{id(self):x}")
        self._google_credential: Any = credential.get_credential()
        self._token_request = _TimeoutRequest()
        self._refresh: asyncio.Future[None] | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._closed = False

    @classmethod
    def from_settings(cls, settings: FcmSettings) -> FcmProvider:
        try:
            credential = credentials.Certificate(settings.service_account_file)
        except (OSError, ValueError) as exc:
            # Certificate's messages name the file or the missing field, never the key material.
            raise ConfigError(f"push.fcm.service_account_file: cannot use {settings.service_account_file!r}: "
                              f"{type(exc).__name__}: {exc}") from None
        if not credential.project_id:
            raise ConfigError("push.fcm.service_account_file: the service account has no project_id")
        return cls(credential, concurrency=settings.concurrency)

    def __repr__(self) -> str:
        return f"FcmProvider(project_id={self._project_id!r})"

    @property
    def project_id(self) -> str:
        return self._project_id

    async def send(self, token: str, message: PushMessage) -> Outcome:
        if time.time() >= message.expires_at:
            return Outcome(OutcomeKind.FAILED, "expired")
        if not token:
            return Outcome(OutcomeKind.INVALID_TOKEN, "empty_token")
        deadline = min(message.expires_at - time.time(), SEND_TIMEOUT_S)
        try:
            async with asyncio.timeout(deadline):
                await self._fresh_token()
                async with self._slots:
                    # The ttl is taken when the message leaves, after any wait for a slot. FCM counts it
                    # from when the message reaches Google, so one second for the trip comes off, and it is
                    # rounded down: FCM never holds the message past the challenge's expiry. (Without the
                    # margin a 44 s ttl taken at 44.02 s left arrived with 43.97 s left.)
                    ttl = max(0, int(message.expires_at - time.time() - TRANSIT_MARGIN_S))
                    fcm_message = messaging.Message(
                        token=token, data=message.data(),
                        android=messaging.AndroidConfig(priority="high", ttl=dt.timedelta(seconds=ttl)))
                    # dry_run defaults to True in _MessagingService.send_each_async: always say False.
                    batch = await messaging.send_each_async([fcm_message], dry_run=False, app=self._app)
        except TimeoutError:
            if time.time() >= message.expires_at:
                return Outcome(OutcomeKind.FAILED, "expired")
            return Outcome(OutcomeKind.RETRY, "timeout")
        except Exception as exc:  # send never raises for a vendor or network failure
            return self._failed(exc)
        response = batch.responses[0]
        if response.success:
            return Outcome(OutcomeKind.SENT, provider_id=str(response.message_id))
        return self._failed(response.exception)

    def _failed(self, exc: BaseException) -> Outcome:
        outcome = classify(exc)
        if outcome.kind is OutcomeKind.AUTH_ERROR:
            # Loud: every push through this provider fails until an operator fixes the credentials.
            # The SDK's message is about our service account or the project, never about a device.
            log.error("push_auth_error", provider=self.name, reason=outcome.reason,
                      project_id=self._project_id, detail=str(exc)[:300])
        else:
            log.debug("push_send_failed", provider=self.name, kind=outcome.kind.value, reason=outcome.reason)
        return outcome

    async def _fresh_token(self) -> None:
        """Make sure the OAuth2 access token is fresh, refreshing it in a worker thread (one refresh at a
        time, shared by every send waiting for it) so that google-auth's blocking refresh never runs on
        the event loop."""
        credential = self._google_credential
        token_state = getattr(credential, "token_state", None)  # google-auth >= 2.24; else `valid`
        if (credential.valid if token_state is None
                else token_state is google.auth.credentials.TokenState.FRESH):
            return
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(asyncio.to_thread(credential.refresh, self._token_request))
        # shield: a send that gives up (deadline) does not cancel the refresh the others wait for.
        await asyncio.shield(self._refresh)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._refresh is not None:
            await asyncio.wait([self._refresh], timeout=TOKEN_TIMEOUT_S)
            if self._refresh.done() and not self._refresh.cancelled():
                self._refresh.exception()  # retrieved: a failed refresh was already reported by its sends
        # The SDK's messaging service (created on the first send) holds an httpx.AsyncClient that only
        # delete_app closes, with asyncio.run(), which fails inside a running loop. Close it here, on its
        # own loop; if a future SDK renames these internals we skip this and delete_app still runs.
        service = (getattr(self._app, "_services", None) or {}).get("_messaging")
        client = getattr(service, "_async_client", None)
        if client is not None and callable(getattr(client, "aclose", None)):
            try:
                await client.aclose()
            except Exception as exc:  # closing must not fail the worker's shutdown
                log.warning("push_provider_close_failed", provider=self.name, error=type(exc).__name__)
        try:
            await asyncio.to_thread(firebase_admin.delete_app, self._app)
        except Exception as exc:
            log.warning("push_provider_close_failed", provider=self.name, error=type(exc).__name__)

"""Firebase Cloud Messaging: the HTTP v1 send, made by pushauth's own pooled HTTP client.

One `FcmProvider` per worker. firebase-admin does what it is good at: it loads the service account
(`credentials.Certificate`), names the project, and hands us google-auth's credential, whose OAuth2 access
token `AccessToken` refreshes in a worker thread. The send itself is one `POST
https://fcm.googleapis.com/v1/projects/{project}/messages:send` on a keep-alive connection from an aiohttp
pool, as sygnal (the Matrix push gateway) sends with google-auth and its own HTTP agent. Why not the SDK's
`send_each_async` (bench/README.md, "Push delivery" and "Issue 16"): 1.11-1.14 ms of worker CPU per push in
its httpx/h2 stack (0.15 ms with this client), 500 and 503 retried by itself for up to 7 s while ignoring
`Retry-After`, and OAuth2 refreshes run synchronously on the event loop.

One `send` is one HTTP request, with two exceptions, both immediate and inside the same deadline:
- 401 UNAUTHENTICATED (our access token was refused: revoked, or expired early): one token refresh, shared
  with every send that saw the same token refused, and one resend. A second 401 is AUTH_ERROR.
  THIRD_PARTY_AUTH_ERROR is also a 401 but is about the APNs credentials in the Firebase console, which a
  new token cannot fix: no refresh.
- A keep-alive connection that the server closed while it idled in our pool (`ServerDisconnectedError`
  before any answer): one resend on a fresh connection. If FCM did take the first request after all, the
  phone gets the same wake-up twice, which is harmless: it names a challenge the app fetches and shows once.
Every other retry is the worker's (pushauth/push/dispatch.py): backoff with jitter, `Retry-After` honoured,
never past the challenge's expiry. Every send runs under one deadline, `min(challenge expiry,
SEND_TIMEOUT_S)`, which covers the token, the wait for a connection and the answer.

HTTP/1.1, not HTTP/2: each send in flight holds one pooled connection (at most `push.fcm.concurrency`), which
Google's front ends serve as readily as streams of one HTTP/2 connection. aiohttp's C parser costs ~10x less
CPU per request than the h2 state machine in pure Python (bench/fcm_ceiling.py measures both).

Nothing here logs a device token or a payload: logs carry the provider, the outcome's reason and, for our
own credential errors, FCM's message (which is about our service account or project, never a device).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import google.auth.transport.requests
import msgspec
import structlog
from firebase_admin import credentials
from google.auth import exceptions as auth_errors

from pushauth import __version__
from pushauth.clock import retry_after_s
from pushauth.config import FcmSettings
from pushauth.errors import ConfigError
from pushauth.push.base import AuthErrorLog, Outcome, OutcomeKind, PushMessage

log = structlog.get_logger(__name__)

SENT, RETRY, FAILED = OutcomeKind.SENT, OutcomeKind.RETRY, OutcomeKind.FAILED
INVALID_TOKEN, AUTH_ERROR = OutcomeKind.INVALID_TOKEN, OutcomeKind.AUTH_ERROR

FCM_ENDPOINT = "https://fcm.googleapis.com"
# The longest one `send` may take, all included (token, connection slot, answer, the one resend). Bounded
# further by the challenge's expiry.
SEND_TIMEOUT_S = 10.0
# Taken off the FCM ttl for the request's trip to Google (see `_body`).
TRANSIT_MARGIN_S = 1.0
# The longest one OAuth2 token request may take (google-auth's own default is 120 s).
TOKEN_TIMEOUT_S = 10.0
# Google's access tokens live an hour. Refresh in the background once less than this is left, while sends
# go on with the current token; stop using a token with less than TOKEN_MIN_LEFT_S left (clock skew).
REFRESH_AHEAD_S = 300.0
TOKEN_MIN_LEFT_S = 30.0
# After a failed refresh, sends that need a token get that failure at once for this long instead of each
# asking Google again: no storm against the token endpoint.
REFRESH_RETRY_S = 5.0
# An idle pooled connection is closed after this long, before a server would close it under a request.
KEEPALIVE_S = 30.0

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


# ---------------------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FcmAnswer:
    """One HTTP answer from FCM, its google.rpc error body read (https://firebase.google.com/docs/reference/
    fcm/rest/v1/ErrorCode; https://cloud.google.com/apis/design/errors)."""

    status: int
    retry_after: str | None = None
    name: str | None = None  # a success's message name, "projects/{project}/messages/{id}"
    error_status: str = ""  # error.status, the canonical code ("NOT_FOUND")
    fcm_code: str = ""  # details[FcmError].errorCode ("UNREGISTERED")
    message: str = ""  # error.message
    violations: tuple[str, ...] = ()  # details[BadRequest].fieldViolations[].field

    @classmethod
    def parse(cls, status: int, body: bytes, retry_after: str | None = None) -> FcmAnswer:
        """Never raises: a body that is not FCM's JSON (an HTML page from a proxy) leaves only the status."""
        try:
            doc = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return cls(status, retry_after)
        if not isinstance(doc, dict):
            return cls(status, retry_after)
        if status == 200:
            name = doc.get("name")
            return cls(status, retry_after, name=name if isinstance(name, str) else None)
        error = doc.get("error")
        if not isinstance(error, dict):
            return cls(status, retry_after)
        fcm_code, violations = "", []
        for detail in error.get("details") or ():
            if not isinstance(detail, dict):
                continue
            if detail.get("@type") == FCM_ERROR_TYPE and isinstance(detail.get("errorCode"), str):
                fcm_code = detail["errorCode"]
            elif detail.get("@type") == BAD_REQUEST_TYPE:
                violations += [str(v.get("field")) for v in detail.get("fieldViolations") or ()
                               if isinstance(v, dict)]
        return cls(status, retry_after, error_status=str(error.get("status") or ""), fcm_code=fcm_code,
                   message=str(error.get("message") or ""), violations=tuple(violations))


def _about_token(answer: FcmAnswer) -> bool:
    """Whether an INVALID_ARGUMENT is about the registration token rather than our payload. FCM says so in
    the message ("The registration token is not a valid FCM registration token") and/or with a
    google.rpc.BadRequest field violation on `message.token`."""
    return "registration token" in answer.message.lower() or "message.token" in answer.violations


def _always(_: FcmAnswer) -> bool:
    return True


# Every FCM error answer -> what the worker does. The first row whose FCM errorCode (if the row names one)
# and HTTP status (if the row names one) match, and whose test passes, decides. FCM's errorCode comes
# first: it is the most specific, and it is what Google documents. The rows by status alone cover an
# answer without FCM's detail (from Google's front ends, or a proxy on the way). What no row matches is
# RETRY for a 5xx and FAILED for anything else, with reason "http_<status>".
#
#   FCM errorCode              HTTP  test          kind           reason
_ERROR_TABLE: tuple[tuple[str | None, int | None, Callable[[FcmAnswer], bool], OutcomeKind, str], ...] = (
    # The app was uninstalled or the token expired (404): mark the token stale; the phone polls until it
    # registers a new one.
    ("UNREGISTERED",           None, _always,      INVALID_TOKEN, "UNREGISTERED"),
    # The token belongs to another Firebase project (403): stale too.
    ("SENDER_ID_MISMATCH",     None, _always,      INVALID_TOKEN, "SENDER_ID_MISMATCH"),
    # 400 about the token (malformed, not an FCM token): stale ...
    ("INVALID_ARGUMENT",       None, _about_token, INVALID_TOKEN, "INVALID_ARGUMENT"),
    # ... about anything else: our payload is wrong, and sending it again will not help.
    ("INVALID_ARGUMENT",       None, _always,      FAILED,        "INVALID_ARGUMENT"),
    # 429, the project's or this device's rate: again after Retry-After (else the worker's backoff).
    ("QUOTA_EXCEEDED",         None, _always,      RETRY,         "QUOTA_EXCEEDED"),
    # 503 and 500: Google's side; the worker retries with backoff, honouring Retry-After.
    ("UNAVAILABLE",            None, _always,      RETRY,         "UNAVAILABLE"),
    ("INTERNAL",               None, _always,      RETRY,         "INTERNAL"),
    # 401: the APNs certificate or key (or web-push credentials) in the Firebase console is wrong.
    # APNS_AUTH_ERROR is its older name.
    ("THIRD_PARTY_AUTH_ERROR", None, _always,      AUTH_ERROR,    "THIRD_PARTY_AUTH_ERROR"),
    ("APNS_AUTH_ERROR",        None, _always,      AUTH_ERROR,    "THIRD_PARTY_AUTH_ERROR"),
    # No FCM detail: by the status.
    (None,                     400,  _about_token, INVALID_TOKEN, "INVALID_ARGUMENT"),
    (None,                     400,  _always,      FAILED,        "INVALID_ARGUMENT"),
    # Our access token refused again after the one refresh and resend.
    (None,                     401,  _always,      AUTH_ERROR,    "UNAUTHENTICATED"),
    # The service account may not send for this project.
    (None,                     403,  _always,      AUTH_ERROR,    "PERMISSION_DENIED"),
    # No such project: the service account file names a project FCM does not know.
    (None,                     404,  _always,      AUTH_ERROR,    "NOT_FOUND"),
    (None,                     413,  _always,      FAILED,        "PAYLOAD_TOO_LARGE"),
    (None,                     429,  _always,      RETRY,         "RESOURCE_EXHAUSTED"),
    (None,                     500,  _always,      RETRY,         "INTERNAL"),
    (None,                     503,  _always,      RETRY,         "UNAVAILABLE"),
)


def classify(answer: FcmAnswer) -> Outcome:
    """The Outcome for an FCM answer, from `_ERROR_TABLE`."""
    if answer.status == 200:
        return Outcome(SENT, provider_id=answer.name)
    kind, reason = (RETRY if answer.status >= 500 else FAILED), f"http_{answer.status}"
    for row_code, row_status, test, row_kind, row_reason in _ERROR_TABLE:
        if (row_code in (None, answer.fcm_code) and row_status in (None, answer.status)
                and test(answer)):
            kind, reason = row_kind, row_reason
            break
    wait = retry_after_s(answer.retry_after) if kind is RETRY else None
    return Outcome(kind, reason, retry_after_s=wait)


def classify_failure(exc: BaseException) -> Outcome:
    """The Outcome for a send that got no answer from FCM: the token endpoint or the network failed."""
    if isinstance(exc, auth_errors.RefreshError):
        # Google's token endpoint said no. A retryable refusal (5xx, temporarily_unavailable) is transient;
        # any other (invalid_grant: the key was deleted or disabled, our clock is off) is our credential.
        if exc.retryable:
            return Outcome(RETRY, "token_endpoint")
        return Outcome(AUTH_ERROR, "credentials_refused")
    if isinstance(exc, auth_errors.TransportError):  # the token endpoint unreachable
        return Outcome(RETRY, "token_endpoint")
    if isinstance(exc, TimeoutError):  # aiohttp's own timeouts are TimeoutErrors too
        return Outcome(RETRY, "timeout")
    if isinstance(exc, aiohttp.ClientError | OSError):  # refused, reset, TLS failure, bad HTTP
        return Outcome(RETRY, "connection")
    return Outcome(FAILED, type(exc).__name__)


# ---------------------------------------------------------------------------------------------------------
# OAuth2 access token
# ---------------------------------------------------------------------------------------------------------


class _TimeoutRequest:
    """google-auth's requests transport with a bounded timeout for token requests."""

    def __init__(self) -> None:
        self._inner = google.auth.transport.requests.Request()

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: float | None = None, **kwargs: Any) -> Any:
        return self._inner(url, method=method, body=body, headers=headers,
                           timeout=timeout or TOKEN_TIMEOUT_S, **kwargs)


class AccessToken:
    """The service account's OAuth2 access token for FCM.

    google-auth refreshes synchronously (requests, with sleeps between its own retries), so the refresh
    runs in a worker thread, never on the event loop, and one at a time: every send that needs a token
    waits on the same refresh. It starts REFRESH_AHEAD_S before the token expires, while sends go on with
    the current one. This is what `Certificate.get_access_token()` does (refresh google-auth's credential,
    read its token and expiry), with a bounded timeout for the token request.
    """

    def __init__(self, credential: Any) -> None:
        self._credential = credential  # google.oauth2.service_account.Credentials, touched only in the thread
        self._request = _TimeoutRequest()
        self._value = ""
        self._expires_at = 0.0  # Unix seconds
        self._refresh: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._failed_at = -REFRESH_RETRY_S

    def __repr__(self) -> str:  # never the token
        return f"AccessToken(expires_at={self._expires_at:.0f})"

    async def get(self) -> str:
        """A token good for at least TOKEN_MIN_LEFT_S; raises what the token endpoint's refusal raised."""
        left = self._expires_at - time.time()
        if left < REFRESH_AHEAD_S:
            self._start_refresh()
        if left >= TOKEN_MIN_LEFT_S:
            return self._value
        if self._refresh is not None:
            # shield: a send that gives up (its deadline) does not cancel the refresh the others wait for.
            await asyncio.shield(self._refresh)
        if self._expires_at - time.time() < TOKEN_MIN_LEFT_S:
            # No token: the refresh failed now or within REFRESH_RETRY_S, or (our clock is off) it gave
            # a token that is already about to expire.
            failure = self._failure or auth_errors.RefreshError(  # type: ignore[no-untyped-call]
                "the token endpoint gave no usable access token")
            raise failure.with_traceback(None)
        return self._value

    def refused(self, token: str) -> None:
        """FCM refused `token` (401): the next `get` refreshes. Sends that saw the same token refused share
        that one refresh (a newer token is not dropped)."""
        if token == self._value:
            self._expires_at = 0.0
            self._failed_at = -REFRESH_RETRY_S

    def _start_refresh(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            return
        if time.monotonic() - self._failed_at < REFRESH_RETRY_S:
            return
        self._refresh = asyncio.get_running_loop().create_task(self._run(), name="fcm-token-refresh")

    async def _run(self) -> None:
        try:
            value, expires_at = await asyncio.to_thread(self._fetch)
        except Exception as exc:  # kept for the sends that need a token; a valid one stays in use
            self._failure, self._failed_at = exc, time.monotonic()
            log.warning("push_token_refresh_failed", provider="fcm", error=type(exc).__name__,
                        token_left_s=round(max(0.0, self._expires_at - time.time())))
            return
        self._value, self._expires_at, self._failure = value, expires_at, None

    def _fetch(self) -> tuple[str, float]:
        """In the worker thread."""
        credential = self._credential
        credential.refresh(self._request)
        expiry = credential.expiry  # naive UTC (google-auth's convention)
        expires_at = (expiry.replace(tzinfo=dt.UTC).timestamp() if isinstance(expiry, dt.datetime)
                      else time.time() + 3000)
        return str(credential.token), expires_at

    async def aclose(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            # A thread cannot be cancelled; let the refresh end (bounded by TOKEN_TIMEOUT_S per request).
            await asyncio.wait([self._refresh], timeout=TOKEN_TIMEOUT_S)


# ---------------------------------------------------------------------------------------------------------
# The provider
# ---------------------------------------------------------------------------------------------------------


class FcmProvider:
    """FCM HTTP v1, one request per push, from a pool of keep-alive connections."""

    name = "fcm"

    def __init__(self, credential: credentials.Certificate, *, concurrency: int) -> None:
        self._project_id: str = str(credential.project_id)
        self._url = f"{FCM_ENDPOINT}/v1/projects/{self._project_id}/messages:send"
        self._token = AccessToken(credential.get_credential())
        self._concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._auth_log = AuthErrorLog(self.name)
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
        if self._closed:
            return Outcome(RETRY, "provider_closed")
        if time.time() >= message.expires_at:
            return Outcome(FAILED, "expired")
        if not token:
            return Outcome(INVALID_TOKEN, "empty_token")
        deadline = min(message.expires_at - time.time(), SEND_TIMEOUT_S)
        try:
            async with asyncio.timeout(deadline):
                access = await self._token.get()
                async with self._slots:
                    answer = await self._post(access, token, message)
                    if answer.status == 401 and answer.fcm_code not in ("THIRD_PARTY_AUTH_ERROR",
                                                                        "APNS_AUTH_ERROR"):
                        self._token.refused(access)
                        access = await self._token.get()
                        answer = await self._post(access, token, message)
        except TimeoutError:
            if time.time() >= message.expires_at:
                return Outcome(FAILED, "expired")
            return Outcome(RETRY, "timeout")
        except Exception as exc:  # send never raises for a vendor or network failure
            return self._report(classify_failure(exc), str(exc))
        return self._report(classify(answer), answer.message)

    async def _post(self, access: str, token: str, message: PushMessage) -> FcmAnswer:
        session = self._session or self._open()
        headers = {"Authorization": f"Bearer {access}", "Content-Type": "application/json; charset=UTF-8"}
        for resend in (False, True):
            body = _body(token, message)  # the ttl is taken as the request leaves, after any wait
            try:
                async with session.post(self._url, data=body, headers=headers) as response:
                    raw = await response.read()
                    return FcmAnswer.parse(response.status, raw, response.headers.get("Retry-After"))
            except aiohttp.ServerDisconnectedError:
                if resend:
                    raise
        raise AssertionError("unreachable")

    def _open(self) -> aiohttp.ClientSession:
        # Built on the first send, inside the running loop. The default SSL context verifies Google's
        # certificate against the system's store (SSL_CERT_FILE where set) and offers only HTTP/1.1.
        tls = ssl.create_default_context()
        tls.set_alpn_protocols(["http/1.1"])
        connector = aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=self._concurrency,
                                         keepalive_timeout=KEEPALIVE_S, ssl=tls, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None),  # `send` owns the deadline
            headers={"User-Agent": f"pushauth/{__version__}"}, skip_auto_headers=("Accept-Encoding",),
            raise_for_status=False, trust_env=False)
        return self._session

    def _report(self, outcome: Outcome, detail: str) -> Outcome:
        if outcome.kind is AUTH_ERROR:
            # Loud: every push through this provider fails until an operator fixes the credentials. FCM's
            # message is about our service account or project, never about a device.
            self._auth_log.error(outcome.reason, project_id=self._project_id, detail=detail[:300])
        elif outcome.kind is not SENT:
            log.debug("push_send_failed", provider=self.name, kind=outcome.kind.value, reason=outcome.reason)
        return outcome

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._token.aclose()
        if self._session is not None:
            await self._session.close()


def _body(token: str, message: PushMessage) -> bytes:
    """The request body: the contract's data, Android high priority, and a ttl that ends before the
    challenge does. FCM counts the ttl from when the message reaches Google, so TRANSIT_MARGIN_S for the
    trip comes off and it is rounded down. (Without the margin a 44 s ttl taken at 44.02 s left arrived with
    43.97 s left.)"""
    ttl = max(0, int(message.expires_at - time.time() - TRANSIT_MARGIN_S))
    return msgspec.json.encode({"message": {"token": token, "data": message.data(),
                                            "android": {"priority": "high", "ttl": f"{ttl}s"}}})

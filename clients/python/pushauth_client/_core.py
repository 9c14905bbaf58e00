"""Everything the sync and the async client share, written once, without I/O.

Each operation is a generator that yields what it needs done, a `Request` to send or a `Sleep`, and gets
the outcome sent back (an `httpx.Response`, or the `httpx.TransportError` the send raised). `Client` and
`AsyncClient` are two small drivers of the same generators, so the retry rules, the wait loop, the JWKS
cache and the assertion checks cannot drift apart between them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from pushauth_client import jws
from pushauth_client.errors import (
    APIError,
    InvalidAssertion,
    ProtocolError,
    RateLimited,
    TransportError,
    Unavailable,
    error_class,
)
from pushauth_client.models import (
    AccessCodeResult,
    Allowed,
    AssertionClaims,
    ChallengeStatus,
    Pending,
    canonical_user,
    parse_access_code,
    parse_created,
    parse_status,
)

log = logging.getLogger("pushauth_client")

T = TypeVar("T")
ASSERTION_TYP = "pushauth-assertion+jwt"
JWKS_PATH = "/.well-known/jwks.json"
# PROTOCOL.md 11.5: iat and exp are checked with a skew of at most 60 s.
CLOCK_SKEW_S = 60
# Jitter only spreads clients out (PROTOCOL.md 2.7); it guards nothing, so any generator would do.
_jitter = random.SystemRandom()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    json: dict[str, Any] | None = None
    timeout_s: float | None = None
    auth: bool = True


@dataclass(frozen=True)
class Sleep:
    seconds: float


Action = Request | Sleep
Outcome = httpx.Response | httpx.TransportError | None
Op = Generator[Action, Outcome, T]


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a call tries before it raises.

    `retries`: further attempts after a 503, a 429 (where retrying is allowed) or a connection error, for
    every call but `wait` (which retries until its own timeout). `max_retry_after_s`: a Retry-After longer
    than this is not slept through but raised (RateLimited/Unavailable, with `retry_after`): a sign-in page
    must not hang for minutes. Backoff without a Retry-After: `backoff_s` doubling up to `max_backoff_s`,
    each sleep with up to half of it taken off at random."""

    retries: int = 3
    max_retry_after_s: float = 10.0
    backoff_s: float = 0.2
    max_backoff_s: float = 2.0

    def backoff(self, attempt: int) -> float:
        delay: float = min(self.max_backoff_s, self.backoff_s * 2.0 ** min(attempt, 16))
        return delay * _jitter.uniform(0.5, 1.0)


class Core:
    def __init__(self, base_url: str, api_key: str, *, application_id: str, issuer: str | None,
                 retry: RetryPolicy, max_wait_s: int, jwks_min_refresh_s: float, jwks_max_age_s: float,
                 clock: Callable[[], float]) -> None:
        if not base_url.startswith(("https://", "http://")):
            raise ValueError("base_url must be an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.application_id = application_id
        self.issuer = (issuer or self.base_url).rstrip("/")
        self.retry = retry
        self.max_wait_s = max_wait_s
        self.clock = clock
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._keys: dict[str, ec.EllipticCurvePublicKey] | None = None
        self._keys_fetched_at = 0.0
        self._refreshed_at: float | None = None
        self._jwks_min_refresh_s = jwks_min_refresh_s
        self._jwks_max_age_s = jwks_max_age_s
        # jti -> exp of every assertion verified, until its exp (PROTOCOL.md 11.5 step 5, single use).
        self._used: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"base_url={self.base_url!r}, application_id={self.application_id!r}"

    def headers(self, request: Request) -> dict[str, str]:
        # The JWKS is public: the API key goes only where it is needed.
        return dict(self._auth) if request.auth else {}

    # -- one call, with its retries ------------------------------------------------------------------------

    def call(self, request: Request, *, retry_429: bool = True, idempotent: bool = True,
             deadline: float | None = None) -> Op[tuple[int, dict[str, Any]]]:
        """Send `request` until it gets an answer that is not a 503 (nor a 429, with `retry_429`), within
        `retry.retries` further attempts or, given a `deadline` (time.monotonic), until then.

        A request that is not `idempotent` is sent again after a connection error only when it cannot have
        reached the server (the connection was never made): a lost answer to a POST /v1/challenges must not
        become a second prompt on the user's phone."""
        attempt = 0
        while True:
            outcome = yield request
            error: Exception
            if isinstance(outcome, httpx.TransportError):
                error = TransportError(f"cannot reach {self.base_url}: {type(outcome).__name__}")
                error.__cause__ = outcome
                if not idempotent and not isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout):
                    raise error
                delay = self.retry.backoff(attempt)
            elif isinstance(outcome, httpx.Response):
                if outcome.status_code < 400:
                    return outcome.status_code, _json_object(outcome)
                api_error = _api_error(outcome)
                retryable = isinstance(api_error, Unavailable) or (
                    retry_429 and isinstance(api_error, RateLimited))
                if not retryable:
                    raise api_error
                if api_error.retry_after is None:
                    delay = self.retry.backoff(attempt)
                elif deadline is None and api_error.retry_after > self.retry.max_retry_after_s:
                    # (With a deadline, as in wait, the deadline alone bounds it.)
                    raise api_error
                else:
                    # Never sooner than Retry-After (2.7), plus a little so clients do not come back in step.
                    delay = api_error.retry_after + _jitter.uniform(0.0, 0.1 * api_error.retry_after)
                error = api_error
            else:
                raise RuntimeError("the driver sent no outcome for a request")
            attempt += 1
            if deadline is None:
                if attempt > self.retry.retries:
                    raise error
            elif time.monotonic() + delay >= deadline:
                raise error
            log.info("pushauth_retry method=%s path=%s after=%s in_s=%.2f attempt=%d", request.method,
                     _path_only(request.path), _what(outcome), delay, attempt)
            yield Sleep(delay)

    # -- the login flow ------------------------------------------------------------------------------------

    def create(self, user: str, *, context: Mapping[str, str] | None, ttl_s: int | None,
               browser_id: str | None, remember_token: str | None) -> Op[Pending | Allowed]:
        body: dict[str, Any] = {"user": user}
        if context is not None:
            body["context"] = dict(context)
        for name, value in (("ttl_s", ttl_s), ("browser_id", browser_id), ("remember_token", remember_token)):
            if value is not None:
                body[name] = value
        # A 429 here may be the user's push-bombing limit: PROTOCOL.md 11.1 says never to retry it blindly.
        status, data = yield from self.call(Request("POST", "/v1/challenges", body), retry_429=False,
                                            idempotent=False)
        return parse_created(status, data)

    def status(self, challenge_id: str, *, wait_s: int = 0, deadline: float | None = None,
               ) -> Op[ChallengeStatus]:
        # The HTTP timeout a few seconds above the long-poll's own (11.3).
        request = Request("GET", f"/v1/challenges/{_seg(challenge_id)}?wait={wait_s}", timeout_s=wait_s + 5.0)
        _, data = yield from self.call(request, deadline=deadline)
        return parse_status(data)

    def wait(self, challenge_id: str, *, timeout_s: float) -> Op[ChallengeStatus]:
        """Long-poll until the challenge is decided or expired, or `timeout_s` passes (then the last, pending,
        status). Connection errors, 503s and 429s are waited out until then: a server restarting, or
        another instance taking over, mid-wait loses nothing, since the answer is in the store."""
        deadline = time.monotonic() + timeout_s
        while True:
            wait_s = max(0, min(self.max_wait_s, int(deadline - time.monotonic())))
            current = yield from self.status(challenge_id, wait_s=wait_s, deadline=deadline)
            # A pending answer before `wait` is up happens too (a server shutting down): just ask again.
            if not current.pending or wait_s == 0 or time.monotonic() >= deadline:
                return current

    def cancel(self, challenge_id: str) -> Op[None]:
        yield from self.call(Request("DELETE", f"/v1/challenges/{_seg(challenge_id)}"))

    def verify_access_code(self, user: str, code: str) -> Op[AccessCodeResult]:
        # Not idempotent (a valid code is consumed), and a 429 is the user's lockout count, not a quota.
        request = Request("POST", "/v1/access-codes/verify", {"user": user, "code": code})
        _, data = yield from self.call(request, retry_429=False, idempotent=False)
        return parse_access_code(data)

    def revoke_remembered(self, remember_token: str) -> Op[bool]:
        _, data = yield from self.call(Request("POST", "/v1/remembered/revoke",
                                               {"remember_token": remember_token}))
        return data.get("revoked") == 1

    def password_reset(self, user: str) -> Op[int]:
        _, data = yield from self.call(Request("POST", "/v1/signals/password-reset", {"user": user}))
        revoked = data.get("revoked")
        if type(revoked) is not int:
            raise ProtocolError("the password-reset answer has no integer 'revoked'")
        return revoked

    # -- assertions ----------------------------------------------------------------------------------------

    def server_keys(self, kid: str | None = None) -> Op[dict[str, ec.EllipticCurvePublicKey]]:
        """The cached JWKS; fetched when there is none or it is older than jwks_max_age_s (a retired key
        must not be trusted forever), and once more for a `kid` it does not hold (a rotation), but not more
        often than every jwks_min_refresh_s: tokens with made-up kids must not turn into a fetch each."""
        now = time.monotonic()
        stale = self._keys is None or now - self._keys_fetched_at > self._jwks_max_age_s
        unknown = kid is not None and self._keys is not None and kid not in self._keys and (
            self._refreshed_at is None or now - self._refreshed_at >= self._jwks_min_refresh_s)
        if stale or unknown:
            if unknown:
                self._refreshed_at = now
            _, data = yield from self.call(Request("GET", JWKS_PATH, auth=False))
            self._keys, self._keys_fetched_at = jws.import_jwks(data), now
        assert self._keys is not None
        return self._keys

    def verify_assertion(self, token: str, *, challenge_id: str, user: str) -> Op[AssertionClaims]:
        """PROTOCOL.md 11.5, every step: header, key by kid, ES256, claims, single use."""
        header = jws.read_header(token, typ=ASSERTION_TYP)
        keys = yield from self.server_keys(header["kid"])
        key = keys.get(header["kid"])
        if key is None:
            raise InvalidAssertion("the assertion is signed by a key the server does not publish")
        claims = jws.verify(token, key)
        now = int(self.clock())
        expected = {"iss": self.issuer, "aud": self.application_id, "sub": canonical_user(user),
                    "jti": challenge_id, "result": "approved"}
        for name, value in expected.items():
            if claims.get(name) != value:
                raise InvalidAssertion(f"the assertion's {name} is not {value!r}")
        iat, exp, auth_time = claims.get("iat"), claims.get("exp"), claims.get("auth_time")
        if type(iat) is not int or type(exp) is not int:
            raise InvalidAssertion("the assertion's iat and exp must be integers")
        if exp <= now - CLOCK_SKEW_S:
            raise InvalidAssertion("the assertion has expired")
        if iat > now + CLOCK_SKEW_S:
            raise InvalidAssertion("the assertion is issued in the future")
        self._used = {jti: until for jti, until in self._used.items() if until > now - CLOCK_SKEW_S}
        if challenge_id in self._used:
            raise InvalidAssertion("this challenge's assertion was used already")
        self._used[challenge_id] = exp
        device = claims.get("device")
        return AssertionClaims(user=expected["sub"], challenge_id=challenge_id,
                               application=self.application_id, issuer=self.issuer, issued_at=iat,
                               expires_at=exp,
                               auth_time=auth_time if type(auth_time) is int else None,
                               device=device if isinstance(device, str) else None)


def _seg(value: str) -> str:
    """One path segment, percent-encoded so an id can never change the path it is put into."""
    return quote(value, safe="")


def _path_only(path: str) -> str:
    return path.split("?", 1)[0]


def _what(outcome: Outcome) -> str:
    if isinstance(outcome, httpx.Response):
        return str(outcome.status_code)
    return type(outcome).__name__


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    # An integer of at least 1 by the contract (2.7); an HTTP-date or garbage is treated as absent.
    return float(value) if value.isdigit() else None


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError as exc:
        raise ProtocolError(f"the server answered {response.status_code} without JSON") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"the server answered {response.status_code} without a JSON object")
    return data


def _api_error(response: httpx.Response) -> APIError:
    try:
        data = response.json()
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    message = data.get("message") if isinstance(data, dict) else None
    code = error if isinstance(error, str) else "unknown"
    cls = error_class(response.status_code, code)
    return cls(response.status_code, code, message if isinstance(message, str) else "",
               request_id=response.headers.get("X-Request-Id"), retry_after=_retry_after(response))

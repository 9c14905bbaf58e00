"""`Client` (sync) and `AsyncClient`: two drivers of the operations in `_core`, one method each.

A driver sends each `Request` an operation yields with its own httpx client, sleeps each `Sleep`, and sends
the outcome back in; that is all that differs between sync and async code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx

from pushauth_client._core import Core, Op, Outcome, Request, RetryPolicy, Sleep
from pushauth_client._version import __version__
from pushauth_client.models import AccessCodeResult, Allowed, AssertionClaims, ChallengeStatus, Pending

T = TypeVar("T")
USER_AGENT = f"pushauth-client/{__version__}"


def _result(stop: StopIteration) -> Any:
    return stop.value


class _Base:
    def __init__(self, base_url: str, api_key: str, *, application_id: str, issuer: str | None = None,
                 timeout_s: float = 10.0, retry: RetryPolicy | None = None, max_wait_s: int = 30,
                 jwks_min_refresh_s: float = 10.0, jwks_max_age_s: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        """`base_url`: the server (`https://pushauth.example.org`). `api_key`: this application's key, sent
        only as `Authorization: Bearer` to the login-flow calls and never shown in a repr or a log.
        `application_id`: the application the key belongs to (an assertion's `aud` must be it). `issuer`:
        the server's own base_url, if the client reaches it by another URL (an assertion's `iss`).
        `max_wait_s`: the server's `server.max_wait_s` (30 by default), the longest single long-poll."""
        self._core = Core(base_url, api_key, application_id=application_id, issuer=issuer,
                          retry=retry or RetryPolicy(), max_wait_s=max_wait_s,
                          jwks_min_refresh_s=jwks_min_refresh_s, jwks_max_age_s=jwks_max_age_s, clock=clock)
        self._timeout_s = timeout_s

    def __repr__(self) -> str:  # never the API key
        return f"{type(self).__name__}({self._core!r})"

    @property
    def base_url(self) -> str:
        return self._core.base_url

    def _httpx_args(self) -> dict[str, Any]:
        return {"base_url": self._core.base_url, "timeout": self._timeout_s,
                "headers": {"User-Agent": USER_AGENT}, "follow_redirects": False}

    def _timeout(self, request: Request) -> float:
        return request.timeout_s if request.timeout_s is not None else self._timeout_s


class Client(_Base):
    """The login flow's side of pushauth (PROTOCOL.md 11), for synchronous code. Thread-safe as httpx is;
    use it as a context manager, or close() it."""

    def __init__(self, base_url: str, api_key: str, *, application_id: str,
                 transport: httpx.BaseTransport | None = None, **options: Any) -> None:
        super().__init__(base_url, api_key, application_id=application_id, **options)
        self._http = httpx.Client(transport=transport, **self._httpx_args())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, op: Op[T]) -> T:
        outcome: Outcome = None
        try:
            while True:
                action = op.send(outcome)
                if isinstance(action, Sleep):
                    time.sleep(action.seconds)
                    outcome = None
                    continue
                try:
                    outcome = self._http.request(action.method, action.path, json=action.json,
                                                 headers=self._core.headers(action),
                                                 timeout=self._timeout(action))
                except httpx.TransportError as exc:
                    outcome = exc
        except StopIteration as done:
            result: T = _result(done)
            return result

    def create(self, user: str, *, context: Mapping[str, str] | None = None, ttl_s: int | None = None,
               browser_id: str | None = None, remember_token: str | None = None) -> Pending | Allowed:
        """Ask for the user's approval: `Pending` (show its `number`, then `wait`) or `Allowed` (no prompt:
        sign them in). `context`: `ip`, `user_agent`, `location` of the browser signing in. `browser_id` and
        `remember_token`: remembered browsers (PROTOCOL.md 11.7). Raises Locked, Suspended, NotEnrolled,
        RateLimited (the user's push-bombing limit: tell them to try again shortly) and the like."""
        return self._run(self._core.create(user, context=context, ttl_s=ttl_s, browser_id=browser_id,
                                           remember_token=remember_token))

    def status(self, challenge_id: str) -> ChallengeStatus:
        """The challenge as it is now, without waiting."""
        return self._run(self._core.status(challenge_id))

    def wait(self, challenge_id: str, *, timeout_s: float) -> ChallengeStatus:
        """Long-poll until the challenge is decided or expired, or `timeout_s` passes (then it is still
        pending). Connection errors, 503 and 429 are waited out until then."""
        return self._run(self._core.wait(challenge_id, timeout_s=timeout_s))

    def cancel(self, challenge_id: str) -> None:
        """Withdraw a pending prompt (the user left the page); AlreadyDecided, ChallengeExpired: too late."""
        self._run(self._core.cancel(challenge_id))

    def verify_assertion(self, token: str, *, challenge_id: str, user: str) -> AssertionClaims:
        """Check an approval's assertion (PROTOCOL.md 11.5) against the server's JWKS; raises
        InvalidAssertion. Single use: a second verification for the same challenge is refused."""
        return self._run(self._core.verify_assertion(token, challenge_id=challenge_id, user=user))

    def verify_access_code(self, user: str, code: str) -> AccessCodeResult:
        """A temporary access code the security team gave the user (PROTOCOL.md 11.8); used up if valid."""
        return self._run(self._core.verify_access_code(user, code))

    def revoke_remembered(self, remember_token: str) -> bool:
        """Forget one remembered browser. True if a remembered browser was forgotten."""
        return self._run(self._core.revoke_remembered(remember_token))

    def password_reset(self, user: str) -> int:
        """The user's password was reset: every remembered browser of theirs prompts again."""
        return self._run(self._core.password_reset(user))


class AsyncClient(_Base):
    """The same as `Client`, for asyncio code: every method is a coroutine."""

    def __init__(self, base_url: str, api_key: str, *, application_id: str,
                 transport: httpx.AsyncBaseTransport | None = None, **options: Any) -> None:
        super().__init__(base_url, api_key, application_id=application_id, **options)
        self._http = httpx.AsyncClient(transport=transport, **self._httpx_args())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, op: Op[T]) -> T:
        outcome: Outcome = None
        try:
            while True:
                action = op.send(outcome)
                if isinstance(action, Sleep):
                    await asyncio.sleep(action.seconds)
                    outcome = None
                    continue
                try:
                    outcome = await self._http.request(action.method, action.path, json=action.json,
                                                       headers=self._core.headers(action),
                                                       timeout=self._timeout(action))
                except httpx.TransportError as exc:
                    outcome = exc
        except StopIteration as done:
            result: T = _result(done)
            return result

    async def create(self, user: str, *, context: Mapping[str, str] | None = None, ttl_s: int | None = None,
                     browser_id: str | None = None, remember_token: str | None = None) -> Pending | Allowed:
        """See Client.create."""
        return await self._run(self._core.create(user, context=context, ttl_s=ttl_s, browser_id=browser_id,
                                                 remember_token=remember_token))

    async def status(self, challenge_id: str) -> ChallengeStatus:
        return await self._run(self._core.status(challenge_id))

    async def wait(self, challenge_id: str, *, timeout_s: float) -> ChallengeStatus:
        """See Client.wait."""
        return await self._run(self._core.wait(challenge_id, timeout_s=timeout_s))

    async def cancel(self, challenge_id: str) -> None:
        await self._run(self._core.cancel(challenge_id))

    async def verify_assertion(self, token: str, *, challenge_id: str, user: str) -> AssertionClaims:
        """See Client.verify_assertion."""
        return await self._run(self._core.verify_assertion(token, challenge_id=challenge_id, user=user))

    async def verify_access_code(self, user: str, code: str) -> AccessCodeResult:
        return await self._run(self._core.verify_access_code(user, code))

    async def revoke_remembered(self, remember_token: str) -> bool:
        return await self._run(self._core.revoke_remembered(remember_token))

    async def password_reset(self, user: str) -> int:
        return await self._run(self._core.password_reset(user))

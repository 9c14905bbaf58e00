"""The login-flow client library (clients/python, `pushauth-client`) against a real server and Redis.

The library is its own package with its own pyproject.toml; the root virtualenv does not install it. It is
imported from its source folder (sys.path, below), so the tests always run the checkout's code and the
root venv stays as `make venv` builds it. (httpx, its one dependency besides cryptography, is already in
the root venv.)

The sync `Client` is driven in a worker thread (`asyncio.to_thread`): the server under test runs on this
test's event loop, which a blocking call on it would stall.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import httpx
import pytest
from aiohttp import web
from joserfc.jwk import ECKey
from support import (
    ADMIN_TOKEN,
    API_KEY,
    LoginFlow,
    RunningServer,
    free_port,
    make_settings,
    start_server,
)

from pushauth.crypto.jws import sign as sign_jws
from pushauth.crypto.jws import thumbprint as jws_thumbprint
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.keys import KeyRing
from pushauth.phone import Phone

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients" / "python"))

import pushauth_client as pa
from pushauth_client.jws import b64url_decode

if TYPE_CHECKING:  # only a type here: a module holding RedisServer is all integration (conftest.py)
    from testkit.redis_server import RedisServer

T = TypeVar("T")
USER = "alice@nhs.net"
VECTORS = Path(__file__).parent / "vectors"


class Rp:
    """One login flow through either client, as coroutines: AsyncClient's methods directly, Client's in a
    thread. The tests that matter for both run once with each."""

    def __init__(self, client: pa.Client | pa.AsyncClient) -> None:
        self.client = client

    async def _do(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.client, name)
        if isinstance(self.client, pa.AsyncClient):
            return await method(*args, **kwargs)
        return await asyncio.to_thread(method, *args, **kwargs)

    async def create(self, user: str, **kwargs: Any) -> pa.Pending | pa.Allowed:
        result: pa.Pending | pa.Allowed = await self._do("create", user, **kwargs)
        return result

    async def pending(self, user: str, **kwargs: Any) -> pa.Pending:
        created = await self.create(user, **kwargs)
        assert isinstance(created, pa.Pending), created
        return created

    async def wait(self, cid: str, timeout_s: float = 20) -> pa.ChallengeStatus:
        result: pa.ChallengeStatus = await self._do("wait", cid, timeout_s=timeout_s)
        return result

    async def status(self, cid: str) -> pa.ChallengeStatus:
        result: pa.ChallengeStatus = await self._do("status", cid)
        return result

    async def cancel(self, cid: str) -> None:
        await self._do("cancel", cid)

    async def verify(self, token: str, cid: str, user: str = USER) -> pa.AssertionClaims:
        result: pa.AssertionClaims = await self._do("verify_assertion", token, challenge_id=cid, user=user)
        return result

    async def access_code(self, user: str, code: str) -> pa.AccessCodeResult:
        result: pa.AccessCodeResult = await self._do("verify_access_code", user, code)
        return result

    async def revoke(self, token: str) -> bool:
        result: bool = await self._do("revoke_remembered", token)
        return result

    async def close(self) -> None:
        if isinstance(self.client, pa.AsyncClient):
            await self.client.aclose()
        else:
            self.client.close()


def make_client(kind: str, url: str, api_key: str = API_KEY, **options: Any) -> pa.Client | pa.AsyncClient:
    if kind == "async":
        return pa.AsyncClient(url, api_key, application_id="webmail", **options)
    return pa.Client(url, api_key, application_id="webmail", **options)


@pytest.fixture(params=["sync", "async"])
async def rp(request: pytest.FixtureRequest, server: RunningServer) -> AsyncIterator[Rp]:
    flow = Rp(make_client(request.param, server.url))
    yield flow
    await flow.close()


@pytest.fixture
async def alice(http: aiohttp.ClientSession, server: RunningServer) -> Phone:
    return await Phone.enroll(await LoginFlow(http, server.url).enroll_uri(USER), session=http)


async def while_waiting(wait: Awaitable[T], act: Callable[[], Awaitable[object]], *,
                        after_s: float = 0.3) -> T:
    """Start `wait`, let it settle into its long-poll, then `act` (the phone answers): what a login page
    sees, the answer arriving mid-wait rather than before it."""
    task: asyncio.Task[T] = asyncio.ensure_future(wait)
    await asyncio.sleep(after_s)
    assert not task.done(), "the wait returned before anything happened"
    await act()
    return await asyncio.wait_for(task, 25)


# -- sign-ins ----------------------------------------------------------------------------------------------


async def test_approve_gives_an_assertion_that_verifies_once(rp: Rp, alice: Phone) -> None:
    created = await rp.pending(USER, context={"ip": "203.0.113.9", "user_agent": "Mozilla/5.0"})
    assert created.number is not None
    assert re.fullmatch(r"\d{2}", created.number)  # challenges.number_digits, zero-padded
    decided = await while_waiting(rp.wait(created.id), lambda: alice.approve(created.id, created.number))
    assert decided.status == "approved"
    assert decided.approved
    assert (decided.user, decided.device) == (USER, alice.device_id)
    assert decided.assertion is not None
    claims = await rp.verify(decided.assertion, created.id, user="  Alice@NHS.net ")  # compared canonically
    assert (claims.user, claims.challenge_id, claims.application, claims.device) == (
        USER, created.id, "webmail", alice.device_id)
    # Single use (PROTOCOL.md 11.5 step 5): the jti is what is used up, even in a freshly signed copy.
    again = await rp.status(created.id)
    assert again.assertion is not None
    assert again.assertion != decided.assertion
    with pytest.raises(pa.InvalidAssertion, match="used already"):
        await rp.verify(again.assertion, created.id)


async def test_deny_is_a_refusal_with_its_reason(rp: Rp, alice: Phone) -> None:
    created = await rp.pending(USER)
    decided = await while_waiting(rp.wait(created.id), lambda: alice.deny(created.id, reason="mistake"))
    assert (decided.status, decided.reason, decided.approved) == ("denied", "mistake", False)
    assert decided.assertion is None


async def test_the_wrong_number_is_a_denial(rp: Rp, alice: Phone) -> None:
    created = await rp.pending(USER)
    assert created.number is not None
    wrong = f"{(int(created.number) + 1) % 100:02d}"
    decided = await while_waiting(rp.wait(created.id), lambda: alice.approve(created.id, wrong))
    assert (decided.status, decided.reason, decided.assertion) == ("denied", "wrong_number", None)


async def test_an_assertion_for_another_challenge_or_user_is_refused(rp: Rp, alice: Phone) -> None:
    first, second = await rp.pending(USER), await rp.pending(USER)
    assert await alice.approve(first.id, first.number) == "approved"
    decided = await rp.wait(first.id)
    assert decided.assertion is not None
    with pytest.raises(pa.InvalidAssertion, match="jti"):
        await rp.verify(decided.assertion, second.id)
    with pytest.raises(pa.InvalidAssertion, match="sub"):
        await rp.verify(decided.assertion, first.id, user="bob@nhs.net")


async def test_cancel_withdraws_the_prompt(rp: Rp, alice: Phone) -> None:
    created = await rp.pending(USER)
    await rp.cancel(created.id)
    assert (await rp.wait(created.id, timeout_s=5)).status == "cancelled"
    with pytest.raises(pa.AlreadyDecided) as caught:
        await rp.cancel(created.id)
    assert (caught.value.status, caught.value.error) == (409, "already_decided")
    assert caught.value.request_id


async def test_wait_returns_pending_at_its_own_timeout(rp: Rp, alice: Phone) -> None:
    created = await rp.pending(USER)
    started = time.monotonic()
    status = await rp.wait(created.id, timeout_s=1.5)
    assert status.pending
    assert 1.0 <= time.monotonic() - started < 5


async def test_remember_token_round_trip(rp: Rp, alice: Phone) -> None:
    browser = "browser-7f3a9c1e5b2d4f60a8c3e1d9b7f5a3c1"
    created = await rp.pending(USER, browser_id=browser)
    assert await alice.approve(created.id, created.number) == "approved"
    decided = await rp.wait(created.id)
    token = decided.remember_token
    assert token is not None
    assert token not in repr(decided)
    assert decided.assertion is not None
    assert decided.assertion not in repr(decided)
    # The next sign-in from that browser: no prompt.
    again = await rp.create(USER, browser_id=browser, remember_token=token)
    assert again == pa.Allowed(reason="remembered")
    # The token is bound to its browser: another browser id is prompted.
    other = await rp.create(USER, browser_id="another-browser-0001", remember_token=token)
    assert isinstance(other, pa.Pending)
    # "Forget this computer".
    assert await rp.revoke(token) is True
    assert isinstance(await rp.create(USER, browser_id=browser, remember_token=token), pa.Pending)


async def test_access_code(rp: Rp, alice: Phone, http: aiohttp.ClientSession,
                           server: RunningServer) -> None:
    async with http.post(f"{server.url}/v1/users/{USER}/access-codes",
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        assert resp.status == 201
        code = str((await resp.json())["code"])
    assert await rp.access_code(USER, "2345-6789-ABCD") == pa.AccessCodeResult(valid=False, reason="invalid")
    result = await rp.access_code(USER, code.lower().replace("-", " "))
    assert result.valid
    assert bool(result)
    assert not await rp.access_code(USER, code)  # single use
    assert (await rp.access_code("nobody@nhs.net", code)).reason in {"invalid", "unknown_user"}


# -- typed errors ------------------------------------------------------------------------------------------


async def test_errors_are_typed(rp: Rp) -> None:
    with pytest.raises(pa.NotEnrolled) as not_enrolled:
        await rp.create("nobody@nhs.net")
    assert isinstance(not_enrolled.value, pa.Forbidden)
    assert (not_enrolled.value.status, not_enrolled.value.error) == (403, "not_enrolled")
    with pytest.raises(pa.InvalidUser):
        await rp.create("\u200b")
    with pytest.raises(pa.InvalidTTL):
        await rp.create(USER, ttl_s=5)
    with pytest.raises(pa.NotFound):
        await rp.status("c" + "a" * 42)
    with pytest.raises(pa.NotFound):
        await rp.wait("c" + "a" * 42, timeout_s=5)
    # Every one of them is a PushAuthClientError, and an APIError with the contract's fields.
    with pytest.raises(pa.PushAuthClientError):
        await rp.cancel("c" + "a" * 42)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_unknown_api_key_is_unauthorized_and_never_shown(kind: str, server: RunningServer,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = "not-a-key-of-any-application-1234567890"
    flow = Rp(make_client(kind, server.url, api_key=key))
    try:
        with pytest.raises(pa.Unauthorized) as caught:
            await flow.create(USER)
    finally:
        await flow.close()
    assert (caught.value.status, caught.value.error) == (401, "unauthorized")
    assert key not in repr(flow.client)
    assert key not in str(caught.value)
    assert key not in caplog.text


async def test_an_exempt_account_is_allowed_without_a_prompt(redis_url: str, keyring: KeyRingHolder) -> None:
    running = await start_server(make_settings(redis_url, free_port(), policy={"exempt": ["svc@nhs.net"]}),
                                 keyring)
    try:
        async with pa.AsyncClient(running.url, API_KEY, application_id="webmail") as client:
            assert await client.create("SVC@nhs.net") == pa.Allowed(reason="exempt", account="exempt")
    finally:
        await running.close()


async def test_an_unreachable_server_is_a_transport_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    retry = pa.RetryPolicy(retries=2, backoff_s=0.01)
    async with pa.AsyncClient(url, API_KEY, application_id="webmail", retry=retry) as client:
        with pytest.raises(pa.TransportError):
            await client.status("c" + "a" * 42)
        with pytest.raises(pa.TransportError):
            await client.wait("c" + "a" * 42, timeout_s=0.5)


# -- resilience ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_wait_survives_a_server_restart(kind: str, redis_url: str, keyring: KeyRingHolder,
                                                http: aiohttp.ClientSession,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pushauth_client")
    port = free_port()
    settings = make_settings(redis_url, port)
    first = await start_server(settings, keyring)
    flow = Rp(make_client(kind, first.url, retry=pa.RetryPolicy(max_backoff_s=0.5)))
    second: RunningServer | None = None
    try:
        phone = await Phone.enroll(await LoginFlow(http, first.url).enroll_uri(USER), session=http)
        created = await flow.pending(USER)
        waiting = asyncio.ensure_future(flow.wait(created.id, timeout_s=25))
        await asyncio.sleep(0.5)
        await first.close()  # mid long-poll: the client sees an early answer or a dropped connection
        await asyncio.sleep(1.0)  # ... then connection refused, for a while
        assert not waiting.done()
        second = await start_server(settings, keyring)  # the same port and Redis
        assert await phone.approve(created.id, created.number) == "approved"
        decided = await asyncio.wait_for(waiting, 20)
        assert decided.status == "approved"
        assert decided.assertion is not None
        assert (await flow.verify(decided.assertion, created.id)).challenge_id == created.id
        # It did meet the server gone (and came back for the answer), not merely a long-poll that outlived it.
        assert "after=ConnectError" in caplog.text
    finally:
        await flow.close()
        if second is not None:
            await second.close()


async def test_a_wait_survives_a_redis_outage(private_redis: RedisServer, keyring: KeyRingHolder,
                                              http: aiohttp.ClientSession,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pushauth_client")
    running = await start_server(make_settings(private_redis.url, free_port()), keyring)
    try:
        async with pa.AsyncClient(running.url, API_KEY, application_id="webmail") as client:
            phone = await Phone.enroll(await LoginFlow(http, running.url).enroll_uri(USER), session=http)
            created = await client.create(USER)
            assert isinstance(created, pa.Pending)
            waiting = asyncio.ensure_future(client.wait(created.id, timeout_s=25))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(private_redis.stop)
            # Meanwhile a call that will not wait it out: 503 unavailable, with the contract's Retry-After.
            async with pa.AsyncClient(running.url, API_KEY, application_id="webmail",
                                      retry=pa.RetryPolicy(retries=0)) as impatient:
                with pytest.raises(pa.Unavailable) as down:
                    await impatient.status(created.id)
            assert (down.value.status, down.value.error, down.value.retry_after) == (503, "unavailable", 2)
            await asyncio.sleep(1.0)
            assert not waiting.done()
            await asyncio.to_thread(private_redis.start)  # the same port; the AOF brings the challenge back
            assert await phone.approve(created.id, created.number) == "approved"
            decided = await asyncio.wait_for(waiting, 20)
            assert decided.status == "approved"
            assert decided.assertion is not None
            await client.verify_assertion(decided.assertion, challenge_id=created.id, user=USER)
    finally:
        await running.close()
    assert "after=503" in caplog.text


class CountingTransport(httpx.AsyncBaseTransport):
    """The real transport, counting the requests per path: how many times the JWKS was fetched."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_key_rotation_refreshes_the_jwks_once(redis_url: str, http: aiohttp.ClientSession) -> None:
    holder = KeyRingHolder(KeyRing.ephemeral())  # this test's own: it changes the ring
    running = await start_server(make_settings(redis_url, free_port()), holder)
    transport = CountingTransport()
    try:
        async with pa.AsyncClient(running.url, API_KEY, application_id="webmail",
                                  transport=transport) as client:
            phone = await Phone.enroll(await LoginFlow(http, running.url).enroll_uri(USER), session=http)

            async def sign_in() -> tuple[str, str]:
                created = await client.create(USER)
                assert isinstance(created, pa.Pending)
                assert await phone.approve(created.id, created.number) == "approved"
                decided = await client.wait(created.id, timeout_s=10)
                assert decided.assertion is not None
                return decided.assertion, created.id

            token, cid = await sign_in()
            await client.verify_assertion(token, challenge_id=cid, user=USER)
            token, cid = await sign_in()
            await client.verify_assertion(token, challenge_id=cid, user=USER)
            assert transport.paths.count("/.well-known/jwks.json") == 1  # cached

            # `pushauth keys rotate`, as a running server picks it up: a new current key, the old one kept.
            old = holder.ring.current
            new = KeyRing.ephemeral().current
            holder.ring = KeyRing(new, {old.kid: old, new.kid: new})
            token, cid = await sign_in()
            assert json.loads(b64url_decode(token.split(".")[0]))["kid"] == new.kid
            claims = await client.verify_assertion(token, challenge_id=cid, user=USER)
            assert claims.challenge_id == cid
            assert transport.paths.count("/.well-known/jwks.json") == 2  # refreshed once, for the new kid
            token, cid = await sign_in()
            await client.verify_assertion(token, challenge_id=cid, user=USER)
            assert transport.paths.count("/.well-known/jwks.json") == 2
    finally:
        await running.close()


async def test_429_retry_after_is_honoured(
        redis_url: str, keyring: KeyRingHolder, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # One request a second with the application's key, in bursts of at most 2.
    limits = {"application_requests": 2, "window_s": 2}
    running = await start_server(make_settings(redis_url, free_port(), rate_limits=limits), keyring)
    try:
        async with pa.AsyncClient(running.url, API_KEY, application_id="webmail") as client:
            await Phone.enroll(await LoginFlow(http, running.url).enroll_uri(USER), session=http)
            created = await client.create(USER)  # the enrollment used the application's quota too
            assert isinstance(created, pa.Pending)
            # A refused long-poll: wait Retry-After, then carry on (PROTOCOL.md 2.7).
            started = time.monotonic()
            for _ in range(3):
                assert (await client.status(created.id)).pending
            assert time.monotonic() - started >= 1.0
            retries = [r.getMessage() for r in caplog.records if "pushauth_retry" in r.getMessage()]
            assert retries
            assert all("after=429" in m for m in retries), retries
            # A refused create is not retried blindly (it may be the user's push-bombing limit): creates
            # sent back to back spend the quota (at most its burst of 2 get through, and a slow machine
            # may have earned one more meanwhile), and the first refusal is raised, not slept through.
            refused: pa.RateLimited | None = None
            for _ in range(5):
                try:
                    await client.create(USER)
                except pa.RateLimited as exc:
                    refused = exc
                    break
            assert refused is not None
            assert refused.retry_after is not None
            assert refused.retry_after >= 1
        # A Retry-After longer than the caller will sleep is raised, not slept through. (Calls back to back
        # until the quota refuses one: on a busy machine the bucket may have earned a request or two since.)
        impatient = pa.RetryPolicy(max_retry_after_s=0.5)
        async with pa.AsyncClient(running.url, API_KEY, application_id="webmail", retry=impatient) as client:
            started = time.monotonic()
            impatient_refusal: pa.RateLimited | None = None
            for _ in range(5):
                try:
                    await client.status(created.id)
                except pa.RateLimited as exc:
                    impatient_refusal = exc
                    break
            assert impatient_refusal is not None
            assert time.monotonic() - started < 1.0  # raised at once: no Retry-After (>= 1 s) slept
    finally:
        await running.close()
    assert API_KEY not in caplog.text


# -- the assertion checks, against the protocol's vectors (no server) ---------------------------------------


def _vector_client() -> tuple[pa.Client, dict[str, Any]]:
    rp_state = json.loads((VECTORS / "assertions.json").read_text())["relying_party"]
    jwks = json.loads((VECTORS / "keys.json").read_text())["jwks"]
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=jwks))
    client = pa.Client("http://pushauth.internal:8080", API_KEY, application_id=rp_state["application_id"],
                       issuer=rp_state["server"], clock=lambda: float(rp_state["now"]), transport=transport)
    return client, rp_state


@pytest.mark.parametrize("vector", json.loads((VECTORS / "assertions.json").read_text())["vectors"],
                         ids=lambda v: str(v["name"]))
def test_assertion_vectors(vector: dict[str, Any]) -> None:
    client, state = _vector_client()
    with client:
        if vector["expected"] == "accept":
            claims = client.verify_assertion(vector["jws"], challenge_id=state["challenge_id"],
                                             user=state["user"])
            assert (claims.user, claims.challenge_id) == (state["user"], state["challenge_id"])
        else:
            with pytest.raises(pa.InvalidAssertion):
                client.verify_assertion(vector["jws"], challenge_id=state["challenge_id"], user=state["user"])


# -- the README's example ----------------------------------------------------------------------------------


def readme_example() -> str:
    text = (Path(__file__).resolve().parents[1] / "clients" / "python" / "README.md").read_text()
    found = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert found is not None
    return found.group(1)


async def test_the_readme_example_protects_a_login(server: RunningServer, alice: Phone,
                                                   http: aiohttp.ClientSession,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    code = readme_example()
    assert len(code.splitlines()) < 30  # the README's promise
    monkeypatch.setenv("PUSHAUTH_URL", server.url)
    monkeypatch.setenv("PUSHAUTH_API_KEY", API_KEY)
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(code, "clients/python/README.md", "exec"), namespace)  # noqa: S102 (our own README)
    runner = web.AppRunner(namespace["app"])
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"

    async def get(path: str) -> tuple[int, str]:
        async with http.get(base + path) as resp:
            return resp.status, await resp.text()

    async def login(user: str) -> tuple[str, str]:
        async with http.post(f"{base}/login", data={"user": user}) as resp:
            page = await resp.text()
            assert resp.status == 200, page
        found = re.fullmatch(r"Enter (\d+) in your authenticator, then open (/login/(\S+))", page)
        assert found is not None, page
        return found.group(1), found.group(2)

    try:
        number, path = await login(USER)
        cid = path.rsplit("/", 1)[1]
        assert await while_waiting(get(path), lambda: alice.approve(cid, number)) == (200, f"Welcome, {USER}")
        # A denial is no sign-in.
        number, path = await login(USER)
        cid = path.rsplit("/", 1)[1]
        status, text = await while_waiting(get(path), lambda: alice.deny(cid, reason="mistake"))
        assert (status, text) == (403, "Not approved: denied mistake")
        # A user without a phone is refused, and told why.
        async with http.post(f"{base}/login", data={"user": "nobody@nhs.net"}) as resp:
            assert resp.status == 403
            assert "not_enrolled" in await resp.text()
    finally:
        await runner.cleanup()
        await namespace["pa"].aclose()


def test_an_unknown_kid_refetches_the_jwks_once_then_not_again_for_a_while() -> None:
    """A token naming a key the server does not publish costs one JWKS fetch (it could be a rotation), and
    a flood of such tokens no more than one per jwks_min_refresh_s."""
    state = json.loads((VECTORS / "assertions.json").read_text())["relying_party"]
    jwks = json.loads((VECTORS / "keys.json").read_text())["jwks"]
    fetched: list[str] = []

    def serve(request: httpx.Request) -> httpx.Response:
        fetched.append(request.url.path)
        assert "Authorization" not in request.headers  # the API key is not sent to the public JWKS
        return httpx.Response(200, json=jwks)

    stranger = ECKey.generate_key("P-256", private=True)
    claims = {"iss": state["server"], "aud": state["application_id"], "sub": state["user"],
              "jti": state["challenge_id"], "iat": state["now"], "exp": state["now"] + 300,
              "result": "approved"}
    token = sign_jws(claims, stranger, typ="pushauth-assertion+jwt", kid=jws_thumbprint(stranger))
    with pa.Client("http://pushauth.internal:8080", API_KEY, application_id=state["application_id"],
                   issuer=state["server"], clock=lambda: float(state["now"]),
                   transport=httpx.MockTransport(serve)) as client:
        for _ in range(3):
            with pytest.raises(pa.InvalidAssertion, match="does not publish"):
                client.verify_assertion(token, challenge_id=state["challenge_id"], user=state["user"])
    # The first fetch fills the cache, the second is the one refresh for the unknown kid; then none.
    assert fetched == ["/.well-known/jwks.json"] * 2


def test_error_classes_follow_the_status_for_codes_they_do_not_know() -> None:
    from pushauth_client.errors import error_class

    assert error_class(403, "locked") is pa.Locked
    assert error_class(403, "some_new_refusal") is pa.Forbidden
    assert error_class(409, "some_new_conflict") is pa.Conflict
    assert error_class(400, "locked") is pa.BadRequest  # a known code under another status: the status wins
    assert error_class(502, "unknown") is pa.ServerError
    assert error_class(503, "unavailable") is pa.Unavailable

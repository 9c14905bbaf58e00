"""FCM delivery through pushauth's own client (pushauth/push/fcm.py: aiohttp for the send, firebase-admin and
google-auth for the service account and its OAuth2 token), against the protocol fake in testkit/fakes/fcm.py.

Every send here runs in a child process (tests/push_driver.py) inside the sandbox of testkit/fakes/sandbox.py:
fcm.googleapis.com resolves to the fake and the test CA is the trust store; the OAuth2 token endpoint is the
`token_uri` of a service-account file the fake writes. Nothing in aiohttp, firebase-admin or google-auth is
patched.

The error cases share one driver run (`batch`, one device token per case, sent concurrently as the worker
would): the slowest cases (a send timing out) then cost their time once.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from testkit.fakes import fcm, sandbox
from testkit.fakes.fcm import FakeFCM, Reply
from testkit.fakes.sandbox import PrivateHosts

_why_not = sandbox.available()
if _why_not:
    pytest.skip(_why_not, allow_module_level=True)

from pushauth.config import FcmSettings  # noqa: E402 (after the skip: firebase-admin is heavy)
from pushauth.errors import ConfigError  # noqa: E402
from pushauth.push.fcm import REFRESH_AHEAD_S, SEND_TIMEOUT_S, FcmProvider  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "tests" / "push_driver.py"
SERVER = "https://pushauth.example.nhs.uk"
OUTCOME_KEYS = {"kind", "reason", "retry_after_s", "provider_id"}


# ---------------------------------------------------------------------------------------------------------
# Sandbox, fake and driver
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> sandbox.TestCA:
    return sandbox.TestCA.create(tmp_path_factory.mktemp("fcm-ca"))


@pytest.fixture(scope="session")
def hosts(tmp_path_factory: pytest.TempPathFactory, test_ca: sandbox.TestCA) -> PrivateHosts:
    return PrivateHosts.create(tmp_path_factory.mktemp("fcm-hosts"), test_ca)


@pytest.fixture
async def fake(test_ca: sandbox.TestCA, hosts: PrivateHosts) -> AsyncIterator[FakeFCM]:
    async with FakeFCM(test_ca, host=hosts.fcm_addr) as running:
        yield running


@pytest.fixture
def service_account(fake: FakeFCM, tmp_path: Path) -> Path:
    return fake.write_service_account(tmp_path / "service-account.json")


def push_settings(service_account: Path, concurrency: int = 200) -> dict[str, Any]:
    fcm_settings = {"enabled": True, "service_account_file": str(service_account), "concurrency": concurrency}
    return {"fcm": fcm_settings}


def device_token() -> str:
    # Shaped like a real FCM registration token, and unique enough to grep the logs for.
    return f"dev{secrets.token_hex(8)}:APA91b{secrets.token_urlsafe(100)}"


def push_request(token: str, ttl_s: float = 60, delay_s: float = 0) -> dict[str, Any]:
    return {"provider": "fcm", "token": token, "challenge_id": "ch_" + secrets.token_urlsafe(16),
            "server": SERVER, "expires_at": int(time.time() + ttl_s), "delay_s": delay_s}


@dataclass
class DriverRun:
    outcomes: list[dict[str, Any]]
    stdout: str
    stderr: str
    seconds: float

    @property
    def logs(self) -> str:
        """Everything the driver wrote that is not an outcome line (structlog's default is stdout)."""
        lines = [line for line in self.stdout.splitlines() if _outcome(line) is None]
        return "\n".join(lines) + "\n" + self.stderr


def _outcome(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and set(value) == OUTCOME_KEYS else None


async def run_driver(hosts: PrivateHosts, settings: dict[str, Any], requests: list[dict[str, Any]],
                     timeout_s: float = 60) -> DriverRun:
    """Run tests/push_driver.py in the sandbox with `settings` (PushSettings as JSON) and `requests`;
    check it exited 0, answered every request, and never wrote a device token anywhere but its outcomes."""
    env = hosts.env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    argv = hosts.command([sys.executable, str(DRIVER), json.dumps(settings)])
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO)
    stdin = "".join(json.dumps(r) + "\n" for r in requests).encode()
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"push driver still running after {timeout_s} s:\n{err.decode()}") from None
    run = DriverRun([], out.decode(), err.decode(), time.monotonic() - started)
    assert proc.returncode == 0, f"push driver exited {proc.returncode}; stderr:\n{run.stderr}"
    run.outcomes = [o for o in map(_outcome, run.stdout.splitlines()) if o is not None]
    assert len(run.outcomes) == len(requests), run.stdout + run.stderr
    for request in requests:
        assert request["token"] not in run.logs, "a device token reached the logs"
    return run


# ---------------------------------------------------------------------------------------------------------
# Every error class, in one driver run
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    replies: tuple[Reply, ...]  # what the fake answers this case's token, in order (then success)
    kind: str
    reason: str
    attempts: int  # sends the fake saw for the token (a 401's resend included)
    retry_after_s: float | None = None
    ttl_s: float = 60


UNAVAILABLE_RETRY_AFTER = replace(fcm.UNAVAILABLE, headers=(("Retry-After", "30"),))

# One HTTP request per case: every retry but the two below is the worker's (backoff, Retry-After), so a 5xx
# or a 429 comes back at once with what FCM said.
CASES: dict[str, Case] = {
    "unregistered": Case((fcm.UNREGISTERED,), "invalid_token", "UNREGISTERED", 1),
    "sender_id_mismatch": Case((fcm.SENDER_ID_MISMATCH,), "invalid_token", "SENDER_ID_MISMATCH", 1),
    "invalid_argument_token": Case((fcm.INVALID_TOKEN_ARGUMENT,), "invalid_token", "INVALID_ARGUMENT", 1),
    "invalid_argument_token_field": Case((fcm.INVALID_TOKEN_FIELD,), "invalid_token", "INVALID_ARGUMENT", 1),
    "invalid_argument_payload": Case((fcm.INVALID_PAYLOAD_ARGUMENT,), "failed", "INVALID_ARGUMENT", 1),
    "quota_exceeded": Case((fcm.quota_exceeded(7),), "retry", "QUOTA_EXCEEDED", 1, retry_after_s=7),
    "unavailable": Case((fcm.UNAVAILABLE,), "retry", "UNAVAILABLE", 1),
    "unavailable_retry_after": Case((UNAVAILABLE_RETRY_AFTER,), "retry", "UNAVAILABLE", 1, retry_after_s=30),
    "internal": Case((fcm.INTERNAL,), "retry", "INTERNAL", 1),
    # Google's front end (or a proxy) with an HTML page instead of FCM's JSON: by the status.
    "bad_gateway_html": Case((fcm.BAD_GATEWAY,), "retry", "http_502", 1),
    # 401 about the APNs credentials in the Firebase console: a new access token cannot help, no resend.
    "third_party_auth_error": Case((fcm.THIRD_PARTY_AUTH_ERROR,), "auth_error", "THIRD_PARTY_AUTH_ERROR", 1),
    # 401 about our access token: one refresh, one resend ...
    "unauthenticated_once": Case((fcm.UNAUTHENTICATED,), "sent", "", 2),
    # ... and if the new token is refused too, our credentials are wrong.
    "unauthenticated": Case((fcm.UNAUTHENTICATED,) * 2, "auth_error", "UNAUTHENTICATED", 2),
    "permission_denied": Case((fcm.PERMISSION_DENIED,), "auth_error", "PERMISSION_DENIED", 1),
    "project_not_found": Case((fcm.PROJECT_NOT_FOUND,), "auth_error", "NOT_FOUND", 1),
    # A connection closed under the request (a stale keep-alive connection): one resend on a fresh one ...
    "dropped_once": Case((fcm.DROP,), "sent", "", 2),
    # ... and if that one is dropped too, the network is the problem: the worker retries later.
    "dropped_twice": Case((fcm.DROP, fcm.DROP), "retry", "connection", 2),
    # No answer within the provider's send timeout (SEND_TIMEOUT_S; not a setting).
    "slow": Case((fcm.slow(SEND_TIMEOUT_S + 5),), "retry", "timeout", 1),
    # The challenge expires first: the send is cut at expiry.
    "slow_past_expiry": Case((fcm.slow(8),), "failed", "expired", 1, ttl_s=3),
}


@dataclass
class Batch:
    requests: dict[str, dict[str, Any]]
    outcomes: dict[str, dict[str, Any]]
    fake: FakeFCM
    run: DriverRun


@pytest.fixture(scope="module")
def batch(test_ca: sandbox.TestCA, hosts: PrivateHosts, tmp_path_factory: pytest.TempPathFactory) -> Batch:
    folder = tmp_path_factory.mktemp("fcm-batch")

    async def scenario() -> Batch:
        async with FakeFCM(test_ca, host=hosts.fcm_addr) as running:
            account = running.write_service_account(folder / "service-account.json")
            requests = {name: push_request(device_token(), case.ttl_s) for name, case in CASES.items()}
            for name, case in CASES.items():
                running.script(requests[name]["token"], *case.replies)
            run = await run_driver(hosts, push_settings(account), list(requests.values()))
        return Batch(requests, dict(zip(requests, run.outcomes, strict=True)), running, run)

    return asyncio.run(scenario())


@pytest.mark.parametrize("name", list(CASES))
def test_error_maps_to_outcome(batch: Batch, name: str) -> None:
    case, outcome = CASES[name], batch.outcomes[name]
    assert (outcome["kind"], outcome["reason"]) == (case.kind, case.reason), outcome
    assert outcome["retry_after_s"] == case.retry_after_s, outcome
    token = batch.requests[name]["token"]
    assert batch.fake.attempts(token) == case.attempts
    if case.kind == "sent":
        assert str(outcome["provider_id"]).startswith(f"projects/{batch.fake.project_id}/messages/")
    else:
        assert outcome["provider_id"] is None


def test_no_send_leaves_after_the_challenge_expired(batch: Batch) -> None:
    request = batch.requests["slow_past_expiry"]
    [sent] = batch.fake.sends_to(request["token"])
    # Arrival time at the fake; the send was cut at expiry, not at SEND_TIMEOUT_S.
    assert sent.at <= request["expires_at"]
    assert batch.run.seconds < SEND_TIMEOUT_S + 5 + 10


def test_a_401_costs_one_shared_token_refresh(batch: Batch) -> None:
    # The first token, then one refresh shared by the two cases whose first send was refused with 401 (the
    # second 401 of "unauthenticated" is final). THIRD_PARTY_AUTH_ERROR refreshes nothing.
    assert batch.fake.token_requests == 2, batch.fake.token_rejections
    resent = batch.fake.sends_to(batch.requests["unauthenticated_once"]["token"])
    first, second = (r.headers["Authorization"] for r in resent)
    assert first != second
    assert second.removeprefix("Bearer ") in batch.fake.issued_tokens()


def test_auth_errors_are_logged_loudly_without_device_tokens(batch: Batch) -> None:
    # run_driver already checked that no device token reached the logs; the auth errors did, once each.
    reasons = [CASES[name].reason for name, case in CASES.items() if case.kind == "auth_error"]
    assert batch.run.logs.count("push_auth_error") == len(reasons) == 4, batch.run.logs
    for reason in reasons:
        assert reason in batch.run.logs


# ---------------------------------------------------------------------------------------------------------
# One scenario per driver run
# ---------------------------------------------------------------------------------------------------------


async def test_success_sends_exactly_the_contract_payload(fake: FakeFCM, service_account: Path,
                                                         hosts: PrivateHosts) -> None:
    request = push_request(device_token(), ttl_s=45)
    run = await run_driver(hosts, push_settings(service_account), [request])
    [outcome] = run.outcomes
    assert outcome["kind"] == "sent", (outcome, fake.token_rejections, run.logs)
    [sent] = fake.requests
    assert str(outcome["provider_id"]).startswith(f"projects/{fake.project_id}/messages/0:"), outcome
    assert sent.project == fake.project_id
    assert not sent.validate_only  # a real send, not dry_run
    # Exactly the contract's payload, nothing user-related, Android high priority, no notification block.
    data = {"type": "challenge", "challenge_id": request["challenge_id"], "server": SERVER}
    assert sent.message == {"token": request["token"], "data": data,
                            "android": {"priority": "high", "ttl": sent.android["ttl"]}}
    ttl = sent.android["ttl"]
    assert ttl.endswith("s"), ttl
    assert ttl[:-1].isdigit(), ttl
    remaining = request["expires_at"] - sent.at
    assert remaining - 3 < int(ttl[:-1]) <= remaining, (ttl, remaining)
    # Authorised with an access token the fake's token endpoint issued, after verifying our JWT.
    assert sent.headers["Authorization"].removeprefix("Bearer ") in fake.issued_tokens()
    assert fake.token_requests == 1
    assert not fake.token_rejections
    assert fake.unauthenticated_sends == 0


async def test_expired_challenge_is_never_sent(fake: FakeFCM, service_account: Path,
                                               hosts: PrivateHosts) -> None:
    run = await run_driver(hosts, push_settings(service_account), [push_request(device_token(), ttl_s=-5)])
    expired = {"kind": "failed", "reason": "expired", "retry_after_s": None, "provider_id": None}
    assert run.outcomes == [expired]
    assert fake.requests == []
    assert fake.token_requests == 0


async def test_fcm_unreachable_is_retried(fake: FakeFCM, service_account: Path, hosts: PrivateHosts) -> None:
    await fake.stop_fcm()  # connection refused on fcm.googleapis.com:443
    run = await run_driver(hosts, push_settings(service_account), [push_request(device_token())])
    assert [(o["kind"], o["reason"]) for o in run.outcomes] == [("retry", "connection")]


async def test_token_endpoint_refusing_our_key_is_an_auth_error(fake: FakeFCM, service_account: Path,
                                                               hosts: PrivateHosts) -> None:
    fake.refuse_tokens = True  # 400 invalid_grant, as for a deleted or disabled service-account key
    requests = [push_request(device_token()) for _ in range(3)]
    run = await run_driver(hosts, push_settings(service_account), requests)
    assert [(o["kind"], o["reason"]) for o in run.outcomes] == [("auth_error", "credentials_refused")] * 3
    assert fake.requests == []
    # Concurrent sends share one token request: no storm against Google's token endpoint.
    assert fake.token_requests == 1
    assert "push_auth_error" in run.logs
    assert "credentials_refused" in run.logs


async def test_token_endpoint_unreachable_is_retried(fake: FakeFCM, service_account: Path,
                                                     hosts: PrivateHosts) -> None:
    await fake.stop_oauth()
    run = await run_driver(hosts, push_settings(service_account), [push_request(device_token())])
    assert [(o["kind"], o["reason"]) for o in run.outcomes] == [("retry", "token_endpoint")]
    assert fake.requests == []


async def test_sends_share_a_capped_pool_of_keep_alive_connections(fake: FakeFCM, service_account: Path,
                                                                   hosts: PrivateHosts) -> None:
    fake.delay_s = 0.15  # hold each send long enough for sends to pile up against the cap
    first = [push_request(device_token()) for _ in range(200)]
    # A second wave after the first has finished: it finds the connections open.
    later = [push_request(device_token(), delay_s=3.5) for _ in range(40)]
    run = await run_driver(hosts, push_settings(service_account, concurrency=20), first + later)
    assert [o["kind"] for o in run.outcomes] == ["sent"] * 240
    assert len({o["provider_id"] for o in run.outcomes}) == 240
    assert {r.token for r in fake.requests} == {r["token"] for r in first + later}
    assert fake.sends == 240
    assert 10 <= fake.max_in_flight <= 20, fake.max_in_flight
    # HTTP/1.1 (what pushauth's client offers), one request at a time per connection, kept alive: never more
    # connections than sends in flight, each carrying many sends.
    assert {r.http_version for r in fake.requests} == {"1.1"}
    assert fake.connections <= 20, fake.connections
    assert len({r.connection for r in fake.requests}) == fake.connections
    first_tokens, later_tokens = {q["token"] for q in first}, {q["token"] for q in later}
    second_wave = {r.connection for r in fake.requests if r.token in later_tokens}
    assert second_wave <= {r.connection for r in fake.requests if r.token in first_tokens}
    assert fake.token_requests == 1  # one OAuth2 token for all of them


async def test_the_token_is_refreshed_ahead_of_expiry_off_the_event_loop(
        fake: FakeFCM, service_account: Path, hosts: PrivateHosts) -> None:
    # Tokens that enter the refresh window 2 s after they are issued, from a token endpoint that takes 1.5 s
    # to answer. The first send waits for the first token; sends in the window go out at once with the
    # current token while one refresh runs in a worker thread; a send after it uses the new token.
    fake.token_lifetime_s = int(REFRESH_AHEAD_S) + 2
    fake.token_delay_s = 1.5
    requests = [push_request(device_token(), delay_s=d) for d in (0, 4.0, 4.2, 4.4, 7.0)]
    run = await run_driver(hosts, push_settings(service_account), requests)
    assert [o["kind"] for o in run.outcomes] == ["sent"] * 5, run.logs
    assert fake.token_requests == 2, fake.token_rejections
    first_token, refreshed = fake.token_answers
    sends = [fake.sends_to(r["token"])[0] for r in requests]
    tokens = [s.headers["Authorization"] for s in sends]
    # The sends in the window did not wait for the refresh (nor for each other): they reached the fake
    # while the token endpoint was still sleeping on the refresh they started.
    assert tokens[1] == tokens[2] == tokens[3] == tokens[0]
    assert all(s.at < refreshed for s in sends[1:4]), ([s.at for s in sends], fake.token_answers)
    assert tokens[4] != tokens[0]
    assert sends[0].at > first_token


async def test_a_revoked_token_is_refreshed_once_and_the_send_goes_through(
        fake: FakeFCM, service_account: Path, hosts: PrivateHosts) -> None:
    requests = [push_request(device_token()), *(push_request(device_token(), delay_s=3.0) for _ in range(5))]

    async def revoke_after_the_first_send() -> None:
        for _ in range(1000):
            if fake.sends:
                break
            await asyncio.sleep(0.02)
        fake.revoke_tokens()  # as when the service-account key is rotated

    revoker = asyncio.create_task(revoke_after_the_first_send())
    run = await run_driver(hosts, push_settings(service_account), requests)
    await revoker
    assert [o["kind"] for o in run.outcomes] == ["sent"] * 6, run.logs
    # 5 sends refused with the old token, one refresh between them, 5 resends with the new one.
    assert fake.unauthenticated_sends == 5
    assert fake.token_requests == 2
    assert all(fake.attempts(r["token"]) == 1 for r in requests)  # the fake records authenticated sends only


def _in_process_token(fake: FakeFCM) -> str:
    """An access token from the fake's token endpoint, through google-auth as pushauth gets one."""
    import google.auth.transport.requests
    import requests
    from google.oauth2 import service_account

    credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        fake.service_account(), scopes=["https://www.googleapis.com/auth/firebase.messaging"])
    with requests.Session() as session:
        session.trust_env = False
        credentials.refresh(google.auth.transport.requests.Request(session))
    return str(credentials.token)


@pytest.mark.parametrize("alpn", ["http/1.1", "h2"])
async def test_http1_fallback_and_http2_answer_alike(fake: FakeFCM, test_ca: sandbox.TestCA,
                                                     alpn: str) -> None:
    # A client that offers only HTTP/1.1 (ALPN) gets it, on the same host and port, with the same checks
    # and answers as over HTTP/2. In process: the fake's address, the real name for SNI and the certificate.
    import httpx

    token = await asyncio.to_thread(_in_process_token, fake)
    ok, quota, slow = device_token(), device_token(), device_token()
    fake.script(quota, fcm.quota_exceeded(7))
    fake.script(slow, fcm.slow(30))
    url = f"https://{fake.host}:{fake.port}/v1/projects/{fake.project_id}/messages:send"
    sni = {"sni_hostname": sandbox.FCM_HOST}
    auth = {"Authorization": f"Bearer {token}", "Host": sandbox.FCM_HOST}
    tls = ssl.create_default_context(cafile=str(test_ca.ca_file))
    version = {"http/1.1": "HTTP/1.1", "h2": "HTTP/2"}[alpn]

    def message(device: str) -> dict[str, Any]:
        return {"message": {"token": device, "data": {"type": "challenge"}, "android": {"priority": "high"}}}

    async with httpx.AsyncClient(verify=tls, http1=alpn == "http/1.1", http2=alpn == "h2") as client:
        sent = await client.post(url, json=message(ok), headers=auth, extensions=sni)
        throttled = await client.post(url, json=message(quota), headers=auth, extensions=sni)
        anonymous = await client.post(url, json=message(ok), extensions=sni)
        bad = await client.post(url, json={"message": {"data": {"type": "challenge"}}}, headers=auth,
                                extensions=sni)
    assert sent.http_version == version
    assert sent.status_code == 200, sent.text
    assert sent.json()["name"].startswith(f"projects/{fake.project_id}/messages/0:")
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "7"
    assert throttled.json()["error"]["details"][0]["errorCode"] == "QUOTA_EXCEEDED"
    assert (anonymous.status_code, anonymous.json()["error"]["status"]) == (401, "UNAUTHENTICATED")
    assert (bad.status_code, bad.json()["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert fake.unauthenticated_sends == 1
    assert [r.token for r in fake.requests] == [ok, quota]
    assert {r.http_version for r in fake.requests} == {"1.1" if alpn == "http/1.1" else "2"}
    assert len({r.connection for r in fake.requests}) == 1

    # A client that gives up (here: closes its connection) cancels the fake's slow handler.
    async with httpx.AsyncClient(verify=tls, http1=alpn == "http/1.1", http2=alpn == "h2") as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(url, json=message(slow), headers=auth, extensions=sni, timeout=0.5)
    for _ in range(100):
        if fake.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert fake.in_flight == 0
    assert fake.attempts(slow) == 1


# ---------------------------------------------------------------------------------------------------------
# In process: start-up errors and repr (no sends)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [None, "not json", '{"type": "authorized_user"}',
                                     '{"type": "service_account", "project_id": "p"}'])
def test_bad_service_account_file_is_a_config_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "sa.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=r"^push\.fcm\.service_account_file"):
        FcmProvider.from_settings(FcmSettings(enabled=True, service_account_file=str(path)))


async def test_repr_shows_the_project_only(fake: FakeFCM, service_account: Path) -> None:
    provider = FcmProvider.from_settings(FcmSettings(enabled=True, service_account_file=str(service_account)))
    try:
        assert repr(provider) == f"FcmProvider(project_id={fake.project_id!r})"
    finally:
        await provider.aclose()
    await provider.aclose()  # idempotent

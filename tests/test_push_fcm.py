"""FCM delivery through the real firebase-admin client, against the protocol fake in testkit/fakes/fcm.py.

Every send here runs in a child process (tests/push_driver.py) inside the sandbox of testkit/fakes/sandbox.py:
fcm.googleapis.com resolves to the fake and the test CA is the trust store; the OAuth2 token endpoint is the
`token_uri` of a service-account file the fake writes. Nothing in firebase-admin, google-auth or httpx is
patched.

The error cases share one driver run (`batch`, one device token per case, sent concurrently as the worker
would): the slowest cases (the SDK's own 503 retries, a send timing out) then cost their time once.
"""

from __future__ import annotations

import asyncio
import itertools
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
from pushauth.push.fcm import SEND_TIMEOUT_S, FcmProvider  # noqa: E402

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


def push_request(token: str, ttl_s: float = 60) -> dict[str, Any]:
    return {"provider": "fcm", "token": token, "challenge_id": "ch_" + secrets.token_urlsafe(16),
            "server": SERVER, "expires_at": int(time.time() + ttl_s)}


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
    attempts: int | None  # sends the fake saw for the token, the SDK's own retries included
    retry_after_s: float | None = None
    ttl_s: float = 60


UNAVAILABLE_RETRY_AFTER = replace(fcm.UNAVAILABLE, headers=(("Retry-After", "30"),))

CASES: dict[str, Case] = {
    "unregistered": Case((fcm.UNREGISTERED,), "invalid_token", "UNREGISTERED", 1),
    "sender_id_mismatch": Case((fcm.SENDER_ID_MISMATCH,), "invalid_token", "SENDER_ID_MISMATCH", 1),
    "invalid_argument_token": Case((fcm.INVALID_TOKEN_ARGUMENT,), "invalid_token", "INVALID_ARGUMENT", 1),
    "invalid_argument_token_field": Case((fcm.INVALID_TOKEN_FIELD,), "invalid_token", "INVALID_ARGUMENT", 1),
    "invalid_argument_payload": Case((fcm.INVALID_PAYLOAD_ARGUMENT,), "failed", "INVALID_ARGUMENT", 1),
    # 429 is not retried by the SDK: one send, and the worker gets Retry-After.
    "quota_exceeded": Case((fcm.quota_exceeded(7),), "retry", "QUOTA_EXCEEDED", 1, retry_after_s=7),
    # 500/503: the SDK itself sends 5 times (sleeping 0, 1, 2, 4 s) before answering.
    "unavailable": Case((fcm.UNAVAILABLE,) * 5, "retry", "UNAVAILABLE", 5),
    "unavailable_retry_after": Case((UNAVAILABLE_RETRY_AFTER,) * 5, "retry", "UNAVAILABLE", 5,
                                    retry_after_s=30),
    "internal": Case((fcm.INTERNAL,) * 5, "retry", "INTERNAL", 5),
    # ... so a single 503 is absorbed by the SDK: the worker only sees the success.
    "unavailable_once": Case((fcm.UNAVAILABLE,), "sent", "", 2),
    # 401: the SDK refreshes its OAuth2 token and resends, twice, before giving up.
    "third_party_auth_error": Case((fcm.THIRD_PARTY_AUTH_ERROR,) * 3, "auth_error", "THIRD_PARTY_AUTH_ERROR",
                                   3),
    "unauthenticated": Case((fcm.UNAUTHENTICATED,) * 3, "auth_error", "UNAUTHENTICATED", 3),
    "permission_denied": Case((fcm.PERMISSION_DENIED,), "auth_error", "PERMISSION_DENIED", 1),
    # No answer within the provider's send timeout (SEND_TIMEOUT_S; not a setting).
    "slow": Case((fcm.slow(SEND_TIMEOUT_S + 5),), "retry", "timeout", 1),
    # The challenge expires first: the send is cut at expiry, the SDK's retries included.
    "unavailable_until_expiry": Case((fcm.UNAVAILABLE,) * 5, "failed", "expired", None, ttl_s=3),
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
    if case.attempts is not None:
        assert batch.fake.attempts(token) == case.attempts
    if case.kind == "sent":
        assert str(outcome["provider_id"]).startswith(f"projects/{batch.fake.project_id}/messages/")
    else:
        assert outcome["provider_id"] is None


def test_no_send_leaves_after_the_challenge_expired(batch: Batch) -> None:
    for name in ("unavailable_until_expiry", "slow_past_expiry"):
        request = batch.requests[name]
        sends = batch.fake.sends_to(request["token"])
        assert sends, name
        # Arrival time at the fake; a send that left just before expiry may land a few ms after it.
        assert all(s.at <= request["expires_at"] + 0.25 for s in sends), (name, request, sends)
    # The SDK would have gone on to 5 sends over 7 s; expiry cut it short.
    assert batch.fake.attempts(batch.requests["unavailable_until_expiry"]["token"]) < 5


def test_sdk_retries_a_503_five_times_over_seven_seconds(batch: Batch) -> None:
    sends = batch.fake.sends_to(batch.requests["unavailable"]["token"])
    gaps = [round(b.at - a.at, 1) for a, b in itertools.pairwise(sends)]
    # HttpxRetry(max_retries=4, status_forcelist=[500, 503], backoff_factor=0.5): 0, 1, 2, 4 s.
    assert len(sends) == 5
    assert [abs(g - want) < 0.5 for g, want in zip(gaps, (0, 1, 2, 4), strict=True)] == [True] * 4, gaps


def test_auth_errors_are_logged_loudly_without_device_tokens(batch: Batch) -> None:
    # run_driver already checked that no device token reached the logs; the auth errors did.
    assert batch.run.logs.count("push_auth_error") == 3, batch.run.logs
    for name in ("third_party_auth_error", "unauthenticated", "permission_denied"):
        assert CASES[name].reason in batch.run.logs
    # The 401 path: 2 token refreshes per 401 answered send, on top of the first token.
    assert batch.fake.token_requests == 1 + 2 * 2, batch.fake.token_rejections


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


async def test_concurrency_is_capped(fake: FakeFCM, service_account: Path, hosts: PrivateHosts) -> None:
    fake.delay_s = 0.15  # hold each send long enough for sends to pile up against the cap
    requests = [push_request(device_token()) for _ in range(200)]
    run = await run_driver(hosts, push_settings(service_account, concurrency=20), requests)
    assert [o["kind"] for o in run.outcomes] == ["sent"] * 200
    assert len({o["provider_id"] for o in run.outcomes}) == 200
    assert {r.token for r in fake.requests} == {r["token"] for r in requests}
    assert fake.sends == 200
    assert 10 <= fake.max_in_flight <= 20, fake.max_in_flight
    assert fake.token_requests == 1  # one OAuth2 token for all 200 sends


async def test_sdk_sends_over_http2_on_one_connection(fake: FakeFCM, service_account: Path,
                                                      hosts: PrivateHosts) -> None:
    # As against fcm.googleapis.com: ALPN picks h2, and httpx multiplexes concurrent sends on one connection.
    fake.delay_s = 0.3  # hold the sends so they overlap
    requests = [push_request(device_token()) for _ in range(20)]
    run = await run_driver(hosts, push_settings(service_account), requests)
    assert [o["kind"] for o in run.outcomes] == ["sent"] * 20
    assert {r.http_version for r in fake.requests} == {"2"}
    assert len({r.connection for r in fake.requests}) == 1, fake.requests
    assert fake.connections == 1
    assert fake.max_in_flight >= 10, fake.max_in_flight
    # The real HEADERS frames: the first request on the connection fills HPACK's dynamic table, later ones
    # refer to it (the never-indexed Authorization header aside).
    first, *later = sorted(fake.requests, key=lambda r: r.nth_on_connection)
    assert first.nth_on_connection == 0
    assert first.headers_frame_bytes is not None
    assert fake.first_headers_frame_bytes == [first.headers_frame_bytes]
    assert all(r.headers_frame_bytes is not None and r.headers_frame_bytes < first.headers_frame_bytes
               for r in later), [r.headers_frame_bytes for r in fake.requests]
    assert all(r.body_bytes == int(r.headers["content-length"]) for r in fake.requests)


def _in_process_token(fake: FakeFCM) -> str:
    """An access token from the fake's token endpoint, through google-auth as the SDK gets one."""
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

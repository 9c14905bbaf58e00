"""The APNs provider through the real aioapns client, against a fake APNs that speaks HTTP/2 over TLS.

The provider runs in a child process (tests/push_driver.py) inside the sandbox of testkit/fakes/sandbox.py,
where Apple's host names resolve to the fake and the test CA is trusted; nothing in aioapns is patched.
The few tests that need no network (credential files, the error table) run in-process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import sys
import time
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from pushauth import ids
from pushauth.config import ApnsSettings
from pushauth.errors import ConfigError
from pushauth.push import Outcome, OutcomeKind, PushMessage
from pushauth.push.apns import REASONS, ApnsProvider, classify
from pushauth.push.base import CHALLENGE_ALERT as ALERT
from testkit.fakes import sandbox
from testkit.fakes.apns import (
    DROP,
    ERRORS,
    HANG,
    SUCCESS,
    Answer,
    FakeAPNs,
    write_p8,
)
from testkit.fakes.sandbox import APNS_DEVELOPMENT_HOST, APNS_PRODUCTION_HOST, PrivateHosts

REPO = Path(__file__).resolve().parents[1]
KEY_ID, TEAM_ID, TOPIC = "ABC123DEFG", "TEAM123456", "org.pushauth.app"
SERVER = "https://auth.example.org"

_why_not = sandbox.available()
needs_sandbox = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")


def new_token() -> str:
    return secrets.token_hex(32)


def push(token: str, *, expires_in: int = 60) -> dict[str, Any]:
    return {"provider": "apns", "token": token, "challenge_id": ids.new_challenge_id(ids.new_uid()),
            "server": SERVER, "expires_at": int(time.time()) + expires_in}


@pytest.fixture
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def p8(tmp_path: Path, signing_key: ec.EllipticCurvePrivateKey) -> Path:
    return write_p8(tmp_path / f"AuthKey_{KEY_ID}.p8", signing_key)


@pytest.fixture
def apns(p8: Path) -> dict[str, Any]:
    return {"enabled": True, "key_file": str(p8), "key_id": KEY_ID, "team_id": TEAM_ID, "topic": TOPIC,
            "sandbox": True}


@pytest.fixture
def ca(tmp_path: Path) -> sandbox.TestCA:
    return sandbox.TestCA.create(tmp_path / "ca")


@pytest.fixture
def hosts(tmp_path: Path, ca: sandbox.TestCA) -> PrivateHosts:
    return PrivateHosts.create(tmp_path, ca)


@pytest.fixture
def apns_addr(hosts: PrivateHosts) -> str:
    return hosts.apns_addr


@pytest.fixture
async def fake(ca: sandbox.TestCA, signing_key: ec.EllipticCurvePrivateKey,
               apns_addr: str) -> AsyncIterator[FakeAPNs]:
    async with FakeAPNs(ca, topic=TOPIC, key_id=KEY_ID, team_id=TEAM_ID,
                        public_key=signing_key.public_key(), host=apns_addr) as running:
        yield running


@dataclass
class DriverRun:
    returncode: int
    outcomes: list[dict[str, Any]]
    logs: str  # everything else the child wrote, stdout (structlog's default) and stderr
    seconds: float


async def run_driver(hosts: PrivateHosts, apns: dict[str, Any], requests: list[dict[str, Any]], *,
                     check: bool = True) -> DriverRun:
    argv = hosts.command([sys.executable, "tests/push_driver.py", json.dumps({"apns": apns})])
    env = hosts.env()
    env["PYTHONPATH"] = str(REPO)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*argv, cwd=REPO, env=env, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    stdin = "".join(json.dumps(r) + "\n" for r in requests).encode()
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("push driver did not finish within 60 s") from None
    seconds = time.monotonic() - started
    outcomes, other = [], []
    for line in out.decode().splitlines():
        if line.startswith('{"kind"'):
            outcomes.append(json.loads(line))
        else:
            other.append(line)
    logs = "\n".join(other) + "\n" + err.decode()
    run = DriverRun(proc.returncode or 0, outcomes, logs, seconds)
    if check:
        assert run.returncode == 0, logs
        assert len(outcomes) == len(requests), logs
    return run


def kinds(run: DriverRun) -> list[tuple[str, str]]:
    return [(o["kind"], o["reason"]) for o in run.outcomes]


# --- through the real client ----------------------------------------------------------------------


@needs_sandbox
async def test_success_carries_the_contract_payload_and_headers(hosts: PrivateHosts, fake: FakeAPNs,
                                                                apns: dict[str, Any]) -> None:
    token = new_token()
    request = push(token)
    run = await run_driver(hosts, apns, [request])
    print(f"one driver run: {run.seconds:.2f} s")

    [outcome] = run.outcomes
    assert outcome["kind"] == "sent", run.logs
    [seen] = fake.seen(token)
    assert outcome["provider_id"] == seen.headers["apns-id"]
    assert seen.status == 200
    # Token auth, as Apple checks it (the fake verified the ES256 signature with the .p8's public key).
    assert seen.auth == "jwt"
    assert seen.jwt_header["alg"] == "ES256"
    assert seen.jwt_header["kid"] == KEY_ID
    assert seen.jwt_claims["iss"] == TEAM_ID
    assert abs(seen.jwt_claims["iat"] - time.time()) < 60
    # aioapns names the sandbox api.development.push.apple.com; we made it offer h2.
    assert seen.server_name == APNS_DEVELOPMENT_HOST
    assert seen.headers["host"] == APNS_DEVELOPMENT_HOST
    assert seen.alpn == "h2"
    assert seen.headers["apns-topic"] == TOPIC
    assert seen.headers["apns-push-type"] == "alert"
    assert seen.headers["apns-priority"] == "10"
    assert abs(int(seen.headers["apns-expiration"]) - request["expires_at"]) <= 1
    assert seen.headers["apns-collapse-id"] == request["challenge_id"]
    # Exactly the contract's data, and an alert that says nothing about the user.
    assert seen.body == {"aps": {"alert": ALERT, "mutable-content": 1, "sound": "default"},
                         "type": "challenge", "challenge_id": request["challenge_id"], "server": SERVER}


@needs_sandbox
async def test_production_goes_to_api_push_apple_com(hosts: PrivateHosts, fake: FakeAPNs,
                                                     apns: dict[str, Any]) -> None:
    token = new_token()
    run = await run_driver(hosts, {**apns, "sandbox": False}, [push(token)])
    assert kinds(run) == [("sent", "")]
    [seen] = fake.seen(token)
    assert seen.server_name == APNS_PRODUCTION_HOST
    assert seen.headers["host"] == APNS_PRODUCTION_HOST


EXPECTED = [
    ("BadDeviceToken", "invalid_token"),
    ("DeviceTokenNotForTopic", "invalid_token"),
    ("Unregistered", "invalid_token"),
    ("ExpiredProviderToken", "auth_error"),
    ("TooManyRequests", "retry"),
    ("InternalServerError", "retry"),
    ("ServiceUnavailable", "retry"),
    ("PayloadTooLarge", "failed"),
]


@needs_sandbox
@pytest.mark.parametrize(("reason", "kind"), EXPECTED)
async def test_each_apns_error_maps_to_its_outcome(hosts: PrivateHosts, fake: FakeAPNs,
                                                   apns: dict[str, Any], reason: str, kind: str) -> None:
    token = new_token()
    fake.script(token, ERRORS[reason])
    run = await run_driver(hosts, apns, [push(token)])
    assert run.outcomes == [{"kind": kind, "reason": reason, "retry_after_s": None, "provider_id": None}]
    assert [s.reason for s in fake.seen(token)] == [reason]  # one request: aioapns did not retry it


@needs_sandbox
async def test_a_scripted_answer_is_used_once(hosts: PrivateHosts, fake: FakeAPNs,
                                              apns: dict[str, Any]) -> None:
    token = new_token()
    fake.script(token, ERRORS["ServiceUnavailable"])
    run = await run_driver(hosts, apns, [push(token), push(token)])
    assert sorted(kinds(run)) == [("retry", "ServiceUnavailable"), ("sent", "")]


@needs_sandbox
async def test_real_credential_and_topic_errors_are_auth_errors(hosts: PrivateHosts, fake: FakeAPNs,
                                                                apns: dict[str, Any],
                                                                tmp_path: Path) -> None:
    # Not scripted: the fake refuses them as Apple would.
    other_key = write_p8(tmp_path / "other.p8", ec.generate_private_key(ec.SECP256R1()))
    wrong_key = await run_driver(hosts, {**apns, "key_file": str(other_key)}, [push(new_token())] * 3)
    wrong_kid = await run_driver(hosts, {**apns, "key_id": "ZZZ999ZZZZ"}, [push(new_token())])
    wrong_topic = await run_driver(hosts, {**apns, "topic": "org.example.other"}, [push(new_token())])
    assert kinds(wrong_key) == [("auth_error", "InvalidProviderToken")] * 3
    assert kinds(wrong_kid) == [("auth_error", "InvalidProviderToken")]
    assert kinds(wrong_topic) == [("auth_error", "TopicDisallowed")]
    # A loud operational line, but one per reason per minute rather than one per push.
    assert wrong_key.logs.count("push_auth_error") == 1, wrong_key.logs
    assert "InvalidProviderToken" in wrong_key.logs


@needs_sandbox
async def test_expired_message_is_never_sent(hosts: PrivateHosts, fake: FakeAPNs,
                                             apns: dict[str, Any]) -> None:
    run = await run_driver(hosts, apns, [push(new_token(), expires_in=-1), push(new_token(), expires_in=0)])
    assert kinds(run) == [("failed", "expired")] * 2
    assert fake.requests == []
    assert fake.connections == 0


@needs_sandbox
async def test_apns_down_is_retry_within_bounded_time(hosts: PrivateHosts, apns: dict[str, Any]) -> None:
    # No fake: the test's own address refuses the connection.
    run = await run_driver(hosts, apns, [push(new_token()) for _ in range(5)])
    assert kinds(run) == [("retry", "connection_error")] * 5
    assert run.seconds < 15


@needs_sandbox
async def test_slow_hung_and_dropped_answers(hosts: PrivateHosts, fake: FakeAPNs,
                                             apns: dict[str, Any]) -> None:
    slow, hung, ok = new_token(), new_token(), new_token()
    fake.script(slow, Answer.slow(1.0))
    fake.script(hung, HANG)
    fake.script(ok, SUCCESS)
    # A send waits no longer than the challenge lives (here 3 s), and a hung stream harms no other.
    run = await run_driver(hosts, apns, [push(slow), push(hung, expires_in=3), push(ok)])
    assert kinds(run) == [("sent", ""), ("retry", "timeout"), ("sent", "")]
    assert run.seconds < 10

    dropped = new_token()
    fake.script(dropped, DROP)
    run = await run_driver(hosts, apns, [push(dropped)])
    assert kinds(run) == [("retry", "connection_error")]


@needs_sandbox
async def test_concurrency_is_capped(hosts: PrivateHosts, fake: FakeAPNs, apns: dict[str, Any]) -> None:
    fake.default = Answer.slow(0.05)
    run = await run_driver(hosts, {**apns, "concurrency": 20}, [push(new_token()) for _ in range(200)])
    assert kinds(run) == [("sent", "")] * 200
    assert len(fake.requests) == 200
    assert 15 <= fake.max_in_flight <= 20


@needs_sandbox
async def test_one_connection_never_overruns_the_flow_control_window(hosts: PrivateHosts, fake: FakeAPNs,
                                                                    apns: dict[str, Any]) -> None:
    # aioapns sends request bodies without waiting for HTTP/2 credit (FlowControlError past the 64 KiB
    # window). The provider keeps few enough requests in flight per connection, whatever the concurrency.
    fake.default = Answer.slow(0.05)
    settings = {**apns, "connections": 1, "concurrency": 500}
    run = await run_driver(hosts, settings, [push(new_token()) for _ in range(1000)])
    assert kinds(run) == [("sent", "")] * 1000
    assert fake.max_in_flight == 100
    assert "push_concurrency_capped" in run.logs


@needs_sandbox
async def test_many_error_answers_do_not_stall_a_connection(hosts: PrivateHosts, fake: FakeAPNs,
                                                             apns: dict[str, Any]) -> None:
    # aioapns never returns HTTP/2 flow-control credit, so one connection can take in only 64 KiB of
    # error bodies (~2,300 of these). The provider replaces its client before that.
    fake.default = ERRORS["BadDeviceToken"]
    settings = {**apns, "connections": 1, "concurrency": 100}
    run = await run_driver(hosts, settings, [push(new_token()) for _ in range(3000)])
    assert kinds(run) == [("invalid_token", "BadDeviceToken")] * 3000
    assert fake.window_waits == 0
    assert fake.connections >= 2


@needs_sandbox
async def test_device_tokens_never_reach_the_logs(hosts: PrivateHosts, fake: FakeAPNs,
                                                  apns: dict[str, Any]) -> None:
    tokens = [new_token() for _ in range(6)]
    for token, answer in zip(tokens, [SUCCESS, ERRORS["Unregistered"], ERRORS["ExpiredProviderToken"],
                                      ERRORS["InternalServerError"], ERRORS["PayloadTooLarge"], DROP],
                             strict=True):
        fake.script(token, answer)
    run = await run_driver(hosts, apns, [push(t) for t in tokens])
    assert "push_auth_error" in run.logs  # something was logged
    for token in tokens:
        assert token not in run.logs
        assert token[:16] not in run.logs


@needs_sandbox
async def test_certificate_auth(hosts: PrivateHosts, ca: sandbox.TestCA, tmp_path: Path,
                                apns_addr: str) -> None:
    cert_file = client_certificate(ca, tmp_path / "apns-cert.pem")
    async with FakeAPNs(ca, topic=TOPIC, client_ca=str(ca.ca_file), host=apns_addr) as fake:
        token = new_token()
        run = await run_driver(hosts, {"enabled": True, "cert_file": str(cert_file), "topic": TOPIC,
                                       "sandbox": True}, [push(token)])
        assert kinds(run) == [("sent", "")]
        [seen] = fake.seen(token)
        assert seen.auth == "cert"
        assert "authorization" not in seen.headers


@needs_sandbox
async def test_bad_p8_stops_the_driver_with_a_config_error(hosts: PrivateHosts, apns: dict[str, Any],
                                                           tmp_path: Path) -> None:
    bad = tmp_path / "AuthKey_bad.p8"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    run = await run_driver(hosts, {**apns, "key_file": str(bad)}, [push(new_token())], check=False)
    assert run.returncode != 0
    assert "ConfigError" in run.logs
    assert "push.apns.key_file" in run.logs
    assert "bm90IGEga2V5" not in run.logs


def client_certificate(ca: sandbox.TestCA, path: Path, *,
                       valid_for: dt.timedelta = dt.timedelta(days=1)) -> Path:
    """An APNs-style client certificate (UID = the topic) and its key in one PEM, signed by the test CA,
    valid until `valid_for` from now (negative: expired that long ago)."""
    ca_key = serialization.load_pem_private_key((ca.folder / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.ca_file.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.USER_ID, TOPIC),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: {TOPIC}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(min(now, now + valid_for) - dt.timedelta(hours=1))
            .not_valid_after(now + valid_for)
            .sign(ca_key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


# --- in-process: no network needed -----------------------------------------------------------------


def bad_key_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    garbage = folder / "garbage.p8"
    garbage.write_text("not a key\n")
    encrypted = folder / "encrypted.p8"
    encrypted.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    return {
        "missing": folder / "missing.p8",
        "garbage": garbage,
        "encrypted": encrypted,
        "rsa": write_p8(folder / "rsa.p8", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "p384": write_p8(folder / "p384.p8", ec.generate_private_key(ec.SECP384R1())),
    }


@pytest.mark.parametrize("case", ["missing", "garbage", "encrypted", "rsa", "p384"])
def test_unusable_p8_is_a_config_error_naming_the_setting(tmp_path: Path, case: str) -> None:
    path = bad_key_files(tmp_path / "keys")[case]
    settings = ApnsSettings(enabled=True, key_file=str(path), key_id=KEY_ID, team_id=TEAM_ID, topic=TOPIC)
    with pytest.raises(ConfigError, match=r"^push\.apns\.key_file: "):
        ApnsProvider.from_settings(settings)


def test_unusable_certificate_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^push\.apns\.cert_file: "):
        ApnsProvider.from_settings(ApnsSettings(enabled=True, cert_file=str(path), topic=TOPIC))


async def test_no_network_for_malformed_tokens_or_after_close(p8: Path) -> None:
    provider = ApnsProvider.from_settings(ApnsSettings(enabled=True, key_file=str(p8), key_id=KEY_ID,
                                                       team_id=TEAM_ID, topic=TOPIC))
    message = PushMessage(ids.new_challenge_id(ids.new_uid()), SERVER, int(time.time()) + 60)
    for token in ["", "../../3/device/abc", "ab cd" * 10, "é" * 64]:
        outcome = await provider.send(token, message)
        assert (outcome.kind, outcome.reason) == (OutcomeKind.INVALID_TOKEN, "malformed_token")
    await provider.aclose()
    assert (await provider.send(new_token(), message)).kind is OutcomeKind.RETRY
    assert "PRIVATE" not in repr(provider)
    assert KEY_ID in repr(provider)


def test_error_table() -> None:
    assert classify("200", "").kind is OutcomeKind.SENT
    for reason, kind in EXPECTED:
        assert classify("400", reason).kind.value == kind
    for reason in ["TooManyProviderTokenUpdates", "Shutdown", "IdleTimeout"]:
        assert REASONS[reason] is OutcomeKind.RETRY
    for reason in ["InvalidProviderToken", "MissingProviderToken", "BadCertificate",
                   "BadCertificateEnvironment", "Forbidden", "TopicDisallowed", "BadTopic"]:
        assert REASONS[reason] is OutcomeKind.AUTH_ERROR
    assert REASONS["ExpiredToken"] is OutcomeKind.INVALID_TOKEN
    # A reason Apple adds later falls back on its status.
    assert classify("503", "SomethingNew").kind is OutcomeKind.RETRY
    assert classify("403", "SomethingNew").kind is OutcomeKind.AUTH_ERROR
    assert classify("410", "SomethingNew").kind is OutcomeKind.INVALID_TOKEN
    assert classify("400", "BadExpirationDate") == Outcome(OutcomeKind.FAILED, "BadExpirationDate")
    assert classify("502", "").reason == "http_502"


async def test_certificate_gone_after_start_is_an_auth_error(tmp_path: Path) -> None:
    ca = sandbox.TestCA.create(tmp_path / "ca")
    cert_file = client_certificate(ca, tmp_path / "apns-cert.pem")
    provider = ApnsProvider.from_settings(ApnsSettings(enabled=True, cert_file=str(cert_file), topic=TOPIC))
    cert_file.unlink()  # aioapns reads the file again when the provider opens a connection
    message = PushMessage(ids.new_challenge_id(ids.new_uid()), SERVER, int(time.time()) + 60)
    outcome = await provider.send(new_token(), message)
    assert (outcome.kind, outcome.reason) == (OutcomeKind.AUTH_ERROR, "client_setup_failed")
    await provider.aclose()


# --- certificate expiry (certificate auth only) ----------------------------------------------------


def cert_expiry_gauge(topic: str = TOPIC) -> float | None:
    return REGISTRY.get_sample_value("pushauth_push_apns_certificate_expiry_timestamp_seconds",
                                     {"topic": topic})


def not_after(cert_file: Path) -> float:
    return x509.load_pem_x509_certificate(cert_file.read_bytes()).not_valid_after_utc.timestamp()


def expiry_logs(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"].startswith("push_apns_certificate_")]


def build(cert_file: Path) -> tuple[ApnsProvider, list[MutableMapping[str, Any]]]:
    with capture_logs() as logs:
        provider = ApnsProvider.from_settings(ApnsSettings(enabled=True, cert_file=str(cert_file),
                                                           topic=TOPIC))
    return provider, logs


def test_certificate_expiry_is_a_gauge(ca: sandbox.TestCA, tmp_path: Path) -> None:
    cert_file = client_certificate(ca, tmp_path / "apns-cert.pem", valid_for=dt.timedelta(days=200))
    _, logs = build(cert_file)
    assert cert_expiry_gauge() == not_after(cert_file)
    assert expiry_logs(logs) == []  # months left: nothing to say


async def test_a_certificate_expiring_within_30_days_is_warned_of(ca: sandbox.TestCA, tmp_path: Path) -> None:
    cert_file = client_certificate(ca, tmp_path / "apns-cert.pem", valid_for=dt.timedelta(days=10))
    provider, logs = build(cert_file)
    assert cert_expiry_gauge() == not_after(cert_file)
    [line] = expiry_logs(logs)
    assert (line["event"], line["log_level"]) == ("push_apns_certificate_expiring", "warning")
    assert line["days_left"] == 9  # notAfter is in whole seconds, a moment under 10 days away
    assert (line["path"], line["topic"]) == (str(cert_file), TOPIC)
    assert line["not_after"] == dt.datetime.fromtimestamp(not_after(cert_file), dt.UTC).isoformat()
    assert "PRIVATE" not in repr(logs)  # the PEM holds the key: nothing of the file's content is logged
    # More clients the same day say nothing more (a burst of sends opens `connections` of them at once).
    with capture_logs() as later:
        provider._pick()  # a new aioapns client, which reads the file again; no connection until a send
    assert expiry_logs(later) == []
    await provider.aclose()


async def test_a_renewed_certificate_shows_with_the_next_client(ca: sandbox.TestCA, tmp_path: Path) -> None:
    cert_file = client_certificate(ca, tmp_path / "apns-cert.pem", valid_for=dt.timedelta(days=10))
    provider, _ = build(cert_file)
    old = not_after(cert_file)
    client_certificate(ca, cert_file, valid_for=dt.timedelta(days=365))  # renewed on disk, no restart
    assert cert_expiry_gauge() == old  # not read until aioapns reads it
    provider._pick()
    assert cert_expiry_gauge() == not_after(cert_file) > old
    await provider.aclose()


def test_an_expired_certificate_is_logged_as_an_error_but_the_provider_is_built(
        ca: sandbox.TestCA, tmp_path: Path) -> None:
    cert_file = client_certificate(ca, tmp_path / "apns-cert.pem", valid_for=dt.timedelta(days=-2))
    provider, logs = build(cert_file)  # no ConfigError: the worker may serve FCM too
    assert cert_expiry_gauge() == not_after(cert_file) < time.time()
    [line] = expiry_logs(logs)
    assert (line["event"], line["log_level"]) == ("push_apns_certificate_expired", "error")
    assert (line["path"], line["topic"]) == (str(cert_file), TOPIC)
    assert "PRIVATE" not in repr(logs)
    assert provider.name == "apns"


def test_token_auth_sets_no_certificate_gauge(p8: Path) -> None:
    topic = "org.pushauth.token-only"
    ApnsProvider.from_settings(ApnsSettings(enabled=True, key_file=str(p8), key_id=KEY_ID, team_id=TEAM_ID,
                                            topic=topic))
    assert cert_expiry_gauge(topic) is None

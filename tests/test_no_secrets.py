"""Secrets, device tokens and codes never appear in logs or reprs.

A full enrollment and sign-in runs with every log event captured; then no captured event may contain any
secret that passed through the server: the enrollment code, the API key, the admin token, the push token,
the challenge nonce, the number, or any signed token."""

from __future__ import annotations

import aiohttp
from structlog.testing import capture_logs
from support import ADMIN_TOKEN, API_KEY, LoginFlow, RunningServer

from pushauth.challenges.service import Created
from pushauth.crypto.keys import KeyRing
from pushauth.devices.service import Enrollment
from pushauth.phone import Phone, parse_enroll_uri

PUSH_TOKEN = "fcm-device-token-that-must-never-be-logged-0123456789"


async def test_full_flow_logs_no_secret(server: RunningServer, http: aiohttp.ClientSession) -> None:
    login = LoginFlow(http, server.url)
    with capture_logs() as events:
        admin = LoginFlow(http, server.url, api_key=ADMIN_TOKEN)
        uri = await admin.enroll_uri("carol@nhs.net")
        phone = await Phone.enroll(uri, push_provider="fcm", push_token=PUSH_TOKEN, session=http)
        created = await login.create("carol@nhs.net", context={"ip": "192.0.2.7"})
        challenge = (await phone.pending())[0]
        await phone.approve(challenge, number=created["number"])
        approved = await login.status(created["id"])
        # and some refusals, whose messages must not echo what was sent
        await login.call("POST", "/v1/challenges", {"user": "carol@nhs.net", "remember_token": "rt-secret-x"})
        await phone.signed_request("POST", f"/v1/device/challenges/{created['id']}/response",
                                   {"nonce": challenge.nonce, "decision": "approve", "number": "00"})
    assert approved["status"] == "approved"
    assert len(events) >= 6, "the server should log one line per request"
    text = "\n".join(repr(e) for e in events)
    secrets = {
        "enrollment code": parse_enroll_uri(uri).code, "API key": API_KEY, "admin token": ADMIN_TOKEN,
        "push token": PUSH_TOKEN, "nonce": challenge.nonce, "challenge JWS": challenge.token,
        "assertion": approved["assertion"], "remember token": "rt-secret-x",
    }
    for what, value in secrets.items():
        assert value not in text, f"{what} appears in the logs"
    numbers = [e for e in events for v in e.values() if v == created["number"]]
    assert not numbers, "the number appears in the logs"


def test_reprs_hide_secrets() -> None:
    e = Enrollment("e1", "alice", "the-code-123", "pushauth://enroll?code=the-code-123", 0)
    assert "the-code-123" not in repr(e)
    assert "the-code-123" not in str(e)
    c = Created("c1", 0, "42")
    assert "42" not in repr(c)
    ring = KeyRing.ephemeral()
    d = str(ring.current.key.as_dict(private=True)["d"])
    for shown in (repr(ring), repr(ring.current), str(ring.current)):
        assert d not in shown


def test_redaction_processor_masks_secret_fields() -> None:
    from pushauth.logs import redact

    event = redact(None, "info", {"event": "x", "code": "abc", "token": "t", "user": "alice"})
    assert event == {"event": "x", "code": "[redacted]", "token": "[redacted]", "user": "alice"}


def test_json_log_lines_are_json_and_redacted() -> None:
    """The production renderer (JSON lines on a non-terminal), run in a child process so the global
    structlog configuration of this test run is left alone."""
    import json
    import subprocess
    import sys

    code = ("from pushauth.logs import configure; import structlog; configure('info', 'auto'); "
            "structlog.get_logger().info('enrolled', user='alice', code='s3cret-code', token='t0k', "
            "n=object())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=30)
    line = json.loads(out.stderr.decode().strip())
    assert line["event"] == "enrolled"
    assert line["level"] == "info"
    assert line["user"] == "alice"
    assert line["code"] == "[redacted]"
    assert line["token"] == "[redacted]"
    assert b"s3cret-code" not in out.stderr
    assert b"t0k" not in out.stderr


def test_settings_reprs_hide_passwords_and_sink_secrets() -> None:
    """Settings are printed at start-up and land in tracebacks: the Redis password in `redis_url`, a
    webhook's inline signing secrets and a Slack or Teams URL (the URL is the credential) stay out."""
    from pushauth.alerts.settings import SinkSettings
    from pushauth.config import Settings, StoreSettings

    store = StoreSettings(redis_url="redis://pushauth:hunter2-redis@redis.internal:6379/0")
    assert "hunter2-redis" not in repr(store)
    assert "redis://pushauth:***@redis.internal:6379/0" in repr(store)
    assert "redis://redis.internal:6379/0" in repr(StoreSettings(redis_url="redis://redis.internal:6379/0"))

    secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="
    hook = SinkSettings(name="soc", kind="webhook", url="https://soc.example/hook", secret=secret)
    rotating = SinkSettings(name="soc2", kind="webhook", url="https://soc.example/hook", secrets=[secret])
    slack = SinkSettings(name="chat", kind="slack", url="https://hooks.slack.com/services/T0/B0/s3cr3tpath")
    for sink in (hook, rotating, slack):
        assert secret not in repr(sink)
        assert "s3cr3tpath" not in repr(sink)

    settings = Settings(store=store)
    assert "hunter2-redis" not in repr(settings)

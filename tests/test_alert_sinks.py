"""Alert sinks against real receivers on 127.0.0.1 (testkit/fakes/receivers.py): Standard Webhooks checked
by the reference `standardwebhooks` library, Slack and Teams payload shapes, RFC 5424 syslog over UDP,
TCP and TLS parsed strictly, SMTP through aiosmtpd with STARTTLS. Nothing of the sinks is mocked.

Also: the settings (validation, defaults, a repr without secrets), the example configuration, the registry's
errors, and that no secret reaches a log line or a repr."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import re
import socket
import time
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog
from support import free_port

from pushauth.alerts.settings import SinkSettings
from pushauth.alerts.sinks import (
    AlertSink,
    Notification,
    SinkOutcome,
    SinkOutcomeKind,
    close_sinks,
    open_sinks,
)
from pushauth.alerts.sinks.email import EmailSink
from pushauth.alerts.sinks.slack import SlackSink
from pushauth.alerts.sinks.syslog import SyslogSink, format_message
from pushauth.alerts.sinks.teams import TeamsSink
from pushauth.alerts.sinks.webhook import WebhookSink
from pushauth.errors import ConfigError
from pushauth.logs import configure
from testkit.fakes.receivers import (
    HttpReceiver,
    Reply,
    SmtpReceiver,
    SyslogStreamReceiver,
    SyslogUdpReceiver,
    slack_check,
    standard_webhooks_check,
    teams_check,
)
from testkit.fakes.sandbox import TestCA

DELIVERED, RETRY, GONE = SinkOutcomeKind.DELIVERED, SinkOutcomeKind.RETRY, SinkOutcomeKind.GONE
SECRET = "whsec_" + base64.b64encode(b"pushauth-test-secret-0123456789ab").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the-old-secret-being-rotated-out!").decode()
SMTP_PASSWORD = "correct horse battery staple 42"
SLACK_PATH = "/services/T0001/B0002/sLaCkSeCrEtPaTh0123456789"
TEAMS_PATH = "/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sig=TeAmSsIgSeCrEt987"

ALERT: dict[str, Any] = {
    "id": "al_7Hq2xK", "kind": "denied_not_me", "severity": "critical", "user": "alice@nhs.net",
    "created_at": "2025-01-31T09:12:03Z", "updated_at": "2025-01-31T09:14:40Z", "status": "open",
    "version": 2, "challenge_id": "ch_9fQ", "device_id": "dv_3Lm",
    "context": {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Firefox/128.0",
                "location": "Leeds, GB"},
    "evidence": {
        "event_count": 3, "kinds": {"push_bombing": 2, "denied_not_me": 1},
        "events": [
            {"kind": "push_bombing", "severity": "high", "challenge_id": "ch_1", "app": "webmail"},
            {"kind": "denied_not_me", "severity": "critical", "challenge_id": "ch_9fQ", "app": "webmail",
             "phone_ip": "198.51.100.23", "reason": "not_me", "device_id": "dv_3Lm",
             "login": {"ip": "203.0.113.9", "location": "Leeds, GB",
                       "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Firefox/128.0"}},
        ],
        "containment": [{"action": "prompts_suspended", "at": "2025-01-31T09:14:40Z"},
                        {"action": "remembered_browsers_revoked", "at": "2025-01-31T09:14:40Z"}],
    },
}
NOTE = Notification("alert.created", ALERT, "al_7Hq2xK.v2.soar")


def note(**alert: Any) -> Notification:
    return Notification("alert.created", {**ALERT, **alert}, NOTE.delivery_id)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The HTTP sinks honour HTTPS_PROXY (hospital networks); the receivers here are on loopback.
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("alert-ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("other-ca"))


async def deliver_once(sink: AlertSink, notification: Notification = NOTE) -> SinkOutcome:
    try:
        return await sink.deliver(notification)
    finally:
        await sink.aclose()


def webhook(url: str, *secrets: str, timeout_s: float = 2.0, ca_file: str = "") -> WebhookSink:
    from pushauth.alerts.settings import parse_webhook_secret

    return WebhookSink("soar", url=url, keys=[parse_webhook_secret(s) for s in secrets or (SECRET,)],
                       timeout_s=timeout_s, ca_file=ca_file)


# -- settings ----------------------------------------------------------------------------------------------

# The block for config.example.toml's [alerts] section (the same text is handed over for pasting).
EXAMPLE = '''
# Sinks: where alerts are delivered (pushauth/alerts/sinks/), one [[alerts.sinks]] table each. A sink gets
# every alert of its min_severity or above, at least once; a sink whose receiver answers 410 is disabled.
# Secrets and passwords live in files only pushauth can read; they are read once, at start.
#
# A Standard Webhooks endpoint (a SOAR, a ticketing system, your own code): a signed JSON POST, as the
# wire contract describes.
# [[alerts.sinks]]
# name = "soar"                   # unique: a-z 0-9 _ - (logs, metrics, delivery records)
# kind = "webhook"                # webhook | slack | teams | syslog | email
# enabled = true
# min_severity = "info"           # info | low | medium | high | critical
# timeout_s = 10.0                # one delivery, connect to answer; after that it is retried
# url = "https://soar.trust.example/hooks/pushauth"    # https:// (plain http:// only to localhost)
# secret_file = "/etc/pushauth/soar-webhook.secret"    # whsec_...; two lines while rotating
# ca_file = "/etc/pushauth/trust-ca.pem"               # a private CA instead of the system's
#
# Instead of secret_file, inline:
#   secret = "whsec_<base64 of 24..64 random bytes>"
#   secrets = ["whsec_<new>", "whsec_<old>"]           # while rotating: each signs, either verifies
#
# Slack: an incoming webhook (Slack app > Incoming Webhooks). The URL is the credential.
# [[alerts.sinks]]
# name = "soc-slack"
# kind = "slack"
# min_severity = "medium"
# url = "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
#
# Microsoft Teams: a Workflows webhook ("Post to a channel when a webhook request is received"). The
# Office 365 connector webhooks (MessageCard) are being retired by Microsoft and are not supported.
# [[alerts.sinks]]
# name = "soc-teams"
# kind = "teams"
# min_severity = "high"
# url = "https://prod-00.uksouth.logic.azure.com/workflows/0000/triggers/manual/paths/invoke?sig=XXXX"
#
# Syslog (RFC 5424) to a SIEM: structured data [pushauth@32473 ...], the JSON event as MSG.
# [[alerts.sinks]]
# name = "siem"
# kind = "syslog"
# host = "siem.trust.example"
# transport = "tls"               # tls (RFC 5425) | tcp (RFC 6587) | udp (RFC 5426)
# port = 6514                     # default: 6514 for tls, 514 for tcp and udp
# ca_file = "/etc/pushauth/siem-ca.pem"
# server_name = ""                # the name the certificate must carry, when not host
# facility = 10                   # 10 = authpriv
# hostname = ""                   # the HOSTNAME field; empty: this machine's name
# max_datagram_bytes = 8192       # udp: longer messages are cut and marked truncated="1"
#
# E-mail through the site's SMTP relay.
# [[alerts.sinks]]
# name = "soc-mail"
# kind = "email"
# min_severity = "high"
# smtp_host = "smtp.trust.example"
# smtp_port = 587                 # default: 587 for starttls, 465 for tls, 25 for none
# security = "starttls"           # starttls | tls | none (none: only to a relay on localhost)
# username = "pushauth-alerts"
# password_file = "/etc/pushauth/smtp.password"
# mail_from = "pushauth@trust.example"
# mail_to = ["soc@trust.example", "security-oncall@trust.example"]
'''


def example_sinks() -> list[dict[str, Any]]:
    blocks = re.findall(r"^# \[\[alerts\.sinks\]\]\n((?:# \w+ = .*\n)+)", EXAMPLE, re.MULTILINE)
    return [tomllib.loads("".join(line[2:] + "\n" for line in block.splitlines())) for block in blocks]


def test_example_block_documents_every_field_and_parses() -> None:
    for field in msgspec.structs.fields(SinkSettings):
        assert re.search(rf"^[ \t]*(#[ \t]*)?{field.name}[ \t]*=", EXAMPLE, re.MULTILINE), field.name
    sinks = [msgspec.convert(block, SinkSettings) for block in example_sinks()]
    assert [s.kind for s in sinks] == ["webhook", "slack", "teams", "syslog", "email"]
    assert sinks[3].syslog_port == 6514
    assert sinks[4].smtp_port_or_default == 587


def test_defaults_per_transport_and_security() -> None:
    def sink(**fields: Any) -> SinkSettings:
        return msgspec.convert({"name": "s", **fields}, SinkSettings)

    assert sink(kind="syslog", host="siem").syslog_port == 6514
    assert sink(kind="syslog", host="siem", transport="udp").syslog_port == 514
    assert sink(kind="syslog", host="siem", transport="tcp", port=1514).syslog_port == 1514
    mail = {"kind": "email", "mail_from": "a@b.example", "mail_to": ["c@d.example"]}
    assert sink(smtp_host="smtp.example", **mail).smtp_port_or_default == 587
    assert sink(smtp_host="smtp.example", security="tls", **mail).smtp_port_or_default == 465
    assert sink(smtp_host="localhost", security="none", **mail).smtp_port_or_default == 25
    rotating = sink(kind="webhook", url="http://127.0.0.1:9/x", secrets=[SECRET, OLD_SECRET])
    assert rotating.min_severity == "info"


FROM, TO = "a@b.example", ["c@d.example"]
MAIL = {"mail_from": FROM, "mail_to": TO}


@pytest.mark.parametrize(("fields", "message"), [
    ({"name": "Bad Name", "kind": "slack", "url": "https://h.example/x"}, "sink name"),
    ({"name": "s", "kind": "pager"}, "Invalid enum value 'pager'"),
    ({"name": "s", "kind": "slack", "url": "http://hooks.slack.com/x"}, "url must be https://"),
    ({"name": "s", "kind": "slack", "url": "https://h.example/x", "timeout_s": 0}, "timeout_s"),
    ({"name": "s", "kind": "slack", "url": "https://h.example/x", "secret": SECRET}, "secret does not apply"),
    ({"name": "s", "kind": "slack", "url": "https://h.example/x", "password": "x"}, "unknown field"),
    ({"name": "s", "kind": "webhook", "url": "https://h.example/x"}, "exactly one of secret"),
    ({"name": "s", "kind": "webhook", "url": "https://h.example/x", "secret": "abc"}, "start with whsec_"),
    ({"name": "s", "kind": "webhook", "url": "https://h.example/x", "secret": "whsec_c2hvcnQ="},
     "24..64 bytes"),
    ({"name": "s", "kind": "webhook", "url": "https://h.example/x", "secret": "whsec_!!!"}, "base64"),
    ({"name": "s", "kind": "webhook", "url": "https://h.example/x", "secret": SECRET,
      "secret_file": "/x"}, "exactly one of secret"),
    ({"name": "s", "kind": "syslog"}, "host is required"),
    ({"name": "s", "kind": "syslog", "host": "h", "facility": 24}, "facility"),
    ({"name": "s", "kind": "syslog", "host": "h", "transport": "udp", "ca_file": "/ca"}, "need transport"),
    ({"name": "s", "kind": "syslog", "host": "h", "max_datagram_bytes": 100}, "max_datagram_bytes"),
    ({"name": "s", "kind": "syslog", "host": "h", "hostname": "two words"}, "hostname"),
    ({"name": "s", "kind": "email", "smtp_host": "smtp.example", "security": "none", **MAIL},
     "only allowed to 127.0.0.1"),
    ({"name": "s", "kind": "email", "smtp_host": "smtp.example", "username": "u", **MAIL}, "go together"),
    ({"name": "s", "kind": "email", "smtp_host": "smtp.example", "mail_from": "a@b.example"}, "mail_to"),
    ({"name": "s", "kind": "email", "smtp_host": "smtp.example", "mail_from": "x",
      "mail_to": ["c@d.example"]}, "mail_from"),
])
def test_settings_refuse(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(fields, SinkSettings)


def test_settings_repr_shows_no_secret() -> None:
    hook = SinkSettings(name="soar", kind="webhook", url="https://soar.example/hook/t0ken", secret=SECRET)
    slack = SinkSettings(name="soc", kind="slack", url="https://hooks.slack.com" + SLACK_PATH)
    rotating = SinkSettings(name="r", kind="webhook", url="https://h.example/x", secrets=[SECRET, OLD_SECRET])
    shown = " ".join(repr(s) + str(s) for s in (hook, slack, rotating))
    for secret in (SECRET, OLD_SECRET, SLACK_PATH, "t0ken", SECRET[6:]):
        assert secret not in shown
    assert "https://hooks.slack.com/..." in shown
    assert "name='soc'" in shown


# -- registry ----------------------------------------------------------------------------------------------


async def test_open_sinks_builds_the_enabled_ones(tmp_path: Path) -> None:
    (tmp_path / "hook.secret").write_text(f"{SECRET}\n{OLD_SECRET}\n")
    (tmp_path / "smtp.password").write_text(SMTP_PASSWORD + "\n")
    settings = [
        SinkSettings(name="soar", kind="webhook", url="https://h.example/x",
                     secret_file=str(tmp_path / "hook.secret")),
        SinkSettings(name="off", kind="slack", url="https://hooks.slack.com/x", enabled=False),
        SinkSettings(name="chat", kind="teams", url="https://t.example/x"),
        SinkSettings(name="siem", kind="syslog", host="127.0.0.1", transport="udp"),
        SinkSettings(name="mail", kind="email", smtp_host="smtp.example", username="u",
                     password_file=str(tmp_path / "smtp.password"), mail_from=FROM, mail_to=TO),
    ]
    sinks = open_sinks(settings, console_url="https://pushauth.example/console")
    try:
        assert {n: s.kind for n, s in sinks.items()} == {"soar": "webhook", "chat": "teams", "siem": "syslog",
                                                          "mail": "email"}
        assert "keys=2" in repr(sinks["soar"])
        assert SMTP_PASSWORD not in repr(sinks["mail"])
        assert SECRET not in repr(sinks["soar"])
    finally:
        await close_sinks(sinks)


def test_open_sinks_errors_name_the_sink(tmp_path: Path) -> None:
    bad = tmp_path / "bad.secret"
    bad.write_text("whsec_not-base64!!\n")
    url = "https://h.example/x"
    cases: list[tuple[SinkSettings, str]] = [
        (SinkSettings(name="a", kind="webhook", url=url, secret_file=str(tmp_path / "missing")),
         "alert sink a: cannot read"),
        (SinkSettings(name="b", kind="webhook", url=url, secret_file=str(bad)), "alert sink b: secret_file"),
        (SinkSettings(name="c", kind="email", smtp_host="smtp.example", username="u",
                      password_file=str(tmp_path / "nope"), mail_from=FROM, mail_to=TO),
         "alert sink c: cannot read password_file"),
        (SinkSettings(name="d", kind="syslog", host="h", ca_file=str(tmp_path / "no-ca.pem")),
         "alert sink d: cannot use ca_file"),
    ]
    for settings, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)) as err:
            open_sinks([settings])
        assert "not-base64" not in str(err.value)
    twice = SinkSettings(name="x", kind="teams", url="https://t.example/x")
    with pytest.raises(ConfigError, match="unique: x"):
        open_sinks([twice, twice])


# -- webhook -----------------------------------------------------------------------------------------------


async def test_webhook_is_standard_webhooks() -> None:
    async with HttpReceiver(check=standard_webhooks_check(SECRET)) as receiver:
        sink = webhook(receiver.url + "/hooks/pushauth")
        before = int(time.time())
        first = await sink.deliver(NOTE)
        acked = Notification("alert.updated", {**ALERT, "status": "acked"}, "al_7Hq2xK.v3")
        second = await sink.deliver(acked)
        await sink.aclose()
    assert (first, second) == (SinkOutcome(DELIVERED), SinkOutcome(DELIVERED))
    assert receiver.errors == []
    req = receiver.requests[0]
    assert req.path == "/hooks/pushauth"
    assert req.headers["webhook-id"] == "al_7Hq2xK.v2.soar"
    assert before <= int(req.headers["webhook-timestamp"]) <= time.time()
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", req.headers["webhook-signature"])
    assert req.headers["content-type"] == "application/json"
    assert re.fullmatch(r"pushauth/\d+\.\d+\.\d+", req.headers["user-agent"])
    body = req.json()
    assert set(body) == {"type", "timestamp", "data"}
    assert body["type"] == "alert.created"
    assert body["data"] == ALERT
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["timestamp"])
    assert req.body == msgspec.json.encode(body)  # compact JSON, encoded once: signed bytes = sent bytes
    assert receiver.requests[1].json()["type"] == "alert.updated"
    # one session, one kept-alive connection
    assert receiver.requests[0].client_port == receiver.requests[1].client_port


async def test_webhook_signs_with_every_secret_while_rotating() -> None:
    async with HttpReceiver(check=standard_webhooks_check(OLD_SECRET)) as old, \
            HttpReceiver(check=standard_webhooks_check(SECRET)) as new:
        assert await deliver_once(webhook(old.url, SECRET, OLD_SECRET)) == SinkOutcome(DELIVERED)
        assert await deliver_once(webhook(new.url, SECRET, OLD_SECRET)) == SinkOutcome(DELIVERED)
        assert await deliver_once(webhook(old.url, SECRET)) == SinkOutcome(RETRY, "http_401")
    assert len(old.requests[0].headers["webhook-signature"].split(" ")) == 2
    assert old.errors == ["signature: No matching signature found"]


@pytest.mark.parametrize(("reply", "expected"), [
    (Reply(200), SinkOutcome(DELIVERED)),
    (Reply(204), SinkOutcome(DELIVERED)),
    (Reply(202), SinkOutcome(DELIVERED)),
    (Reply(410, "endpoint removed"), SinkOutcome(GONE, "http_410")),
    (Reply(429, headers={"Retry-After": "7"}), SinkOutcome(RETRY, "http_429", 7.0)),
    (Reply(500), SinkOutcome(RETRY, "http_500")),
    (Reply(404), SinkOutcome(RETRY, "http_404")),
    (Reply(302, headers={"Location": "http://127.0.0.1:1/elsewhere"}), SinkOutcome(RETRY, "http_302")),
])
async def test_webhook_answers(reply: Reply, expected: SinkOutcome) -> None:
    async with HttpReceiver() as receiver:
        receiver.script(reply)
        assert await deliver_once(webhook(receiver.url)) == expected
        assert len(receiver.requests) == 1  # a redirect is not followed


async def test_retry_after_as_http_date() -> None:
    async with HttpReceiver() as receiver:
        receiver.script(Reply(503, headers={"Retry-After": email.utils.formatdate(time.time() + 120,
                                                                                  usegmt=True)}))
        outcome = await deliver_once(webhook(receiver.url))
    assert outcome.kind is RETRY
    assert outcome.reason == "http_503"
    assert outcome.retry_after_s is not None
    assert 110 <= outcome.retry_after_s <= 121


async def test_slow_receiver_times_out_within_the_timeout() -> None:
    async with HttpReceiver() as receiver:
        receiver.script(Reply(200, delay_s=10))
        started = time.monotonic()
        outcome = await deliver_once(webhook(receiver.url, timeout_s=0.3))
        took = time.monotonic() - started
    assert outcome == SinkOutcome(RETRY, "timeout")
    assert took < 1.5


async def test_connection_refused() -> None:
    outcome = await deliver_once(webhook(f"http://127.0.0.1:{free_port()}/hook"))
    assert outcome == SinkOutcome(RETRY, "connection")


async def test_https_checks_the_certificate(ca: TestCA, other_ca: TestCA) -> None:
    tls = ca.server_context("localhost", alpn=["http/1.1"])
    async with HttpReceiver(ssl_context=tls, check=standard_webhooks_check(SECRET)) as receiver:
        assert await deliver_once(webhook(receiver.url, ca_file=str(ca.ca_file))) == SinkOutcome(DELIVERED)
        untrusted = await deliver_once(webhook(receiver.url, ca_file=str(other_ca.ca_file)))
        system_cas = await deliver_once(webhook(receiver.url))
    assert untrusted == SinkOutcome(RETRY, "tls")
    assert system_cas == SinkOutcome(RETRY, "tls")
    assert len(receiver.requests) == 1


# -- Slack and Teams ---------------------------------------------------------------------------------------

HOSTILE_UA = ("<!channel> <https://evil.example|Reset your password> [Reset](https://evil.example) "
              + "x" * 600)


async def test_slack_message() -> None:
    async with HttpReceiver(check=slack_check) as receiver:
        receiver.script(Reply(200, "ok"))
        sink = SlackSink("soc", url=receiver.url + SLACK_PATH, timeout_s=2,
                         console_url="https://pushauth.example/console/")
        hostile = {**ALERT, "context": {**ALERT["context"], "user_agent": HOSTILE_UA}}
        hostile["evidence"] = {**ALERT["evidence"], "events": []}
        first = await sink.deliver(NOTE)
        second = await sink.deliver(Notification("alert.updated", hostile, "d2"))
        await sink.aclose()
    assert (first, second) == (SinkOutcome(DELIVERED), SinkOutcome(DELIVERED))
    assert receiver.errors == []
    assert receiver.requests[0].path == SLACK_PATH
    msg = receiver.requests[0].json()
    assert msg["text"] == ("CRITICAL: User reported a sign-in they did not request: alice@nhs.net "
                           "(alert al_7Hq2xK)")
    header = msg["blocks"][0]["text"]["text"]
    assert header == ":rotating_light: CRITICAL: User reported a sign-in they did not request"
    fields = {f["text"].split("\n")[0]: f["text"].split("\n", 1)[1]
              for b in msg["blocks"] if b["type"] == "section" for f in b["fields"]}
    assert fields["*User*"] == "alice@nhs.net"
    assert fields["*Time*"] == "2025-01-31 09:12:03 UTC"
    assert fields["*Application*"] == "webmail"
    assert fields["*Sign-in IP*"] == "203.0.113.9"
    assert fields["*Sign-in location*"] == "Leeds, GB"
    assert fields["*Browser*"].startswith("Mozilla/5.0")
    assert fields["*Phone IP*"] == "198.51.100.23"
    assert fields["*Events in this incident*"] == "3"
    assert fields["*What happened*"] == "2 push_bombing, 1 denied_not_me"
    assert fields["*Action taken*"] == "prompts suspended, remembered browsers revoked"
    footer = msg["blocks"][-1]["elements"][0]["text"]
    assert "<https://pushauth.example/console/alerts/al_7Hq2xK|Open alert al_7Hq2xK" in footer
    # a user agent chosen by whoever signed in stays text: no mention, no disguised link, bounded
    updated = receiver.requests[1].json()
    assert updated["blocks"][0]["text"]["text"] == (
        ":rotating_light: CRITICAL: Update: User reported a sign-in they did not request")
    browser = next(f["text"] for b in updated["blocks"] if b["type"] == "section" for f in b["fields"]
                   if f["text"].startswith("*Browser*"))
    assert "<!channel>" not in browser
    assert "&lt;!channel&gt;" in browser
    assert "<https://evil" not in browser
    assert len(browser) < 260
    assert browser.endswith("…")


async def test_slack_errors() -> None:
    async with HttpReceiver() as receiver:
        receiver.script(Reply(404, "no_service"), Reply(410, "channel_is_archived"))
        sink = SlackSink("soc", url=receiver.url + SLACK_PATH, timeout_s=2)
        assert await sink.deliver(NOTE) == SinkOutcome(RETRY, "http_404")
        assert await sink.deliver(NOTE) == SinkOutcome(GONE, "http_410")
        await sink.aclose()


async def test_teams_adaptive_card() -> None:
    async with HttpReceiver(check=teams_check, default=Reply(202)) as receiver:
        sink = TeamsSink("soc", url=receiver.url + TEAMS_PATH, timeout_s=2,
                         console_url="https://pushauth.example/console")
        hostile = {**ALERT, "context": {**ALERT["context"], "user_agent": HOSTILE_UA},
                   "evidence": {"event_count": 1}}
        assert await sink.deliver(NOTE) == SinkOutcome(DELIVERED)
        assert await sink.deliver(Notification("alert.created", hostile, "d2")) == SinkOutcome(DELIVERED)
        await sink.aclose()
    assert receiver.errors == []
    card = receiver.requests[0].json()["attachments"][0]["content"]
    title, factset = card["body"][0], card["body"][1]
    assert title["text"] == "CRITICAL: User reported a sign-in they did not request"
    assert title["color"] == "Attention"
    assert title["size"] == "Large"
    facts = {f["title"]: f["value"] for f in factset["facts"]}
    assert facts["User"] == "alice@nhs.net"
    assert facts["Phone IP"] == "198.51.100.23"
    assert facts["Sign-in IP"] == "203.0.113.9"
    assert facts["Events in this incident"] == "3"
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open in console",
                                "url": "https://pushauth.example/console/alerts/al_7Hq2xK"}]
    hostile_facts = receiver.requests[1].json()["attachments"][0]["content"]["body"][1]["facts"]
    browser = next(f["value"] for f in hostile_facts if f["title"] == "Browser")
    assert "](" not in browser
    assert len(browser) < 210


# -- syslog ------------------------------------------------------------------------------------------------


def syslog(port: int, transport: str = "udp", **kw: Any) -> SyslogSink:
    kw.setdefault("timeout_s", 2.0)
    return SyslogSink("siem", host="127.0.0.1", port=port, transport=transport,  # type: ignore[arg-type]
                      hostname="pushauth-test", **kw)


async def test_syslog_udp_is_strict_rfc5424() -> None:
    tricky = 'eve"]\\@nhs.net'
    async with SyslogUdpReceiver() as receiver:
        sink = syslog(receiver.port)
        assert await sink.deliver(NOTE) == SinkOutcome(DELIVERED)
        assert await sink.deliver(note(user=tricky, severity="high")) == SinkOutcome(DELIVERED)
        await sink.aclose()
        first, second = await receiver.wait_for(2)
    assert (first.facility, first.severity, first.version) == (10, 2, 1)
    assert receiver.messages[0].startswith(b"<82>1 ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first.timestamp)
    assert (first.hostname, first.app_name, first.procid, first.msgid) == ("pushauth-test", "pushauth", "-",
                                                                           "denied_not_me")
    assert first.sd == {"pushauth@32473": {
        "id": "al_7Hq2xK", "event": "alert.created", "kind": "denied_not_me", "severity": "critical",
        "status": "open", "user": "alice@nhs.net", "challenge": "ch_9fQ", "device": "dv_3Lm",
        "ip": "203.0.113.9", "delivery": "al_7Hq2xK.v2.soar"}}
    assert first.bom
    event = msgspec.json.decode(first.msg)
    assert event["type"] == "alert.created"
    assert event["data"] == ALERT
    assert (second.facility, second.severity) == (10, 3)
    assert second.sd["pushauth@32473"]["user"] == tricky  # escaped on the wire, intact once parsed
    assert b'user="eve\\"\\]\\\\@nhs.net"' in receiver.messages[1]


def test_syslog_severities_and_facility() -> None:
    for severity, code in {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}.items():
        message = format_message(note(severity=severity), facility=4, hostname="h", ts=time.time())
        assert message.startswith(f"<{4 * 8 + code}>1 ".encode())


async def test_syslog_udp_truncates_at_a_utf8_boundary() -> None:
    long = {**ALERT, "evidence": {"notes": "é€😀" * 2000}}
    async with SyslogUdpReceiver() as receiver:
        sink = syslog(receiver.port, max_datagram_bytes=1000)
        for n in range(1, 5):  # cut at different places inside the multi-byte characters
            cut = Notification("alert.created", {**long, "id": "a" * n}, "d")
            assert await sink.deliver(cut) == SinkOutcome(DELIVERED)
        assert await sink.deliver(note(evidence={"event_count": 1})) == SinkOutcome(DELIVERED)  # fits
        await sink.aclose()
        messages = await receiver.wait_for(5)  # parse_syslog decodes MSG as strict UTF-8
    for raw, message in zip(receiver.messages[:4], messages[:4], strict=True):
        assert 990 <= len(raw) <= 1000
        assert message.sd["pushauth@32473"]["truncated"] == "1"
        assert message.msg.startswith('{"type":"alert.created"')
    assert "truncated" not in messages[4].sd["pushauth@32473"]


async def test_syslog_tcp_octet_counting_and_reconnect() -> None:
    async with SyslogStreamReceiver() as receiver:
        sink = syslog(receiver.port, "tcp")
        for i in range(3):
            assert await sink.deliver(note(id=f"al_{i}")) == SinkOutcome(DELIVERED)
        got = await receiver.wait_for(3)
        assert [m.sd["pushauth@32473"]["id"] for m in got] == ["al_0", "al_1", "al_2"]
        assert receiver.connections == 1
        # the collector restarts: the next delivery goes out on a new connection
        await receiver.stop()
        await receiver.start()
        assert await sink.deliver(note(id="al_3")) == SinkOutcome(DELIVERED)
        assert (await receiver.wait_for(4))[3].sd["pushauth@32473"]["id"] == "al_3"
        assert receiver.connections == 2
        # the collector is down (for longer than one turn of the event loop): RETRY, and delivered
        # again once it is back
        await receiver.stop()
        await asyncio.sleep(0.05)
        assert await sink.deliver(note(id="al_4")) == SinkOutcome(RETRY, "connection")
        await receiver.start()
        assert await sink.deliver(note(id="al_5")) == SinkOutcome(DELIVERED)
        assert (await receiver.wait_for(5))[4].sd["pushauth@32473"]["id"] == "al_5"
        await sink.aclose()
    assert receiver.errors == []


async def test_syslog_tls(ca: TestCA, other_ca: TestCA) -> None:
    async with SyslogStreamReceiver(ssl_context=ca.server_context("siem.test", alpn=[])) as receiver:
        sink = syslog(receiver.port, "tls", ca_file=str(ca.ca_file))
        assert await sink.deliver(NOTE) == SinkOutcome(DELIVERED)
        assert await sink.deliver(NOTE) == SinkOutcome(DELIVERED)
        await sink.aclose()
        named = syslog(receiver.port, "tls", ca_file=str(ca.ca_file), server_name="siem.test")
        assert await deliver_once(named) == SinkOutcome(DELIVERED)
        wrong_name = syslog(receiver.port, "tls", ca_file=str(ca.ca_file), server_name="other.test")
        assert await deliver_once(wrong_name) == SinkOutcome(RETRY, "tls")
        untrusted = syslog(receiver.port, "tls", ca_file=str(other_ca.ca_file))
        assert await deliver_once(untrusted) == SinkOutcome(RETRY, "tls")
        got = await receiver.wait_for(3)
    assert receiver.connections == 2  # the refused handshakes never got that far
    assert all(m.msgid == "denied_not_me" for m in got)


# -- e-mail ------------------------------------------------------------------------------------------------


def mailer(port: int, security: str = "starttls", **kw: Any) -> EmailSink:
    kw.setdefault("timeout_s", 2.0)
    return EmailSink("soc-mail", smtp_host="127.0.0.1", smtp_port=port,
                     security=security,  # type: ignore[arg-type]
                     mail_from="pushauth@trust.example",
                     mail_to=["soc@trust.example", "oncall@trust.example"],
                     console_url="https://pushauth.example/console", **kw)


async def test_email_over_starttls_with_login(ca: TestCA) -> None:
    tls = ca.server_context("mail.test", alpn=[])
    async with SmtpReceiver(tls_context=tls, users={"pushauth": SMTP_PASSWORD}) as receiver:
        sink = mailer(receiver.port, username="pushauth", password=SMTP_PASSWORD, ca_file=str(ca.ca_file))
        assert await deliver_once(sink) == SinkOutcome(DELIVERED)
    [mail] = receiver.mails
    assert mail.tls
    assert mail.login == "pushauth"
    assert mail.mail_from == "pushauth@trust.example"
    assert mail.rcpt_tos == ["soc@trust.example", "oncall@trust.example"]
    m = mail.message
    assert m["From"] == "pushauth <pushauth@trust.example>"
    assert m["To"] == "soc@trust.example, oncall@trust.example"
    assert m["Subject"] == "[pushauth] CRITICAL: denied_not_me for alice@nhs.net"
    assert m["Message-ID"] == "<al_7Hq2xK.v2.soar@trust.example>"
    assert m["Auto-Submitted"] == "auto-generated"
    body = m.get_content().replace("\r\n", "\n")
    assert body.startswith("CRITICAL: User reported a sign-in they did not request\n")
    for line in ("User:                    alice@nhs.net", "Phone IP:                198.51.100.23",
                 "Open in the console: https://pushauth.example/console/alerts/al_7Hq2xK"):
        assert line in body


async def test_email_answers(ca: TestCA, other_ca: TestCA) -> None:
    tls = ca.server_context("mail.test", alpn=[])
    async with SmtpReceiver(tls_context=tls, users={"pushauth": SMTP_PASSWORD}) as receiver:
        receiver.replies.append("451 4.3.0 Try again later")
        ca_file = str(ca.ca_file)
        assert await deliver_once(mailer(receiver.port, ca_file=ca_file)) == SinkOutcome(RETRY, "smtp_451")
        wrong = mailer(receiver.port, ca_file=ca_file, username="pushauth", password="wrong")
        assert await deliver_once(wrong) == SinkOutcome(RETRY, "smtp_535")
        untrusted = mailer(receiver.port, ca_file=str(other_ca.ca_file))
        assert await deliver_once(untrusted) == SinkOutcome(RETRY, "tls")
        assert await deliver_once(mailer(receiver.port, ca_file=ca_file)) == SinkOutcome(DELIVERED)
    assert len(receiver.mails) == 2
    assert set(receiver.logins) == {("pushauth", False)}  # (aiosmtplib tries each mechanism)
    assert await deliver_once(mailer(free_port())) == SinkOutcome(RETRY, "connection")


async def test_email_never_falls_back_to_plain_text() -> None:
    async with SmtpReceiver() as receiver:  # offers no STARTTLS
        assert await deliver_once(mailer(receiver.port)) == SinkOutcome(RETRY, "smtp_no_starttls")
        assert await deliver_once(mailer(receiver.port, "none")) == SinkOutcome(DELIVERED)
    assert len(receiver.mails) == 1
    assert not receiver.mails[0].tls


async def test_email_implicit_tls(ca: TestCA) -> None:
    tls = ca.server_context("mail.test", alpn=[])
    async with SmtpReceiver(tls_context=tls, implicit_tls=True) as receiver:
        sink = mailer(receiver.port, "tls", ca_file=str(ca.ca_file))
        assert await deliver_once(sink) == SinkOutcome(DELIVERED)
    assert receiver.mails[0].tls


# -- no secret in logs or reprs ----------------------------------------------------------------------------


async def test_no_secret_in_logs_or_reprs(capfd: pytest.CaptureFixture[str], ca: TestCA,
                                          tmp_path: Path) -> None:
    configure("debug", "json")  # as the worker does: JSON lines on stderr
    # Loggers cached on first use would keep this configuration for the rest of the run (other tests
    # capture logs with structlog.testing): same processors, no caching, and reset afterwards.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        secret_file = tmp_path / "hook.secret"
        secret_file.write_text(SECRET + "\n")
        password_file = tmp_path / "smtp.password"
        password_file.write_text(SMTP_PASSWORD + "\n")
        async with HttpReceiver() as http, \
                SmtpReceiver(tls_context=ca.server_context("mail.test", alpn=[]),
                             users={"pushauth": SMTP_PASSWORD}) as smtp:
            settings = [
                SinkSettings(name="soar", kind="webhook", url=http.url + "/hook",
                             secret_file=str(secret_file), timeout_s=0.3),
                SinkSettings(name="slack", kind="slack", url=http.url + SLACK_PATH, timeout_s=0.3),
                SinkSettings(name="teams", kind="teams", url=http.url + TEAMS_PATH, timeout_s=0.3),
                SinkSettings(name="mail", kind="email", smtp_host="127.0.0.1", smtp_port=smtp.port,
                             username="nobody", password_file=str(password_file), ca_file=str(ca.ca_file),
                             mail_from=FROM, mail_to=TO),
            ]
            sinks = open_sinks(settings)
            outcomes = []
            for reply in (Reply(200), Reply(500, "boom"), Reply(200, delay_s=5)):
                for name in ("soar", "slack", "teams"):
                    http.script(reply)
                    outcomes.append(await sinks[name].deliver(NOTE))
            outcomes.append(await sinks["mail"].deliver(NOTE))  # 535: wrong user
            shown = " ".join(repr(s) for s in [*sinks.values(), *settings])
            await close_sinks(sinks)
            unreachable = open_sinks([SinkSettings(name="gone", kind="slack", timeout_s=0.3,
                                                   url=f"http://127.0.0.1:{free_port()}{SLACK_PATH}")])
            outcomes.append(await unreachable["gone"].deliver(NOTE))
            await close_sinks(unreachable)
    finally:
        structlog.reset_defaults()
    assert [o.reason for o in outcomes] == ["", "", "", "http_500", "http_500", "http_500",
                                            "timeout", "timeout", "timeout", "smtp_535", "connection"]
    logs = capfd.readouterr().err
    assert logs.count('"alert_sink_failed"') >= 5
    assert logs.count('"alert_sink_delivered"') >= 3
    assert "http://127.0.0.1" in logs  # the origin is logged ...
    for secret in (SECRET, SECRET[6:], SMTP_PASSWORD, SLACK_PATH, TEAMS_PATH, "sLaCkSeCrEt", "TeAmSsIg"):
        assert secret not in logs, f"{secret!r} is in the logs"  # ... never a path or a secret
        assert secret not in shown, f"{secret!r} is in a repr"


async def test_syslog_hostname_defaults_to_this_machine() -> None:
    async with SyslogUdpReceiver() as receiver:
        sink = SyslogSink("siem", host="127.0.0.1", port=receiver.port, transport="udp", timeout_s=1)
        assert await deliver_once(sink) == SinkOutcome(DELIVERED)
        [message] = await receiver.wait_for(1)
    assert message.hostname == re.sub(r"[^\x21-\x7e]", "_", socket.gethostname())


def test_a_lock_that_joins_a_more_severe_alert_is_in_the_title() -> None:
    """Ten wrong numbers after MFA fatigue lock the account inside the critical alert already open; the
    receiver's title must say so, not only the "Action taken" row (issue 14, item 12)."""
    from pushauth.alerts.sinks._facts import facts

    plain = facts("alert.created", ALERT)
    assert plain.title == "User reported a sign-in they did not request"
    locked = {**ALERT, "evidence": {**ALERT["evidence"], "containment": [
        *ALERT["evidence"]["containment"], {"action": "account_locked", "at": "2025-01-31T09:15:02Z"}]}}
    assert facts("alert.updated", locked).title == \
        "Update: User reported a sign-in they did not request; the account was locked"
    # the lock's own alert says it once
    own = {**locked, "kind": "account_locked", "severity": "high"}
    assert facts("alert.created", own).title == "Account locked after repeated wrong numbers or access codes"

"""Building the configured sinks; whoever delivers alerts owns and closes them (the alert worker, or the
server itself with the embedded store).

Every file a sink needs (webhook secrets, SMTP password, CA certificates) is read here, once: a missing or
malformed one is a ConfigError naming the sink when the worker starts, not a failed delivery hours later.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path

from pushauth.alerts.settings import SinkSettings, parse_webhook_secret
from pushauth.alerts.sinks.base import AlertSink
from pushauth.alerts.sinks.email import EmailSink
from pushauth.alerts.sinks.slack import SlackSink
from pushauth.alerts.sinks.syslog import SyslogSink
from pushauth.alerts.sinks.teams import TeamsSink
from pushauth.alerts.sinks.webhook import WebhookSink
from pushauth.errors import ConfigError


def open_sinks(settings: Sequence[SinkSettings], *, console_url: str = "") -> dict[str, AlertSink]:
    """The enabled sinks by name. Raises ConfigError naming the sink for an unreadable file or a
    malformed secret."""
    names = [s.name for s in settings]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"alert sink names must be unique: {', '.join(twice)}")
    sinks: dict[str, AlertSink] = {}
    for s in settings:
        if not s.enabled:
            continue
        try:
            sinks[s.name] = _open(s, console_url)
        except (OSError, ssl.SSLError) as exc:  # the CA file
            raise ConfigError(f"alert sink {s.name}: cannot use ca_file {s.ca_file}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    return sinks


async def close_sinks(sinks: Mapping[str, AlertSink]) -> None:
    for sink in sinks.values():
        await sink.aclose()


def _open(s: SinkSettings, console_url: str) -> AlertSink:
    t, ca = s.timeout_s, s.ca_file
    if s.kind == "webhook":
        return WebhookSink(s.name, url=s.url, keys=_webhook_keys(s), timeout_s=t, ca_file=ca)
    if s.kind == "slack":
        return SlackSink(s.name, url=s.url, console_url=console_url, timeout_s=t, ca_file=ca)
    if s.kind == "teams":
        return TeamsSink(s.name, url=s.url, console_url=console_url, timeout_s=t, ca_file=ca)
    if s.kind == "syslog":
        return SyslogSink(s.name, host=s.host, port=s.syslog_port, transport=s.transport, facility=s.facility,
                          hostname=s.hostname, max_datagram_bytes=s.max_datagram_bytes,
                          server_name=s.server_name, timeout_s=t, ca_file=ca)
    password = _read(s, "password_file", s.password_file).rstrip("\r\n") if s.password_file else ""
    if s.password_file and not password:
        raise ConfigError(f"alert sink {s.name}: password_file {s.password_file} is empty")
    return EmailSink(s.name, smtp_host=s.smtp_host, smtp_port=s.smtp_port_or_default, security=s.security,
                     mail_from=s.mail_from, mail_to=s.mail_to, username=s.username, password=password,
                     console_url=console_url, timeout_s=t, ca_file=ca)


def _webhook_keys(s: SinkSettings) -> list[bytes]:
    if s.secret_file:
        # One secret per line: two while rotating (the receiver accepts either signature).
        secrets = _read(s, "secret_file", s.secret_file).split()
        where = f"secret_file {s.secret_file}"
    else:
        secrets = [s.secret] if s.secret else list(s.secrets)
        where = "secret"
    if not secrets:
        raise ConfigError(f"alert sink {s.name}: {where} holds no secret")
    try:
        return [parse_webhook_secret(secret) for secret in secrets]
    except ValueError as exc:  # the message never holds the secret
        raise ConfigError(f"alert sink {s.name}: {where}: {exc}") from None


def _read(s: SinkSettings, field: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"alert sink {s.name}: cannot read {field} {path}: {why}") from None

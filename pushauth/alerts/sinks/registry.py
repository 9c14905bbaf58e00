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
    names = [conf.name for conf in settings]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"alert sink names must be unique: {', '.join(twice)}")
    sinks: dict[str, AlertSink] = {}
    for conf in settings:
        if not conf.enabled:
            continue
        try:
            sinks[conf.name] = _open(conf, console_url)
        except (OSError, ssl.SSLError) as exc:  # the CA file
            raise ConfigError(f"alert sink {conf.name}: cannot use ca_file {conf.ca_file}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    return sinks


async def close_sinks(sinks: Mapping[str, AlertSink]) -> None:
    for sink in sinks.values():
        await sink.aclose()


def _open(conf: SinkSettings, console_url: str) -> AlertSink:
    timeout_s, ca = conf.timeout_s, conf.ca_file
    if conf.kind == "webhook":
        return WebhookSink(conf.name, url=conf.url, keys=_webhook_keys(conf), timeout_s=timeout_s, ca_file=ca)
    if conf.kind == "slack":
        return SlackSink(conf.name, url=conf.url, console_url=console_url, timeout_s=timeout_s, ca_file=ca)
    if conf.kind == "teams":
        return TeamsSink(conf.name, url=conf.url, console_url=console_url, timeout_s=timeout_s, ca_file=ca)
    if conf.kind == "syslog":
        return SyslogSink(conf.name, host=conf.host, port=conf.syslog_port, transport=conf.transport,
                          facility=conf.facility, hostname=conf.hostname,
                          max_datagram_bytes=conf.max_datagram_bytes, server_name=conf.server_name,
                          timeout_s=timeout_s, ca_file=ca)
    password = _read(conf, "password_file", conf.password_file).rstrip("\r\n") if conf.password_file else ""
    if conf.password_file and not password:
        raise ConfigError(f"alert sink {conf.name}: password_file {conf.password_file} is empty")
    return EmailSink(conf.name, smtp_host=conf.smtp_host, smtp_port=conf.smtp_port_or_default,
                     security=conf.security, mail_from=conf.mail_from, mail_to=conf.mail_to,
                     username=conf.username, password=password, console_url=console_url,
                     timeout_s=timeout_s, ca_file=ca)


def _webhook_keys(conf: SinkSettings) -> list[bytes]:
    if conf.secret_file:
        # One secret per line: two while rotating (the receiver accepts either signature).
        secrets = _read(conf, "secret_file", conf.secret_file).split()
        where = f"secret_file {conf.secret_file}"
    else:
        secrets = [conf.secret] if conf.secret else list(conf.secrets)
        where = "secret"
    if not secrets:
        raise ConfigError(f"alert sink {conf.name}: {where} holds no secret")
    try:
        return [parse_webhook_secret(secret) for secret in secrets]
    except ValueError as exc:  # the message never holds the secret
        raise ConfigError(f"alert sink {conf.name}: {where}: {exc}") from None


def _read(conf: SinkSettings, field: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"alert sink {conf.name}: cannot read {field} {path}: {why}") from None

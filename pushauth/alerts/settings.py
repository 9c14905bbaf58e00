"""Settings of one alert sink: a destination the security team's alerts are delivered to.

One `SinkSettings` per `[[alerts.sinks]]` table; `kind` says which of the other fields apply, and a field
set on a sink of another kind is an error (a `secret` on a Slack sink is a mistake worth hearing about).
Secrets are never inline where it can be avoided: SMTP passwords only come from `password_file`, webhook
secrets preferably from `secret_file`. Files are read once, when the sinks are opened (`registry.py`).

`repr()` never shows a secret, a password or the path of a URL: the path of a Slack or Teams webhook URL is
the credential, so only scheme and host are ever shown or logged (`url_origin`).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal
from urllib.parse import urlsplit

import msgspec

SinkKind = Literal["webhook", "slack", "teams", "syslog", "email"]
Severity = Literal["info", "low", "medium", "high", "critical"]

# Lowest to highest: the delivery worker compares positions to apply `min_severity`.
SEVERITIES: tuple[Severity, ...] = ("info", "low", "medium", "high", "critical")
# Plain HTTP and SMTP without TLS are only for a receiver on this machine (tests, an on-prem relay).
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_ADDRESS = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]{1,255}")
_WHSEC = "whsec_"

_COMMON = frozenset({"name", "kind", "enabled", "min_severity", "timeout_s"})
# Which fields each kind reads; anything else must stay at its default.
_FIELDS: dict[str, frozenset[str]] = {
    "webhook": frozenset({"url", "secret", "secrets", "secret_file", "ca_file"}),
    "slack": frozenset({"url", "ca_file"}),
    "teams": frozenset({"url", "ca_file"}),
    "syslog": frozenset({"host", "port", "transport", "ca_file", "server_name", "facility", "hostname",
                         "max_datagram_bytes"}),
    "email": frozenset({"smtp_host", "smtp_port", "security", "username", "password_file", "mail_from",
                        "mail_to", "ca_file"}),
}
_SYSLOG_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
_SMTP_PORTS = {"starttls": 587, "tls": 465, "none": 25}


def parse_webhook_secret(text: str) -> bytes:
    """The HMAC key inside a Standard Webhooks secret (`whsec_` + base64 of 24..64 random bytes).
    Raises ValueError without echoing the secret."""
    if not text.startswith(_WHSEC):
        raise ValueError("a webhook secret must start with whsec_")
    encoded = text[len(_WHSEC):]
    try:
        # Accept it with or without padding, as the Standard Webhooks libraries do.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret must be whsec_ followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"a webhook secret must hold 24..64 bytes (this one holds {len(key)})")
    return key


def url_origin(url: str) -> str:
    """`scheme://host[:port]`: all of a URL that may be shown. No path, query or user info."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise ValueError("url is not a valid URL") from None
    if not parts.hostname:
        raise ValueError("url must be an absolute http(s) URL")
    if parts.fragment:
        raise ValueError("url must not have a #fragment")
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOCAL_HOSTS):
        return
    raise ValueError("url must be https:// (plain http:// only to 127.0.0.1, localhost or [::1])")


def _default(field: msgspec.structs.FieldInfo) -> object:
    return field.default_factory() if field.default is msgspec.NODEFAULT else field.default


class SinkSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Unique id of the sink: in logs, metrics and the delivery records.
    name: str
    kind: SinkKind
    enabled: bool = True
    # The delivery worker sends this sink only alerts of this severity or higher.
    min_severity: Severity = "info"
    # Longest one delivery may take (connect, TLS, send, answer) before it counts as failed and is retried.
    timeout_s: float = 10.0

    # -- webhook, slack, teams ----------------------------------------------------------------------------
    # https:// always, except to a receiver on this machine. For Slack and Teams the URL is the credential.
    url: str = ""
    # Webhook signing secret (`whsec_` + base64), inline; or several while rotating (every one signs, the
    # receiver accepts any); or, better, `secret_file`: a file holding one secret per line.
    secret: str = ""
    secrets: list[str] = []
    secret_file: str = ""

    # -- syslog -------------------------------------------------------------------------------------------
    host: str = ""
    # Default: 514 for udp and tcp, 6514 for tls (`syslog_port`).
    port: int | None = None
    # udp: RFC 5426; tcp: RFC 6587 octet counting; tls: RFC 5425.
    transport: Literal["udp", "tcp", "tls"] = "tls"
    # RFC 5424 facility; 10 is authpriv (security/authorization messages).
    facility: int = 10
    # HOSTNAME field of each message; empty: this machine's name.
    hostname: str = ""
    # Longer UDP messages are cut (at a UTF-8 boundary) and marked truncated="1".
    max_datagram_bytes: int = 8192

    # -- TLS (webhook, slack, teams, syslog tls, email) --------------------------------------------------
    # PEM file of the CA(s) to trust instead of the system's (a private CA on site).
    ca_file: str = ""
    # Name the syslog server's certificate must carry, when `host` is an IP address or an alias.
    server_name: str = ""

    # -- email --------------------------------------------------------------------------------------------
    smtp_host: str = ""
    # Default: 587 for starttls, 465 for tls, 25 for none (`smtp_port_or_default`).
    smtp_port: int | None = None
    # starttls: upgrade on connect and refuse to go on without it; tls: TLS from the first byte;
    # none: plain text, only to an SMTP relay on this machine.
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str = ""
    # The SMTP password, in a file of its own (never inline); needed with `username`.
    password_file: str = ""
    mail_from: str = ""
    mail_to: list[str] = []

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError("sink name must be 1..32 of a-z 0-9 _ - starting with a letter or digit")
        self._check_fields_apply()
        if not 0 < self.timeout_s <= 60:
            raise ValueError(f"sink {self.name}: timeout_s must be in (0, 60] seconds")
        try:
            getattr(self, f"_check_{self.kind}")()
        except ValueError as exc:
            raise ValueError(f"sink {self.name}: {exc}") from None

    def _check_fields_apply(self) -> None:
        allowed = _COMMON | _FIELDS[self.kind]
        for field in msgspec.structs.fields(self):
            if field.name not in allowed and getattr(self, field.name) != _default(field):
                raise ValueError(f"sink {self.name}: {field.name} does not apply to {self.kind} sinks")

    def _check_webhook(self) -> None:
        _check_url(self.url)
        given = sum((bool(self.secret), bool(self.secrets), bool(self.secret_file)))
        if given != 1:
            raise ValueError("give exactly one of secret, secrets or secret_file (webhooks are signed)")
        for secret in [self.secret] if self.secret else self.secrets:
            parse_webhook_secret(secret)

    def _check_slack(self) -> None:
        _check_url(self.url)

    def _check_teams(self) -> None:
        _check_url(self.url)

    def _check_syslog(self) -> None:
        if not self.host:
            raise ValueError("host is required")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError("port must be 1..65535")
        if self.transport != "tls" and (self.ca_file or self.server_name):
            raise ValueError("ca_file and server_name need transport = \"tls\"")
        if not 0 <= self.facility <= 23:
            raise ValueError("facility must be 0..23 (RFC 5424)")
        if self.hostname and not _PRINTABLE_ASCII.fullmatch(self.hostname):
            raise ValueError("hostname must be 1..255 printable ASCII characters without spaces")
        # RFC 5426: every receiver takes 480 octets; 65507 is the most a UDP datagram over IPv4 can carry.
        if not 480 <= self.max_datagram_bytes <= 65507:
            raise ValueError("max_datagram_bytes must be 480..65507")

    def _check_email(self) -> None:
        if not self.smtp_host:
            raise ValueError("smtp_host is required")
        if self.smtp_port is not None and not 1 <= self.smtp_port <= 65535:
            raise ValueError("smtp_port must be 1..65535")
        if self.security == "none" and self.smtp_host not in LOCAL_HOSTS:
            raise ValueError("security = \"none\" is only allowed to 127.0.0.1, localhost or ::1")
        if bool(self.username) != bool(self.password_file):
            raise ValueError("username and password_file go together")
        if not _ADDRESS.fullmatch(self.mail_from):
            raise ValueError("mail_from must be one e-mail address")
        if not self.mail_to or not all(_ADDRESS.fullmatch(a) for a in self.mail_to):
            raise ValueError("mail_to must be a non-empty list of e-mail addresses")

    @property
    def syslog_port(self) -> int:
        return self.port if self.port is not None else _SYSLOG_PORTS[self.transport]

    @property
    def smtp_port_or_default(self) -> int:
        return self.smtp_port if self.smtp_port is not None else _SMTP_PORTS[self.security]

    def __repr__(self) -> str:
        shown: list[str] = []
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            if field.name not in ("name", "kind") and value == _default(field):
                continue
            if field.name == "url":
                value = url_origin(value) + "/..."
            elif field.name in ("secret", "secrets"):
                value = "[redacted]"
            shown.append(f"{field.name}={value!r}")
        return f"SinkSettings({', '.join(shown)})"

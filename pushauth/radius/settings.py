"""`[radius]` settings: the RADIUS front's listener, its clients, and the password checks it can make first.

    [radius]
    listen = ["10.0.0.10"]
    port = 1812
    [radius.ldap]                        # for clients with primary = "ldap"
    url = "ldaps://dc1.example.org"
    user_dn = "uid={user},ou=people,dc=example,dc=org"
    [radius.upstream]                    # for clients with primary = "radius"
    address = "10.0.0.5"
    secret_file = "/etc/pushauth/upstream.secret"
    [[radius.clients]]
    name = "vpn-1"
    address = "10.1.0.0/24"
    secret_file = "/etc/pushauth/vpn.secret"
    application = "vpn"
    mode = "auto"
    primary = "ldap"

Secrets live in files (mode 0600), read once at start, never in the TOML, never in a repr or a log line.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

import msgspec

from pushauth.directory import LdapSettings

# RFC 2865 3: "the secret (password) shared between a client and a RADIUS server SHOULD be at least as large
# and unguessable as a well-chosen password"; RFC 6614/BlastRADIUS guidance: long and random. 16 bytes is
# the floor a deployment gets away with here.
MIN_SECRET_BYTES = 16


def read_secret(path: str, where: str) -> bytes:
    """A shared secret from its file: the bytes of the first line (a trailing newline is not part of it)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{where}: cannot read {path}: {type(exc).__name__}") from None
    secret = raw.split(b"\n", 1)[0].rstrip(b"\r")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{where}: the secret in {path} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


class UpstreamSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # The RADIUS server that checks passwords (NPS, FreeRADIUS): pushauth forwards the user name and the
    # password (PAP, re-encrypted with this secret) and takes its Accept or Reject.
    address: str = ""
    port: int = 1812
    secret_file: str = ""
    timeout_s: float = 5.0
    # Sends in all (the first and the retries) before the upstream counts as down.
    attempts: int = 2

    def __post_init__(self) -> None:
        if self.address:
            ipaddress.ip_address(self.address)
            if not self.secret_file:
                raise ValueError("upstream.secret_file is required")
        if not 1 <= self.port <= 65535:
            raise ValueError("upstream.port must be 1..65535")
        if not 0.5 <= self.timeout_s <= 30 or not 1 <= self.attempts <= 5:
            raise ValueError("upstream.timeout_s must be 0.5..30 and attempts 1..5")


class RadiusClient(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # A name for logs, metrics and the audit trail ("vpn-1").
    name: str
    # The client's address or network (CIDR): packets from anywhere else are dropped.
    address: str
    secret_file: str
    # The pushauth application it signs in as: its name is what the phone shows.
    application: str
    # auto: after the password, push and hold the reply until the phone answers (approve/deny, no number).
    # challenge: answer Access-Challenge showing the number; the user types it on the phone, then presses
    # Enter (or types a temporary access code instead). Needs a client that shows Reply-Message and sends
    # State back (pam_radius_auth, most SSL VPNs, NetScaler); see the README.
    mode: Literal["auto", "challenge"] = "auto"
    # The password check before any prompt: ldap (bind as the user), radius (the upstream server), or none
    # (pushauth is the second factor behind something that already checked the password).
    primary: Literal["ldap", "radius", "none"] = "ldap"
    # How long a sign-in may wait for the phone. Below the client's own timeout x retries, or the client
    # gives up first (set the client's timeout to 60 s or more).
    deadline_s: int = 50
    # BlastRADIUS (CVE-2024-3596): Access-Requests without a valid Message-Authenticator are dropped. Turn it
    # off only for a client that cannot send one (Debian's pam_radius_auth 2.0); every such request is then
    # logged as a warning.
    require_message_authenticator: bool = True
    # Access-Requests per rate_limits.window_s from this client; 0: not limited.
    rate_limit: int = 6000

    def __post_init__(self) -> None:
        if not self.name.strip() or len(self.name) > 64:
            raise ValueError("client name must be 1..64 characters")
        ipaddress.ip_network(self.address, strict=False)
        if not 10 <= self.deadline_s <= 600:
            raise ValueError("deadline_s must be 10..600")
        if not 0 <= self.rate_limit <= 1_000_000:
            raise ValueError("rate_limit must be 0..1000000")

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.address, strict=False)


class RadiusSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Addresses to listen on (UDP) and the port (1812, RADIUS authentication). Loopback by default, as
    # [server] host: name the interface the VPNs and gateways reach (or "0.0.0.0").
    listen: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1"])
    port: int = 1812
    # Access-Requests held at once by one process (waiting for a password check or a phone); more are
    # dropped (the client resends) and counted.
    max_held: int = 2000
    # How long a reply is kept to answer the client's retransmits of the same request: in the process, and
    # sealed in Redis for copies reaching another instance (pushauth/radius/retransmits.py), whose claim
    # of the request lasts the client's deadline_s + this.
    reply_cache_s: int = 30
    ldap: LdapSettings = LdapSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    clients: list[RadiusClient] = []

    def __post_init__(self) -> None:
        for address in self.listen:
            ipaddress.ip_address(address)
        if not 1 <= self.port <= 65535:
            raise ValueError("port must be 1..65535")
        if not 1 <= self.max_held <= 100_000:
            raise ValueError("max_held must be 1..100000")
        if not 5 <= self.reply_cache_s <= 300:
            raise ValueError("reply_cache_s must be 5..300")
        names = [c.name for c in self.clients]
        if len(names) != len(set(names)):
            raise ValueError("client names must be unique")

    def problems(self, application_ids: set[str]) -> list[str]:
        """What stops `pushauth radius` from starting with these settings (checked there, not when the file
        is read: `serve` and the workers do not care)."""
        found = []
        if not self.clients:
            found.append("no [[radius.clients]]: nobody could send an Access-Request")
        for client in self.clients:
            if client.application not in application_ids:
                found.append(f"radius client {client.name!r}: no application {client.application!r} in "
                             "[[applications]]")
        if any(c.primary == "ldap" for c in self.clients) and not self.ldap.url:
            found.append("a client uses primary = \"ldap\": set [radius.ldap] url and user_dn")
        if any(c.primary == "radius" for c in self.clients) and not self.upstream.address:
            found.append("a client uses primary = \"radius\": set [radius.upstream] address and secret_file")
        return found

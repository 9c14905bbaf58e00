"""Settings: TOML file, then `PUSHAUTH_*` environment overrides, validated once at start.

Every setting is documented in `config.example.toml`. Environment variables address nested keys with a
double underscore: `PUSHAUTH_STORE__REDIS_URL=redis://...` sets `[store] redis_url`. Values from the
environment are parsed as TOML values when they look like one (numbers, booleans, arrays) and as plain
strings otherwise (quote a string that looks like a number: PUSHAUTH_STORE__PREFIX='"2024"').
Only names with a double underscore are settings.

Validation is msgspec's: unknown keys and wrong types are errors, and the message names the dotted key
(`store.socket_timeout_s: Expected float, got str`), so an operator never has to guess.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

from pushauth.accounts.policy import PolicySettings
from pushauth.alerts.settings import SinkSettings
from pushauth.codes.settings import CodeSettings
from pushauth.demo_settings import DemoSettings
from pushauth.detection.rules import ContainmentSettings, DetectionSettings
from pushauth.errors import ConfigError
from pushauth.oidc.settings import OidcSettings
from pushauth.radius.settings import RadiusSettings

ENV_PREFIX = "PUSHAUTH_"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_APP_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def redact_url_password(url: str) -> str:
    """The URL, quoted as repr would, with any password in its user info replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return repr(url)
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return repr(urlunsplit(parts._replace(netloc=f"{user}:***@{host}")))


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSettings(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    # The address phones use to reach this server. It goes into enrollment URIs and is the `iss` of every
    # challenge, so it must be the public URL behind any load balancer, not the bind address.
    base_url: str = "http://127.0.0.1:8080"
    max_body_bytes: int = 16384
    # Longest `wait` a login flow may ask for on GET /v1/challenges/{id}.
    max_wait_s: int = 30
    # Networks (CIDR) of the reverse proxies / load balancers in front of pushauth. A request whose peer is
    # one of them is taken to come from the right-most X-Forwarded-For address that is not (see
    # pushauth.netaddr.TrustedProxies). Empty: trust nobody; the peer is the client.
    trusted_proxies: list[str] = []
    # The event loop `pushauth serve` runs on: uvloop (libuv; ~7% less server CPU per sign-in, measured in
    # bench/README.md), asyncio (the standard library's), or auto (uvloop when it is installed).
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*[^/\s?#])?", self.base_url):
            raise ValueError("base_url must be an http(s) URL without a trailing slash, query or fragment")
        if not 1 <= self.port <= 65535:
            raise ValueError("port must be 1..65535")
        if not 1024 <= self.max_body_bytes <= 1 << 20:
            raise ValueError("max_body_bytes must be between 1024 and 1048576")
        if not 0 <= self.max_wait_s <= 30:
            raise ValueError("max_wait_s must be 0..30 (the contract caps wait at 30)")
        for network in self.trusted_proxies:
            try:
                ipaddress.ip_network(network)
            except ValueError as exc:
                raise ValueError(f"trusted_proxies: {exc}") from None


class StoreSettings(_Section, frozen=True):
    # Empty: the embedded in-process store. Nothing survives a restart; for trying pushauth on one machine.
    redis_url: str = ""
    # true: redis_url names one node of a Redis Cluster (the client discovers the others). Every multi-key
    # change is one script within one hash tag, so nothing else changes.
    cluster: bool = False
    # Redis Sentinel instead of a fixed primary: the sentinels ("host:port") and the name of the primary
    # they watch. The client asks them where the primary is and follows a failover. redis_url still gives
    # the database, user, password and TLS (rediss://) of the data connections; its host is not used.
    sentinels: list[str] = []
    sentinel_service: str = ""
    # Every key starts with this, so one Redis can serve several deployments.
    prefix: str = "pa"
    # Short timeouts are what make "fail closed" fast: a stopped Redis turns into a 503 within this time
    # instead of a login flow hanging.
    socket_timeout_s: float = 2.0
    connect_timeout_s: float = 1.0
    max_connections: int = 128
    # Durability through a failover (pushauth/store/durability.py). Redis replicates asynchronously, so a
    # change the primary acknowledged is lost if it dies before a replica has it: a "not me" with its
    # alert and suspension, a lock, a spent access code. With replica_acks = N every change a client is
    # answered about first waits (Redis WAIT) until N replicas hold it, at most replica_ack_timeout_ms.
    # 0: off (a Redis without replicas). 1 with Sentinel or Cluster.
    replica_acks: int = 0
    replica_ack_timeout_ms: int = 250
    # Fewer replicas in time: "refuse" answers 503 (the client sends it again; nothing acknowledged is
    # lost, but changes stop while a primary has no replica: run two replicas per primary), "warn" answers
    # anyway, logs and counts it (available while a replica is down, at the old risk).
    replica_ack_shortfall: Literal["refuse", "warn"] = "refuse"

    def __repr__(self) -> str:
        # redis_url may carry the Redis password (redis://:secret@host); settings get logged and printed
        # in tracebacks, so the repr shows the URL without it.
        fields = ", ".join(
            f"{name}={redact_url_password(value) if name == 'redis_url' else value!r}"
            for name, value in msgspec.structs.asdict(self).items()
        )
        return f"StoreSettings({fields})"

    def __post_init__(self) -> None:
        if self.sentinels:
            if not (self.redis_url and self.sentinel_service) or self.cluster:
                raise ValueError("sentinels need redis_url (database, password, TLS) and sentinel_service, "
                                 "and exclude cluster")
            if not all(re.fullmatch(r"[^\s:]+:\d{1,5}", s) for s in self.sentinels):
                raise ValueError("sentinels must be host:port")
        if self.replica_acks and not self.redis_url:
            raise ValueError("replica_acks needs redis_url: the embedded store has no replicas")
        if not (0 <= self.replica_acks <= 5 and 10 <= self.replica_ack_timeout_ms <= 5000):
            raise ValueError("replica_acks must be 0..5 and replica_ack_timeout_ms 10..5000")
        if self.redis_url and not re.match(r"(redis|rediss|unix)://", self.redis_url):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,16}", self.prefix):
            raise ValueError("prefix must be 1..16 of A-Z a-z 0-9 _ -")
        if not (0 < self.socket_timeout_s <= 60 and 0 < self.connect_timeout_s <= 60):
            raise ValueError("timeouts must be in (0, 60] seconds")
        if self.max_connections < 2:
            raise ValueError("max_connections must be at least 2")


class KeySettings(_Section, frozen=True):
    path: str = "keys"
    # Generate a throw-away key in memory instead of reading `path` (the demo and tests only).
    ephemeral: bool = False
    # How often a running server looks for a rotated keyring on disk.
    reload_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0.1 <= self.reload_interval_s <= 3600:
            raise ValueError("reload_interval_s must be 0.1..3600")


class ChallengeSettings(_Section, frozen=True):
    default_ttl_s: int = 60
    max_ttl_s: int = 600
    number_matching: bool = True
    # 2 is what Microsoft and Okta show; NIST SP 800-63B rev 4 profiles may ask for more (up to 8).
    number_digits: int = 2
    # How long a decided or expired challenge stays readable by the login flow.
    retention_s: int = 900

    def __post_init__(self) -> None:
        if not 10 <= self.default_ttl_s <= self.max_ttl_s <= 600:
            raise ValueError("need 10 <= default_ttl_s <= max_ttl_s <= 600")
        if not 1 <= self.number_digits <= 8:
            raise ValueError("number_digits must be 1..8")
        if not 60 <= self.retention_s <= 86400:
            raise ValueError("retention_s must be 60..86400")


class DeviceAuthSettings(_Section, frozen=True):
    # Accepted clock difference between phone and server for the signed `iat`.
    max_skew_s: int = 60

    def __post_init__(self) -> None:
        if not 5 <= self.max_skew_s <= 300:
            raise ValueError("max_skew_s must be 5..300")


class EnrollmentSettings(_Section, frozen=True):
    code_ttl_s: int = 600
    # A further phone an application enrolls for a user who already has one stays inactive until one of
    # the user's phones approves it (a prompt with the number the new phone shows); the prompt lives this
    # long. An admin-issued enrollment, or one made soon after a temporary access code, needs no approval.
    approval_ttl_s: int = 300
    # After a valid temporary access code, the user may add a phone without approval for this long (the
    # code proved them to the service desk; their old phone may be lost). 0: never.
    access_code_grant_s: int = 3600
    # A phone activated less than this ago cannot revoke an older phone (the security team can allow it,
    # or revoke the old phone itself). 0: no cool-down.
    revoke_cooldown_s: int = 86400

    def __post_init__(self) -> None:
        if not 60 <= self.code_ttl_s <= 86400:
            raise ValueError("code_ttl_s must be 60..86400")
        if not 30 <= self.approval_ttl_s <= 600:
            raise ValueError("approval_ttl_s must be 30..600")
        if not 0 <= self.access_code_grant_s <= 86400:
            raise ValueError("access_code_grant_s must be 0..86400")
        if not 0 <= self.revoke_cooldown_s <= 30 * 86400:
            raise ValueError("revoke_cooldown_s must be 0..2592000")


class FcmSettings(_Section, frozen=True):
    enabled: bool = False
    # Firebase service-account JSON (Project settings > Service accounts). Read once at worker start.
    service_account_file: str = ""
    # Most sends in flight at once to FCM from one worker; each holds one keep-alive connection (HTTP/1.1).
    concurrency: int = 200

    def __post_init__(self) -> None:
        if self.enabled and not self.service_account_file:
            raise ValueError("service_account_file is required when fcm is enabled")
        if not 1 <= self.concurrency <= 10000:
            raise ValueError("concurrency must be 1..10000")


class ApnsSettings(_Section, frozen=True):
    enabled: bool = False
    # Token-based auth (recommended): the .p8 signing key from the Apple developer account, its key id
    # and the team id.
    key_file: str = ""
    key_id: str = ""
    team_id: str = ""
    # Certificate-based auth instead: one PEM file holding the certificate and its private key.
    cert_file: str = ""
    # The app's bundle id (apns-topic).
    topic: str = ""
    # true: api.sandbox.push.apple.com (development builds of the app).
    sandbox: bool = False
    # Connections to Apple (HTTP/2; each carries many pushes) and most sends in flight at once.
    connections: int = 4
    concurrency: int = 200

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if not self.topic:
            raise ValueError("topic (the app's bundle id) is required when apns is enabled")
        token_auth = bool(self.key_file or self.key_id or self.team_id)
        if token_auth == bool(self.cert_file):
            raise ValueError("give either key_file + key_id + team_id (token auth) or cert_file")
        if token_auth and not (self.key_file and self.key_id and self.team_id):
            raise ValueError("token auth needs key_file, key_id and team_id")
        if not (1 <= self.connections <= 64 and 1 <= self.concurrency <= 10000):
            raise ValueError("connections must be 1..64 and concurrency 1..10000")


class PushSettings(_Section, frozen=True):
    fcm: FcmSettings = FcmSettings()
    apns: ApnsSettings = ApnsSettings()
    # Retries of transient failures: exponential backoff with full jitter from base to max, never past
    # the challenge's expiry, and at most this many attempts per device.
    max_attempts: int = 6
    backoff_base_s: float = 0.25
    backoff_max_s: float = 10.0
    # A stream entry delivered this many times without being acknowledged (a worker crashed on it each
    # time) goes to the dead-letter stream instead.
    dead_letter_after: int = 5
    # Entries a crashed worker left unacknowledged are reclaimed by another after this idle time.
    reclaim_idle_s: float = 15.0

    @property
    def enabled(self) -> bool:
        return self.fcm.enabled or self.apns.enabled

    def __post_init__(self) -> None:
        if not (1 <= self.max_attempts <= 50 and 0 < self.backoff_base_s <= self.backoff_max_s <= 300):
            raise ValueError("need 1 <= max_attempts <= 50 and 0 < backoff_base_s <= backoff_max_s <= 300")
        if not (1 <= self.dead_letter_after <= 100 and 1 <= self.reclaim_idle_s <= 3600):
            raise ValueError("dead_letter_after must be 1..100 and reclaim_idle_s 1..3600")


_MAX_QUOTA = 10_000_000


class RateLimitSettings(_Section, frozen=True):
    """pushauth/ratelimit/limiter.py says what each limit counts and why it is keyed so; config.example.toml
    why each default is what it is."""

    # The window the request quotas are per (GCRA: a whole quota may come as one burst).
    window_s: int = 60
    # Requests per window from one client address (IPv6: one /64), for every call not made with an
    # application's API key. 0: off.
    ip_requests: int = 12_000
    # Requests per window made with one application's API keys, from any address; an application's own
    # `rate_limit` overrides it. 0: off.
    application_requests: int = 12_000
    # Failed authentications (API key, admin token, device signature, enrollment code) from one client
    # address after which it is refused for the rest of auth_failures_window_s. 0: off.
    auth_failures: int = 50
    auth_failures_window_s: int = 300

    def __post_init__(self) -> None:
        if not 1 <= self.window_s <= 3600:
            raise ValueError("window_s must be 1..3600")
        if not (0 <= self.ip_requests <= _MAX_QUOTA and 0 <= self.application_requests <= _MAX_QUOTA):
            raise ValueError(f"ip_requests and application_requests must be 0..{_MAX_QUOTA}")
        if not 0 <= self.auth_failures <= 100_000:
            raise ValueError("auth_failures must be 0..100000")
        if not 10 <= self.auth_failures_window_s <= 86400:
            raise ValueError("auth_failures_window_s must be 10..86400")


class Application(_Section, frozen=True):
    id: str
    name: str
    # SHA-256 (hex) of the API key; the key itself is never stored. `pushauth apps new-key` makes one.
    api_key_sha256: list[str]
    # Requests per rate_limits.window_s with this application's keys. Unset: rate_limits.application_requests;
    # 0: not limited.
    rate_limit: int | None = None

    def __post_init__(self) -> None:
        if not _APP_ID.fullmatch(self.id):
            raise ValueError("application id must be lower-case a-z 0-9 _ . - (max 64)")
        if not self.name.strip():
            raise ValueError("application name must not be empty")
        if not self.api_key_sha256 or not all(_HEX64.fullmatch(h) for h in self.api_key_sha256):
            raise ValueError("api_key_sha256 must be a list of 64-char lower-case hex SHA-256 digests")
        if self.rate_limit is not None and not 0 <= self.rate_limit <= _MAX_QUOTA:
            raise ValueError(f"rate_limit must be 0..{_MAX_QUOTA} (requests per rate_limits.window_s)")


class AdminToken(_Section, frozen=True):
    """An admin API token with a role (pushauth/operators.py), for automation that needs less than owner."""

    sha256: str
    role: Literal["viewer", "service_desk", "responder", "owner"]
    name: str = ""  # what the token is for, shown in the audit trail instead of its hash prefix

    def __post_init__(self) -> None:
        if not _HEX64.fullmatch(self.sha256):
            raise ValueError("admin.tokens sha256 must be a 64-char lower-case hex SHA-256 digest")
        if self.name and not _APP_ID.fullmatch(self.name):
            raise ValueError("admin.tokens name must be lower-case a-z 0-9 _ . - (max 64)")


class AdminSettings(_Section, frozen=True):
    # Owner tokens: automation, and the first owner's way into the console.
    token_sha256: list[str] = []
    # Tokens with a role of their own (`pushauth admin new-token --role viewer`).
    tokens: list[AdminToken] = []

    def __post_init__(self) -> None:
        if not all(_HEX64.fullmatch(h) for h in self.token_sha256):
            raise ValueError("token_sha256 must be 64-char lower-case hex SHA-256 digests")

    def role_of(self, digest: str) -> tuple[str, str] | None:
        """(role, name) of the admin token with this SHA-256, or None."""
        if digest in self.token_sha256:
            return "owner", ""
        return next(((t.role, t.name) for t in self.tokens if t.sha256 == digest), None)


class AlertSettings(_Section, frozen=True):
    # Delivery retries after the first attempt fails, in seconds: Svix's published Standard Webhooks
    # schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: about 27.6 hours in all). A receiver down for a
    # day still gets the alert; then it goes to the dead letter, where the security team can replay it.
    retry_schedule_s: list[int] = msgspec.field(default_factory=lambda: [5, 300, 1800, 7200, 18000, 36000,
                                                                         36000])
    # Link to put in chat and mail messages (the console, issue 6), e.g. https://pushauth.example.org/console
    console_url: str = ""
    # How often the alert worker re-announces alerts a crashed server wrote but did not announce (those
    # older than two intervals).
    sweep_interval_s: float = 30.0
    # A crashed alert worker's deliveries are taken over by another after this idle time. Longer than any
    # sink's timeout_s, or a slow delivery would be taken over while it still runs.
    reclaim_idle_s: float = 60.0
    # Where alerts go: [[alerts.sinks]] tables (pushauth/alerts/settings.py, config.example.toml).
    sinks: list[SinkSettings] = []

    def __post_init__(self) -> None:
        if not 1 <= len(self.retry_schedule_s) <= 30 or not all(1 <= s <= 7 * 86400
                                                               for s in self.retry_schedule_s):
            raise ValueError("retry_schedule_s must list 1..30 delays of 1..604800 seconds")
        if not 1 <= self.sweep_interval_s <= 3600:
            raise ValueError("sweep_interval_s must be 1..3600")
        if not 1 <= self.reclaim_idle_s <= 3600:
            raise ValueError("reclaim_idle_s must be 1..3600")
        names = [s.name for s in self.sinks]
        if len(names) != len(set(names)):
            raise ValueError("alert sink names must be unique")


class MetricsSettings(_Section, frozen=True):
    # SHA-256 of tokens allowed to scrape /metrics (Authorization: Bearer), from any address. Set, a scrape
    # needs one; a wrong one counts as a failed authentication. `pushauth admin new-token` makes a token and
    # its hash.
    token_sha256: list[str] = []
    # Without a token: the networks (CIDR) whose TCP peers may scrape; anyone else gets 403. Decided on the
    # connection's peer, never X-Forwarded-For. The counts say which attacks are working (denied_not_me,
    # refused_locked), so the default is this host only.
    allow_from: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # How old the queue and worker gauges (read from Redis for a scrape) may be: a flood of scrapes then
    # costs Redis nothing more than one read per this many seconds. 0: read on every scrape.
    store_gauges_max_age_s: float = 5.0

    def __post_init__(self) -> None:
        if not all(_HEX64.fullmatch(h) for h in self.token_sha256):
            raise ValueError("token_sha256 must be 64-char lower-case hex SHA-256 digests")
        for network in self.allow_from:
            try:
                ipaddress.ip_network(network)
            except ValueError as exc:
                raise ValueError(f"allow_from: {exc}") from None
        if not 0 <= self.store_gauges_max_age_s <= 300:
            raise ValueError("store_gauges_max_age_s must be 0..300")


class LoggingSettings(_Section, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: pretty on a terminal, JSON lines otherwise.
    format: Literal["auto", "json", "console"] = "auto"


class Settings(_Section, frozen=True):
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    keys: KeySettings = KeySettings()
    challenges: ChallengeSettings = ChallengeSettings()
    device_auth: DeviceAuthSettings = DeviceAuthSettings()
    enrollment: EnrollmentSettings = EnrollmentSettings()
    push: PushSettings = PushSettings()
    applications: list[Application] = []
    admin: AdminSettings = AdminSettings()
    detection: DetectionSettings = DetectionSettings()
    containment: ContainmentSettings = ContainmentSettings()
    alerts: AlertSettings = AlertSettings()
    policy: PolicySettings = PolicySettings()
    codes: CodeSettings = CodeSettings()
    metrics: MetricsSettings = MetricsSettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    radius: RadiusSettings = RadiusSettings()
    oidc: OidcSettings = OidcSettings()
    demo: DemoSettings = DemoSettings()
    logging: LoggingSettings = LoggingSettings()

    def __post_init__(self) -> None:
        ids = [a.id for a in self.applications]
        if len(ids) != len(set(ids)):
            raise ValueError("application ids must be unique")
        hashes = [h for a in self.applications for h in a.api_key_sha256] + list(self.admin.token_sha256)
        hashes += [t.sha256 for t in self.admin.tokens]
        if len(hashes) != len(set(hashes)):
            raise ValueError("an API key or admin token hash is listed twice")

    @property
    def embedded(self) -> bool:
        return not self.store.redis_url


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        # Settings are always <SECTION>__<KEY>; other PUSHAUTH_* variables (PUSHAUTH_CONFIG, the CLI's
        # PUSHAUTH_ADMIN_TOKEN) are not settings.
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {'.'.join(path[:-1])} is not a section")
            node = child
        node[path[-1]] = _env_value(raw)


def _dotted(message: str) -> str:
    # msgspec says "... - at `$.store.port`"; operators think in "store.port".
    m = re.search(r" - at `\$((?:\.[^`]*|\[\d+\])*)`$", message)
    if not m:
        return message
    where = m.group(1).lstrip(".")
    return f"{where}: {message[: m.start()]}" if where else message[: m.start()]


def from_mapping(data: Mapping[str, Any]) -> Settings:
    try:
        return msgspec.convert(dict(data), Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting {_dotted(str(exc))}") from None


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (or $PUSHAUTH_CONFIG; no file means all defaults), apply env overrides, validate."""
    env = os.environ if env is None else env
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = Path(env[ENV_PREFIX + "CONFIG"])
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    _apply_env(data, env)
    return from_mapping(data)

"""The contract every push provider implements, and what a send can come back as.

A provider maps every vendor answer to one `OutcomeKind`, in one commented table per provider, because
the kind drives what the worker does next:

    SENT           the provider accepted the push: record it, never send it again
    RETRY          transient (429, 5xx, timeout, connection error): retry with backoff, honouring
                   `retry_after_s`, never after the challenge has expired
    INVALID_TOKEN  the token is dead or not ours: mark the device's token stale; the phone falls back to
                   polling until it registers a new token
    AUTH_ERROR     our credentials are wrong (bad key, expired provider token, wrong project): no retry
                   storm; a loud operational log and metric
    FAILED         anything else permanent (payload rejected): record and give up
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

log = structlog.get_logger(__name__)


class OutcomeKind(enum.Enum):
    SENT = "sent"
    RETRY = "retry"
    INVALID_TOKEN = "invalid_token"  # noqa: S105 (an outcome name, not a secret)
    AUTH_ERROR = "auth_error"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    # A short machine word for the delivery state and metrics: "Unregistered", "UNAVAILABLE", "timeout".
    reason: str = ""
    # Seconds the provider asked us to wait (Retry-After), if it said.
    retry_after_s: float | None = None
    # The provider's id for an accepted message (FCM message name, apns-id), for support cases.
    provider_id: str | None = None


@dataclass(frozen=True, slots=True)
class PushMessage:
    """Everything a push carries. For a sign-in prompt the payload is exactly `{"type": "challenge",
    "challenge_id", "server"}`; for an account notice (a new phone was added) `{"type": "notice",
    "server"}`, which tells the phone to read its notices (GET /v1/device/notices). No user data passes
    through Google or Apple. `expires_at` (Unix seconds) bounds the provider-side life of the message (FCM
    ttl, apns-expiration) so it never outlives the challenge."""

    challenge_id: str
    server: str
    expires_at: int
    kind: str = "challenge"

    def data(self) -> dict[str, str]:
        if self.kind == "notice":
            return {"type": "notice", "server": self.server}
        return {"type": "challenge", "challenge_id": self.challenge_id, "server": self.server}

    @property
    def collapse_id(self) -> str:
        """A resent push replaces, never stacks on, the one before it on the phone."""
        return self.challenge_id if self.kind == "challenge" else "notice"

    @property
    def alert(self) -> dict[str, str]:
        """The generic text a notification shows before the app replaces it (a locked screen shows it)."""
        return NOTICE_ALERT if self.kind == "notice" else CHALLENGE_ALERT


CHALLENGE_ALERT = {"title": "Sign-in request", "body": "Open to review."}
NOTICE_ALERT = {"title": "Your account changed", "body": "Open to review."}


class PushProvider(Protocol):
    """One push service. `send` never raises for a vendor or network failure: it returns an Outcome.
    Implementations cap their own concurrency and own their client; `aclose` releases it."""

    name: str

    async def send(self, token: str, message: PushMessage) -> Outcome: ...

    async def aclose(self) -> None: ...


class AuthErrorLog:
    """The loud operational log for a provider's credential errors, throttled: the first of each reason
    at once, then one line per reason per `interval_s` with the count since the last line. Every push fails
    the same way until an operator fixes the credentials; a line per push would bury everything else."""

    def __init__(self, provider: str, interval_s: float = 60.0) -> None:
        self._provider = provider
        self._interval_s = interval_s
        self._seen: dict[str, tuple[float, int]] = {}

    def error(self, reason: str, **context: Any) -> None:
        now = time.monotonic()
        last, count = self._seen.get(reason, (-self._interval_s, 0))
        count += 1
        if now - last >= self._interval_s:
            log.error("push_auth_error", provider=self._provider, reason=reason, count=count, **context)
            last, count = now, 0
        self._seen[reason] = (last, count)

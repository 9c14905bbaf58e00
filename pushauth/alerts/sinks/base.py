"""The contract every alert sink implements, and what a delivery can come back as.

A sink turns one `Notification` into whatever its destination takes (a signed webhook, a Slack or Teams
message, an RFC 5424 syslog line, an e-mail) and reports what happened; the delivery worker decides what
to do about it:

    DELIVERED  the receiver acknowledged: HTTP 2xx; SMTP accepted the message; syslog written to the socket
               (TCP/TLS: fully written and drained; UDP: sent; neither protocol acknowledges more)
    GONE       HTTP 410: the receiver says the endpoint no longer exists; the worker disables the sink
    RETRY      anything else: another HTTP status, timeout, connection or TLS error, an SMTP 4xx/5xx.
               `retry_after_s` carries a receiver's Retry-After, when it gave one

`deliver` never raises for a receiver or network failure, and returns within the sink's `timeout_s`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class SinkOutcomeKind(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class SinkOutcome:
    kind: SinkOutcomeKind
    # Short and loggable: "http_503", "timeout", "connection", "tls", "smtp_451".
    reason: str = ""
    # From the receiver's Retry-After (delta seconds or HTTP date), when it gave one.
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    # "alert.created" | "alert.updated"
    type: str
    # The contract's alert object, JSON-ready: {"id", "kind", "severity", "user", "challenge_id"?,
    # "device_id"?, "context"?, "evidence": {...}, "created_at", "status"}.
    alert: Mapping[str, Any]
    # Stable per alert version and endpoint (the caller computes it): the receiver's idempotency key, sent
    # as webhook-id, Message-ID and in syslog structured data.
    delivery_id: str


class AlertSink(Protocol):
    # The configured sink name (unique) and its kind: "webhook" | "slack" | "teams" | "syslog" | "email".
    name: str
    kind: str

    async def deliver(self, notification: Notification) -> SinkOutcome: ...

    async def aclose(self) -> None: ...


DELIVERED = SinkOutcome(SinkOutcomeKind.DELIVERED)


def retry(reason: str, retry_after_s: float | None = None) -> SinkOutcome:
    return SinkOutcome(SinkOutcomeKind.RETRY, reason, retry_after_s)

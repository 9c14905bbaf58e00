"""Standard Webhooks (https://www.standardwebhooks.com), exactly as the wire contract has it.

    POST <url>
    content-type: application/json
    webhook-id: <delivery_id>                  the receiver's idempotency key
    webhook-timestamp: <Unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256("<id>.<timestamp>.<body>")>[ v1,<...>]

    {"type":"alert.created","timestamp":"2025-01-31T09:12:03Z","data":{<alert>}}

The body is encoded once and those exact bytes are both signed and sent. While a secret is being rotated
the sink holds several keys and sends one signature per key, space-separated; a receiver accepts the
message if any of them verifies with the secret it has.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Sequence

import msgspec

from pushauth.alerts.sinks._http import HttpTarget
from pushauth.alerts.sinks.base import Notification, SinkOutcome
from pushauth.clock import rfc3339

_ENCODE = msgspec.json.Encoder().encode


def event_body(notification: Notification, ts: int) -> bytes:
    """The JSON event, compact UTF-8: the webhook body and the syslog MSG."""
    return _ENCODE({"type": notification.type, "timestamp": rfc3339(ts), "data": dict(notification.alert)})


def sign(keys: Sequence[bytes], msg_id: str, ts: int, body: bytes) -> str:
    signed = f"{msg_id}.{ts}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
                    for key in keys)


class WebhookSink:
    kind = "webhook"

    def __init__(self, name: str, *, url: str, keys: Sequence[bytes], timeout_s: float,
                 ca_file: str = "") -> None:
        if not keys:
            raise ValueError("a webhook sink needs at least one signing key")
        self.name = name
        self._keys = tuple(keys)
        self._http = HttpTarget(sink=name, kind=self.kind, url=url, timeout_s=timeout_s, ca_file=ca_file)

    def __repr__(self) -> str:
        return f"WebhookSink({self.name!r}, {self._http.origin}/..., keys={len(self._keys)})"

    async def deliver(self, notification: Notification) -> SinkOutcome:
        ts = int(time.time())
        body = event_body(notification, ts)
        return await self._http.post(body, {
            "Content-Type": "application/json",
            "webhook-id": notification.delivery_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(self._keys, notification.delivery_id, ts, body),
        })

    async def aclose(self) -> None:
        await self._http.aclose()

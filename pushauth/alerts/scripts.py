"""The alerts package's Lua scripts (`lua/`), each behind one typed wrapper: ARGV built by name, the reply
decoded. Nothing else runs them: `AlertStore` (pushauth.alerts.store) announces and acknowledges alerts,
`AlertDelivery` and `DeadLetters` (pushauth.alerts.delivery) record deliveries and forget failures.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import redis.asyncio as aioredis

from pushauth.store.durability import ReplicaAcks
from pushauth.store.scripts import Script

ACK_ALERT = Script.load("pushauth.alerts", "ack_alert.lua")
RING_ALERTS = Script.load("pushauth.alerts", "ring_alerts.lua")
MARK_ALERT_DELIVERY = Script.load("pushauth.alerts", "mark_alert_delivery.lua")
FORGET_ALERT_FAILURES = Script.load("pushauth.alerts", "forget_alert_failures.lua")


class Acked(StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"
    ALREADY = "already"


async def ack_alert(redis: aioredis.Redis, *, alert_key: str, incident_key: str, now: int, by: str, aid: str,
                    acks: ReplicaAcks | None) -> Acked:
    """Acknowledge alert `aid`, closing its incident if that is still open (ack_alert.lua)."""
    reply = await ACK_ALERT(redis, [alert_key, incident_key], [now, by, aid], acks=acks)
    return Acked(reply[0])


async def ring_alerts(redis: aioredis.Redis, *, index_key: str, open_key: str, stream_key: str, uid: str,
                      now: int, maxlen: int, notes: Sequence[str]) -> int:
    """Index the alert versions `notes` ("<aid>|<version>") of user `uid` and point the alert stream at
    them (ring_alerts.lua). Returns how many notes were given."""
    return int(await RING_ALERTS(redis, [index_key, open_key, stream_key], [uid, now, maxlen, *notes]))


async def mark_alert_delivery(redis: aioredis.Redis, alert_key: str, *, field: str, value: str | int,
                              drop: str) -> bool:
    """Set `field` = `value` on the alert and delete `drop` ('' for none), unless the alert is gone
    (mark_alert_delivery.lua). Returns whether it was written."""
    return bool(await MARK_ALERT_DELIVERY(redis, [alert_key], [field, value, drop]))


async def forget_alert_failures(redis: aioredis.Redis, alert_key: str, *, sink: str) -> int:
    """Drop `sink`'s dead-lettered versions and retry marks on the alert (forget_alert_failures.lua).
    Returns how many fields were removed."""
    return int(await FORGET_ALERT_FAILURES(redis, [alert_key], [sink]))

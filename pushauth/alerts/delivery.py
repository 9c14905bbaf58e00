"""Alert delivery: from the alert stream to every configured sink, at least once.

Each stream entry names one alert version (`u` uid, `a` alert id, `v` version; `s` and `n` on a retry for
one sink). The worker reads the alert from the user's slot and hands it to each sink that has not had that
version yet:

    DELIVERED  -> `dl:<sink>:<version>` on the alert: a reclaimed or re-announced entry skips that sink
    RETRY      -> a retry entry for that sink alone, due after the next delay of `alerts.retry_schedule_s`
                  (or the receiver's Retry-After, if longer); after the last one, the dead letter
    GONE (410) -> the sink is disabled (`{alerts}:disabled`) and the delivery goes to the dead letter;
                  later alerts for a disabled sink go straight there, to be replayed once it is re-enabled

The dead letter is the alert stream's (`{alerts}:dead`, shared with entries that crashed a worker
repeatedly); the security team lists and replays it through the admin API. Every delivery of one alert
version to one sink carries the same `delivery_id` (the webhook's `webhook-id`), so a receiver can drop
the duplicates that at-least-once delivery allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any, cast

import redis.asyncio as aioredis
import structlog

from pushauth import ids, metrics
from pushauth.alerts.settings import SinkSettings
from pushauth.alerts.sinks import AlertSink, Notification, SinkOutcome, SinkOutcomeKind
from pushauth.alerts.store import AlertStore, alert_view
from pushauth.config import AlertSettings
from pushauth.detection import severity_rank
from pushauth.store import KeySpace
from pushauth.store.connection import STORE_DOWN_ERRORS
from pushauth.store.scripts import Script
from pushauth.store.streams import Fields, StreamConsumer

log = structlog.get_logger(__name__)

# Record a delivery on the alert, unless the alert is gone (never create a stray hash).
# KEYS: alert   ARGV: field, value
MARK = Script("mark_alert_delivery", """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
""")


def delivery_id(aid: str, version: int, sink: str) -> str:
    """Stable per alert version and sink: Standard Webhooks' `webhook-id`."""
    return f"msg_{aid}_v{version}_{sink}"


class AlertDelivery:
    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, store: AlertStore, settings: AlertSettings,
                 sinks: Mapping[str, AlertSink], sink_settings: Mapping[str, SinkSettings]) -> None:
        self._r = redis
        self._ks = keyspace
        self._store = store
        self._s = settings
        self._sinks = sinks
        self._min_rank = {name: severity_rank(sink_settings[name].min_severity) if name in sink_settings
                          else 0 for name in sinks}
        self.consumer: StreamConsumer | None = None

    def consumer_for(self, name: str) -> StreamConsumer:
        self.consumer = StreamConsumer(self._r, self._store.names, name, self.handle, batch=64,
                                       reclaim_idle_s=self._s.reclaim_idle_s, dead_letter_after=5)
        return self.consumer

    async def handle(self, entry_id: str, fields: Fields) -> None:
        uid, aid = fields["u"], fields["a"]
        version = int(fields["v"])
        if ids.alert_uid(aid) != uid:
            raise ValueError("alert entry names an alert outside its user")  # poison: dead-lettered
        h = await self._store.raw(aid)
        if h is None:  # deleted meanwhile: nothing left to deliver
            await self._store.delivered(uid, aid, version)
            return
        alert = alert_view(h)
        disabled = cast(dict[str, str], await self._r.hgetall(self._ks.alert_sinks_disabled))
        only = fields.get("s")
        targets = [only] if only else list(self._sinks)
        attempt = int(fields.get("n", "0"))
        await asyncio.gather(*(self._one(uid, aid, version, h, alert, name, attempt, name in disabled)
                               for name in targets))
        if not only:
            await self._store.delivered(uid, aid, version)

    async def _one(self, uid: str, aid: str, version: int, h: Mapping[str, str], alert: dict[str, Any],
                   name: str, attempt: int, disabled: bool) -> None:
        mark = f"dl:{name}:{version}"
        if h.get(mark):
            return  # delivered (or dead-lettered) before a crash or a second announcement
        sink = self._sinks.get(name)
        if sink is None:  # a retry for a sink that is no longer configured
            log.warning("alert_sink_not_configured", sink=name, alert=aid)
            return
        if severity_rank(alert["severity"]) < self._min_rank.get(name, 0):
            return
        key = self._ks.alert(uid, aid)
        if disabled:
            await self._dead(key, uid, aid, version, name, "sink_disabled")
            return
        note = Notification("alert.created" if version == 1 else "alert.updated", alert,
                            delivery_id(aid, version, name))
        started = time.monotonic()
        outcome = await sink.deliver(note)
        fields = {"sink": name, "alert": aid, "version": version, "attempt": attempt,
                  "outcome": outcome.kind.value, "reason": outcome.reason,
                  "ms": round((time.monotonic() - started) * 1000, 1)}
        metrics.ALERT_DELIVERIES.labels(name, outcome.kind.value).inc()
        if outcome.kind is SinkOutcomeKind.DELIVERED:
            await MARK(self._r, [key], [mark, int(time.time())])
            log.info("alert_delivered", **fields)
        elif outcome.kind is SinkOutcomeKind.GONE:
            await self._r.hset(self._ks.alert_sinks_disabled, name, int(time.time()))
            log.error("alert_sink_disabled", **fields)
            await self._dead(key, uid, aid, version, name, "gone_410")
        else:
            await self._retry(key, uid, aid, version, name, attempt, outcome, fields)

    async def _retry(self, key: str, uid: str, aid: str, version: int, name: str, attempt: int,
                     outcome: SinkOutcome, fields: dict[str, Any]) -> None:
        schedule = self._s.retry_schedule_s
        if attempt >= len(schedule) or self.consumer is None:
            log.error("alert_delivery_gave_up", **fields)
            await self._dead(key, uid, aid, version, name, f"retries_exhausted:{outcome.reason}")
            return
        # A receiver's Retry-After is honoured, but never beyond the longest step of the schedule.
        delay = max(float(schedule[attempt]), min(outcome.retry_after_s or 0.0, float(max(schedule))))
        retry = {"u": uid, "a": aid, "v": str(version), "s": name, "n": str(attempt + 1)}
        await self.consumer.schedule(retry, time.time() + delay)
        await MARK(self._r, [key], [f"dls:{name}:{version}", f"retrying:{attempt + 1}:{outcome.reason}"])
        log.warning("alert_delivery_retry", delay_s=delay, **fields)

    async def _dead(self, key: str, uid: str, aid: str, version: int, name: str, why: str) -> None:
        dead: dict[Any, Any] = {"u": uid, "a": aid, "v": str(version), "s": name, "_why": why,
                                "_at": str(int(time.time()))}
        pipe = self._r.pipeline(transaction=False)
        pipe.xadd(self._store.names.dead, dead, maxlen=100_000, approximate=True)
        await pipe.execute()
        await MARK(self._r, [key], [f"dl:{name}:{version}", f"dead:{why}"])
        metrics.ALERT_DELIVERIES.labels(name, "dead_letter").inc()
        log.error("alert_dead_letter", sink=name, alert=aid, version=version, why=why)


async def sweep_loop(store: AlertStore, interval_s: float, stop: asyncio.Event) -> None:
    """Every `interval_s`, announce alerts written more than two intervals ago and never announced."""
    while not stop.is_set():
        try:
            if announced := await store.sweep(older_than_s=2 * interval_s):
                log.warning("alert_sweep_announced", alerts=announced)
        except STORE_DOWN_ERRORS as exc:
            log.warning("alert_sweep_store_unavailable", error=type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


class DeadLetters:
    """What the security team sees of the dead letter, and replay."""

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, store: AlertStore) -> None:
        self._r = redis
        self._ks = keyspace
        self._store = store

    async def entries(self, limit: int) -> list[dict[str, Any]]:
        rows = cast(list[tuple[str, dict[str, str]]],
                    await self._r.xrevrange(self._store.names.dead, count=limit))
        out = []
        for entry_id, f in rows:
            item: dict[str, Any] = {"id": entry_id, "alert_id": f.get("a", ""), "sink": f.get("s", ""),
                                    "version": int(f["v"]) if f.get("v", "").isdigit() else None,
                                    "why": f.get("_why", ""),
                                    "at": int(f["_at"]) if f.get("_at", "").isdigit() else None}
            out.append(item)
        return out

    async def replay(self, entry_id: str) -> bool:
        """Put a dead delivery back on the stream (clearing its record so the sink is tried again)."""
        rows = cast(list[tuple[str, dict[str, str]]],
                    await self._r.xrange(self._store.names.dead, entry_id, entry_id))
        if not rows:
            return False
        f = rows[0][1]
        fields = {k: v for k, v in f.items() if not k.startswith("_") and k != "n"}
        if "u" in fields and "a" in fields and "v" in fields and "s" in fields \
                and ids.alert_uid(fields["a"]) == fields["u"]:
            await self._r.hdel(self._ks.alert(fields["u"], fields["a"]), f"dl:{fields['s']}:{fields['v']}")
        pipe = self._r.pipeline(transaction=False)
        pipe.xadd(self._store.names.stream, cast(dict[Any, Any], fields), maxlen=1_000_000, approximate=True)
        pipe.xdel(self._store.names.dead, entry_id)
        await pipe.execute()
        return True

    async def sinks(self, configured: Mapping[str, SinkSettings]) -> list[dict[str, Any]]:
        disabled = cast(dict[str, str], await self._r.hgetall(self._ks.alert_sinks_disabled))
        return [{"name": name, "kind": s.kind, "enabled": s.enabled, "min_severity": s.min_severity,
                 "disabled_at": int(disabled[name]) if name in disabled else None}
                for name, s in configured.items()]

    async def enable(self, name: str) -> bool:
        return bool(await self._r.hdel(self._ks.alert_sinks_disabled, name))

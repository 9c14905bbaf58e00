"""Alert delivery: from the alert stream to every configured sink, at least once, each version once.

Each stream entry names one alert version (`u` uid, `a` alert id, `v` version; `s` and `n` on a retry for
one sink, `s` alone on a replayed dead letter). An entry is a wake-up, not a snapshot: the worker reads the
alert as it stands and offers each sink the alert's *current* version, never an older state. An alert
raised and escalated before the worker got to it is sent once, carrying the newer version; the older
version, superseded before it could be delivered, is not sent on its own (the newer version's entry then
finds it delivered and sends nothing).

What the worker records on the alert hash, per sink:

    dl:<sink>:<version>   that version is settled for the sink: delivered (Unix time) or dead-lettered
                          ("dead:<why>"). Every entry skips a settled version.
    dls:<sink>:<version>  a retry of that version is scheduled ("retrying:<n>:<reason>"): an announcement
                          leaves the sink to that retry. Removed once the version is settled.

What a sink is sent:

    type         `alert.created` until a delivery of the alert to that sink has succeeded (a `dl:<sink>:*`
                 holding a time), `alert.updated` after: the first message a sink gets about an alert is
                 `alert.created` whatever its version, also when the alert only later reached the sink's
                 `min_severity`
    delivery_id  `msg_<aid>_v<version>_<sink>` (`delivery_id`): the same for every attempt of one version to
                 one sink (the webhook's `webhook-id`, the e-mail's Message-ID), so a receiver can drop
                 the duplicates that at-least-once delivery allows

and what happens next:

    DELIVERED  -> `dl:<sink>:<version>` = now
    RETRY      -> a retry entry for that sink and version, due after the next delay of
                  `alerts.retry_schedule_s` (or the receiver's Retry-After, if longer); after the last one,
                  the dead letter. A retry that comes due after the alert has moved to a newer version is
                  dropped: the newer version's own entry has delivered it or scheduled a retry of its own.
    GONE (410) -> the sink is disabled (`{alerts}:disabled`) and the delivery goes to the dead letter;
                  later alerts for a disabled sink go straight there, to be replayed once it is re-enabled

A worker handles the entries about one alert one at a time (a lock per alert id): two versions read in one
batch, or a retry coming due during an announcement, take turns, and the second sees what the first
recorded. So one worker sends each version once. Two workers may still both send a version (with the same
delivery id), or, in a narrow race (one reads the alert just before an escalation, the other just after,
neither delivery recorded yet), each send a different version as `alert.created`: delivery is at least
once.

The dead letter is the alert stream's (`{alerts}:dead`, shared with entries that crashed a worker
repeatedly); the security team lists and replays it through the admin API. Replay forgets the sink's
failures on that alert (its dead-lettered versions, its retries) and puts the entry back, so the alert is
delivered as it then stands, unless that version has reached the sink already.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import redis.asyncio as aioredis
import structlog

from pushauth import clock, ids, metrics
from pushauth.alerts import scripts as lua
from pushauth.alerts.settings import SinkSettings
from pushauth.alerts.sinks import AlertSink, Notification, SinkOutcome, SinkOutcomeKind
from pushauth.alerts.store import AlertStore, alert_view
from pushauth.config import AlertSettings
from pushauth.detection.rules import severity_rank
from pushauth.store import KeySpace
from pushauth.store.connection import STORE_DOWN_ERRORS
from pushauth.store.streams import Fields, StreamConsumer

log = structlog.get_logger(__name__)

def delivery_id(aid: str, version: int, sink: str) -> str:
    """Stable per alert version and sink: Standard Webhooks' `webhook-id`."""
    return f"msg_{aid}_v{version}_{sink}"


def reached(h: Mapping[str, str], sink: str) -> bool:
    """Has a delivery of this alert to `sink` succeeded (any version)? A dead letter does not count."""
    prefix = f"dl:{sink}:"
    return any(field.startswith(prefix) and value[:1].isdigit() for field, value in h.items())


class _OneAtATime:
    """A lock per key, kept only while someone holds it or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class AlertDelivery:
    """Owns delivery from the alert stream: for each entry, what each sink is sent (see the module
    docstring), the marks on the alert that make it once per version, retries and the dead letter.

    Keys: it consumes the alert stream (`{alerts}:stream`, its retries `{alerts}:delayed`, its dead letter
    `{alerts}:dead`) through a `StreamConsumer`, writes the `dl:` / `dls:` fields of the alert hashes
    (script mark_alert_delivery, `pushauth.alerts.scripts`) and disables sinks in `{alerts}:disabled`.
    Run by the alert worker (`workers/alerts.py`), or by the server itself in embedded mode
    (`pushauth.web.app`), through `consumer_for`."""

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, store: AlertStore, settings: AlertSettings,
                 sinks: Mapping[str, AlertSink], sink_settings: Mapping[str, SinkSettings]) -> None:
        self._redis = redis
        self._ks = keyspace
        self._store = store
        self._settings = settings
        self._sinks = sinks
        self._min_rank = {name: severity_rank(sink_settings[name].min_severity) if name in sink_settings
                          else 0 for name in sinks}
        self._per_alert = _OneAtATime()
        self.consumer: StreamConsumer | None = None

    def consumer_for(self, name: str) -> StreamConsumer:
        self.consumer = StreamConsumer(self._redis, self._store.names, name, self.handle, batch=64,
                                       reclaim_idle_s=self._settings.reclaim_idle_s, dead_letter_after=5)
        return self.consumer

    async def handle(self, entry_id: str, fields: Fields) -> None:
        uid, aid = fields["u"], fields["a"]
        version = int(fields["v"])
        if ids.alert_uid(aid) != uid:
            raise ValueError("alert entry names an alert outside its user")  # poison: dead-lettered
        only = fields.get("s")
        attempt = int(fields.get("n", "0"))
        async with self._per_alert.hold(aid):
            h = await self._store.raw(aid)
            if h is not None:
                await self._deliver(uid, aid, version, h, only, attempt)
        if not only:  # an announcement (deleted meanwhile or not): its outbox entry is done with
            await self._store.delivered(uid, aid, version)

    async def _deliver(self, uid: str, aid: str, version: int, h: Mapping[str, str], only: str | None,
                       attempt: int) -> None:
        alert = alert_view(h)
        current = int(alert["version"])
        if only and attempt and version < current:
            # The newer version's own entry has delivered it to this sink or scheduled its own retry.
            await self._redis.hdel(self._ks.alert(uid, aid), f"dls:{only}:{version}")
            log.info("alert_retry_superseded", sink=only, alert=aid, version=version, current=current)
            return
        disabled = cast(dict[str, str], await self._redis.hgetall(self._ks.alert_sinks_disabled))
        targets = [only] if only else list(self._sinks)
        await asyncio.gather(*(self._one(uid, aid, h, alert, name, attempt, name in disabled)
                               for name in targets))

    async def _one(self, uid: str, aid: str, h: Mapping[str, str], alert: dict[str, Any], name: str,
                   attempt: int, disabled: bool) -> None:
        version = int(alert["version"])
        if h.get(f"dl:{name}:{version}"):
            return  # delivered (or dead-lettered) already, by this entry before a crash or by another
        if not attempt and h.get(f"dls:{name}:{version}"):
            return  # a retry of this version is scheduled: it carries on from there
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
        note = Notification("alert.updated" if reached(h, name) else "alert.created", alert,
                            delivery_id(aid, version, name))
        started = time.monotonic()
        outcome = await sink.deliver(note)
        fields = {"sink": name, "alert": aid, "version": version, "type": note.type, "attempt": attempt,
                  "outcome": outcome.kind.value, "reason": outcome.reason,
                  "ms": round((time.monotonic() - started) * 1000, 1)}
        metrics.ALERT_DELIVERIES.labels(name, outcome.kind.value).inc()
        if outcome.kind is SinkOutcomeKind.DELIVERED:
            await lua.mark_alert_delivery(self._redis, key, field=f"dl:{name}:{version}",
                                          value=int(time.time()), drop=f"dls:{name}:{version}")
            log.info("alert_delivered", **fields)
        elif outcome.kind is SinkOutcomeKind.GONE:
            await self._redis.hset(self._ks.alert_sinks_disabled, name, int(time.time()))
            log.error("alert_sink_disabled", **fields)
            await self._dead(key, uid, aid, version, name, "gone_410")
        else:
            await self._retry(key, uid, aid, version, name, attempt, outcome, fields)

    async def _retry(self, key: str, uid: str, aid: str, version: int, name: str, attempt: int,
                     outcome: SinkOutcome, fields: dict[str, Any]) -> None:
        schedule = self._settings.retry_schedule_s
        if attempt >= len(schedule) or self.consumer is None:
            log.error("alert_delivery_gave_up", **fields)
            await self._dead(key, uid, aid, version, name, f"retries_exhausted:{outcome.reason}")
            return
        delay = clock.retry_delay_s(schedule, attempt, outcome.retry_after_s)
        retry = {"u": uid, "a": aid, "v": str(version), "s": name, "n": str(attempt + 1)}
        await self.consumer.schedule(retry, time.time() + delay)
        await lua.mark_alert_delivery(self._redis, key, field=f"dls:{name}:{version}",
                                      value=f"retrying:{attempt + 1}:{outcome.reason}", drop="")
        log.warning("alert_delivery_retry", delay_s=delay, **fields)

    async def _dead(self, key: str, uid: str, aid: str, version: int, name: str, why: str) -> None:
        dead: dict[Any, Any] = {"u": uid, "a": aid, "v": str(version), "s": name, "_why": why,
                                "_at": str(int(time.time()))}
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(self._store.names.dead, dead, maxlen=100_000, approximate=True)
        await pipe.execute()
        await lua.mark_alert_delivery(self._redis, key, field=f"dl:{name}:{version}", value=f"dead:{why}",
                                      drop=f"dls:{name}:{version}")
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
    """What the security team sees of the alert stream's dead letter (`{alerts}:dead`), replay, and the
    sinks a 410 disabled (`{alerts}:disabled`). Replay forgets the sink's failures on the alert (script
    forget_alert_failures, `pushauth.alerts.scripts`) and puts the entry back on `{alerts}:stream`.
    Called by the admin API (`pushauth.web.admin`)."""

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, store: AlertStore) -> None:
        self._redis = redis
        self._ks = keyspace
        self._store = store

    async def entries(self, limit: int) -> list[dict[str, Any]]:
        rows = cast(list[tuple[str, dict[str, str]]],
                    await self._redis.xrevrange(self._store.names.dead, count=limit))
        out = []
        for entry_id, f in rows:
            item: dict[str, Any] = {"id": entry_id, "alert_id": f.get("a", ""), "sink": f.get("s", ""),
                                    "version": int(f["v"]) if f.get("v", "").isdigit() else None,
                                    "why": f.get("_why", ""),
                                    "at": int(f["_at"]) if f.get("_at", "").isdigit() else None}
            out.append(item)
        return out

    async def replay(self, entry_id: str) -> bool:
        """Put a dead delivery back on the stream, after forgetting the sink's failures on that alert (so
        the sink is tried again with the alert as it then stands; see the module docstring)."""
        rows = cast(list[tuple[str, dict[str, str]]],
                    await self._redis.xrange(self._store.names.dead, entry_id, entry_id))
        if not rows:
            return False
        f = rows[0][1]
        fields = {k: v for k, v in f.items() if not k.startswith("_") and k != "n"}
        if "u" in fields and "a" in fields and "v" in fields and "s" in fields \
                and ids.alert_uid(fields["a"]) == fields["u"]:
            await lua.forget_alert_failures(self._redis, self._ks.alert(fields["u"], fields["a"]),
                                            sink=fields["s"])
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(self._store.names.stream, cast(dict[Any, Any], fields), maxlen=1_000_000, approximate=True)
        pipe.xdel(self._store.names.dead, entry_id)
        await pipe.execute()
        return True

    async def sinks(self, configured: Mapping[str, SinkSettings]) -> list[dict[str, Any]]:
        disabled = cast(dict[str, str], await self._redis.hgetall(self._ks.alert_sinks_disabled))
        return [{"name": name, "kind": s.kind, "enabled": s.enabled, "min_severity": s.min_severity,
                 "disabled_at": int(disabled[name]) if name in disabled else None}
                for name, s in configured.items()]

    async def enable(self, name: str) -> bool:
        return bool(await self._redis.hdel(self._ks.alert_sinks_disabled, name))

"""Alert records: how they are written, announced, listed and acknowledged.

An alert is written by the Lua script of the transition that caused it, in the user's slot (the ledger
it includes, pushauth/detection/lua/ledger.lua; the rules, pushauth/detection/rules.py), together with an
outbox entry `{uid}:aout` = "<aid>|<version>". The server then announces it (`announce`): one script in
the global `{alerts}` slot (ring_alerts.lua) adds it to the security team's index and appends a pointer to
the alert stream, which the alert worker consumes. The two steps cannot be one
atomic step on Redis Cluster (different slots), so the outbox closes the gap: if the server dies between
them, or Redis fails over, the alert worker's sweep (`sweep`) finds outbox entries older than a minute and
announces them again. Announcing twice is harmless: the index add is idempotent, and for any entry the
worker sends each sink the alert's current version only if that version is not settled for the sink yet
(`dl:<sink>:<version>` on the alert; pushauth/alerts/delivery.py). So a second announcement sends nothing,
and neither does a version's entry handled after the alert has moved on and its newer version was sent.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
import structlog

from pushauth import ids, metrics
from pushauth.alerts import scripts as lua
from pushauth.clock import rfc3339
from pushauth.config import Settings
from pushauth.detection.ledger import LedgerCall
from pushauth.detection.rules import ledger_config
from pushauth.errors import Conflict, NotFound
from pushauth.store import KeySpace, reads
from pushauth.store.connection import STORE_DOWN_ERRORS
from pushauth.store.durability import ReplicaAcks
from pushauth.store.streams import StreamNames

log = structlog.get_logger(__name__)

STREAM = "alerts"
STREAM_MAXLEN = 1_000_000
OPEN_CHUNK = 2000  # open alerts read per pipelined round trip by the severity-ordered view
# Outbox entries older than this are announced again by the sweep.
SWEEP_AGE_S = 60

_decode = msgspec.json.Decoder().decode
_TIME_KEYS = {"at": "at", "created": "created_at", "decided": "decided_at"}


def _times(value: Any) -> Any:
    """The ledger stores Unix seconds; the alert object says RFC 3339 (as the contract does everywhere)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in _TIME_KEYS and isinstance(v, int | float):
                out[_TIME_KEYS[k]] = rfc3339(int(v))
            else:
                out[k] = _times(v)
        return out
    if isinstance(value, list):
        return [_times(v) for v in value]
    return value


def _json_list(raw: str | None) -> list[Any]:
    if not raw:
        return []
    value = _decode(raw)
    # cjson encodes an empty table as {}: an empty list either way.
    return value if isinstance(value, list) else []


def alert_view(h: Mapping[str, str]) -> dict[str, Any]:
    """The contract's alert object from an alert hash."""
    events = _times(_json_list(h.get("events")))
    kinds = _decode(h["kinds"]) if h.get("kinds") else {}
    out: dict[str, Any] = {
        "id": h["id"], "kind": h["kind"], "severity": h["sev"], "user": h["user"],
        "created_at": rfc3339(int(h["created"])),
        "updated_at": rfc3339(int(h.get("updated") or h["created"])),
        "status": h["status"], "version": int(h.get("ver", "1")),
    }
    if h.get("cid"):
        out["challenge_id"] = h["cid"]
    if h.get("did"):
        out["device_id"] = h["did"]
    if h.get("ctx"):
        out["context"] = _decode(h["ctx"])
    out["evidence"] = {
        "event_count": int(h.get("n", "0")),
        "kinds": kinds if isinstance(kinds, dict) else {},
        "events": events,
        "containment": _times(_json_list(h.get("contained"))),
    }
    if h.get("acked_at"):
        out["acked_at"] = rfc3339(int(h["acked_at"]))
        out["acked_by"] = h.get("acked_by", "")
        if h.get("ack_note"):
            out["ack_note"] = h["ack_note"]
    return out


SEVERITY_RANK: dict[str, int] = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


def _ref(ref: str) -> tuple[str, str]:
    uid, _, aid = ref.partition("/")
    return uid, aid


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """What the triage view filters on; every field None matches every alert. Times are RFC 3339 strings,
    compared as strings (every alert time is the same UTC `Z` form)."""

    status: str | None = None
    uid: str | None = None
    severity: frozenset[str] | None = None
    kind: str | None = None
    app: str | None = None
    since: str | None = None
    until: str | None = None

    def matches(self, alert: Mapping[str, Any]) -> bool:
        if self.severity is not None and alert["severity"] not in self.severity:
            return False
        kinds = alert["evidence"]["kinds"]
        if self.kind is not None and alert["kind"] != self.kind and self.kind not in kinds:
            return False
        if self.app is not None and not any(
                isinstance(e, dict) and e.get("app") == self.app for e in alert["evidence"]["events"]):
            return False
        if self.since is not None and alert["updated_at"] < self.since:
            return False
        return self.until is None or alert["created_at"] <= self.until


class AlertStore:
    """Alert records once written: announcing, listing, acknowledging; and the ledger's calling convention.

    Owns the global alert keys (`{alerts}:index`, `{alerts}:open`, the alert stream `{alerts}:stream`)
    and, in each user's slot, the outbox (`{uid}:aout`) it empties; it reads the alert hashes
    (`{uid}:alert:<aid>`) and the user's list (`{uid}:alerts`) that the ledger writes, and on
    acknowledgement closes the user's incident (`{uid}:incident`). Scripts: ring_alerts (announce) and
    ack_alert (`pushauth.alerts.scripts`). It also builds every ledger script's ARGV[1..6] (`ledger_args`),
    since it holds the detection config they carry.

    Called by the services whose scripts raise alerts (`Challenges`, `Devices`, `Accounts`, the expiry
    worker) for `ledger_args` and `announce`; by the admin API and the console to list, read and
    acknowledge; and by the alert worker (`workers/alerts.py`, through `AlertDelivery`) for `raw`,
    `delivered` and `sweep`."""

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, settings: Settings, *,
                 assertion_life_s: int) -> None:
        self._redis = redis
        self._acks = ReplicaAcks.from_settings(settings.store)
        self._ks = keyspace
        policy = settings.policy
        self._cfg = ledger_config(settings.detection, settings.containment, assertion_life_s=assertion_life_s,
                                  remember_s=policy.remember_days * 86400,
                                  other_windows_s=policy.access_code_window_s)
        self.names = StreamNames.for_(keyspace.prefix, STREAM)

    # -- what the transition scripts need ------------------------------------------------------------------

    def ledger_args(self, uid: str, user: str, now: int) -> LedgerCall:
        """ARGV[1..6] of every script that includes the ledger (`pushauth.detection.ledger`)."""
        return LedgerCall(self._ks.user_prefix(uid), now, self._cfg, ids.new_alert_id(uid), user,
                          self._ks.events)

    async def announce(self, uid: str, notes: Sequence[str]) -> None:
        """Hand new alert versions to the alert stream. Never raises for a Redis outage: the alert is
        already durable in the user's slot and the sweep announces it when Redis is back."""
        if not notes:
            return
        try:
            await lua.ring_alerts(self._redis, index_key=self._ks.alert_index, open_key=self._ks.alert_open,
                                  stream_key=self.names.stream, uid=uid, now=int(time.time()),
                                  maxlen=STREAM_MAXLEN, notes=notes)
            for note in notes:
                metrics.ALERTS_ANNOUNCED.labels("created" if note.endswith("|1") else "updated").inc()
        except STORE_DOWN_ERRORS as exc:
            log.warning("alert_announce_deferred", error=type(exc).__name__, alerts=len(notes))
            metrics.REDIS_ERRORS.labels("alert_announce").inc()

    async def sweep(self, older_than_s: float = SWEEP_AGE_S) -> int:
        """Announce again every outbox entry older than `older_than_s` (the server died between writing an
        alert and announcing it, or the worker has not got to it). Returns how many were announced."""
        pattern = f"{self._ks.prefix}:{{*}}:aout"
        cutoff = time.time() - older_than_s
        announced = 0
        async for key in self._redis.scan_iter(match=pattern, count=1000, _type="zset"):
            uid = str(key)[len(self._ks.prefix) + 2:].split("}", 1)[0]
            stale = cast(list[str], await self._redis.zrangebyscore(key, "-inf", cutoff))
            if stale:
                await self.announce(uid, stale)
                announced += len(stale)
        return announced

    async def delivered(self, uid: str, aid: str, version: int) -> None:
        """The worker has handled this version's announcement: for every sink, the alert as it then stood
        (this version or a newer one) was delivered, scheduled for a retry, dead-lettered, found settled
        already, or left out (below the sink's min_severity)."""
        await self._redis.zrem(self._ks.alert_outbox(uid), f"{aid}|{version}")

    # -- reading -------------------------------------------------------------------------------------------

    async def raw(self, aid: str) -> dict[str, str] | None:
        uid = ids.alert_uid(aid)
        if uid is None:
            return None
        h = await reads.hgetall(self._redis, self._ks.alert(uid, aid))
        return h or None

    async def get(self, aid: str) -> dict[str, Any]:
        h = await self.raw(aid)
        if h is None:
            raise NotFound("no such alert")
        return alert_view(h)

    async def alerts(self, *, status: str | None, uid: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first: one user's alerts, or everyone's. Open alerts come from their own index, so an old
        open alert is never buried under newer acknowledged ones; the status is checked on the record
        itself either way (an index entry can lag an acknowledgement by one command)."""
        if uid is not None:
            key = self._ks.alerts(uid)
        else:
            key = self._ks.alert_open if status == "open" else self._ks.alert_index
        # With a status filter on a list that mixes both, look further back.
        span = limit if status is None or (status == "open" and uid is None) else min(5000, limit * 20)
        page = cast(list[str], await self._redis.zrevrange(key, 0, span - 1))
        if uid is not None:
            refs = [(uid, aid) for aid in page]
        else:
            refs = [(ref.split("/", 1)[0], ref.split("/", 1)[1]) for ref in page if "/" in ref]
        return await self._read_many(refs, status, limit)

    async def search(self, query: AlertQuery, *, start: int, limit: int,
                     by_severity: bool = False) -> tuple[list[dict[str, Any]], int | None]:
        """One page of the triage view: alerts matching `query`, and where the next page starts (None at
        the end). `by_severity`, for open alerts (few, by design: each is an incident someone must look at):
        all are read and ordered by severity, then newest first, so a critical one is never under newer
        lesser ones. Otherwise newest first by creation, paging back through the index, `start` being a
        position in it: a
        page is `limit` matches however many records were read to find them, and a new alert moves later
        pages by one, which shows an alert twice at worst, never skips one."""
        if by_severity and query.status == "open" and query.uid is None:
            # Every open alert, however many: a cap on the newest N would hide an older critical one under
            # a flood of newer lesser ones, the very failure this order exists to prevent. The cost is one
            # pipelined read per OPEN_CHUNK open alerts on each page load (an index by severity is the
            # step after this one, if open alerts ever number in the tens of thousands).
            found = []
            position = 0
            while True:
                page = cast(list[str], await self._redis.zrevrange(self._ks.alert_open, position,
                                                                   position + OPEN_CHUNK - 1))
                refs = [_ref(r) for r in page]
                found += [a for a in await self._read_many(refs, "open", len(refs)) if query.matches(a)]
                if len(page) < OPEN_CHUNK:
                    break
                position += len(page)
            found.sort(key=lambda a: (SEVERITY_RANK.get(a["severity"], 0), a["updated_at"]), reverse=True)
            return found[start:start + limit], (start + limit if len(found) > start + limit else None)
        if query.uid is not None:
            key = self._ks.alerts(query.uid)
        else:
            key = self._ks.alert_open if query.status == "open" else self._ks.alert_index
        out: list[dict[str, Any]] = []
        position = start
        chunk = 500
        while len(out) < limit:
            page = cast(list[str], await self._redis.zrevrange(key, position, position + chunk - 1))
            if not page:
                return out, None
            refs = [(query.uid, r) for r in page] if query.uid is not None else [_ref(r) for r in page]
            records = await self._read_all(refs)
            for i, alert in enumerate(records):
                if alert is not None and (query.status is None or alert["status"] == query.status) \
                        and query.matches(alert):
                    out.append(alert)
                    if len(out) >= limit:
                        return out, position + i + 1
            position += len(page)
        return out, position

    async def _read_all(self, refs: Sequence[tuple[str, str]]) -> list[dict[str, Any] | None]:
        pipe = self._redis.pipeline(transaction=False)
        for uid, aid in refs:
            pipe.hgetall(self._ks.alert(uid, aid))
        return [alert_view(h) if h else None for h in cast(list[dict[str, str]], await pipe.execute())]

    async def _read_many(self, refs: Iterable[tuple[str, str]], status: str | None,
                         limit: int) -> list[dict[str, Any]]:
        refs = list(refs)
        pipe = self._redis.pipeline(transaction=False)
        for uid, aid in refs:
            pipe.hgetall(self._ks.alert(uid, aid))
        out = []
        for h in cast(list[dict[str, str]], await pipe.execute()):
            if h and (status is None or h.get("status") == status):
                out.append(alert_view(h))
                if len(out) >= limit:
                    break
        return out

    async def ack(self, aid: str, by: str, note: str = "") -> dict[str, Any]:
        uid = ids.alert_uid(aid)
        if uid is None:
            raise NotFound("no such alert")
        acked = await lua.ack_alert(self._redis, alert_key=self._ks.alert(uid, aid),
                                    incident_key=self._ks.incident(uid), now=int(time.time()), by=by, aid=aid,
                                    acks=self._acks)
        if acked is lua.Acked.NOT_FOUND:
            raise NotFound("no such alert")
        if acked is lua.Acked.ALREADY:
            raise Conflict("this alert is already acknowledged", code="already_acked")
        await self._redis.zrem(self._ks.alert_open, f"{uid}/{aid}")
        if note:  # after the ack script, which stays as it is: a note is worth less than the ack itself
            await lua.mark_alert_delivery(self._redis, self._ks.alert(uid, aid), field="ack_note", value=note,
                                          drop="")
        return await self.get(aid)

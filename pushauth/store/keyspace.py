"""Every Redis key name, in one place.

    {p}:u:<sha256(user)>          -> uid                    user index (own slot; never changes once set)
    {p}:{<uid>}:user              hash  name, locked, ...  per-user state
    {p}:{<uid>}:devs              set   active device ids
    {p}:{<uid>}:ndevs             set   ids of further phones waiting for approval (their hashes expire)
    {p}:{<uid>}:notices:<did>     list  notices for a phone to show its user (a phone was added), newest first
    {p}:{<uid>}:dev:<did>         hash  device record (public key, push token, status)
    {p}:{<uid>}:ch:<cid>          hash  challenge
    {p}:{<uid>}:pending           zset  pending challenge ids scored by expiry
    {p}:{<uid>}:jti:<did>:<jti>   str   device-request replay cache, lives 2 x skew window
    {p}:{<uid>}:recent            zset  the user's recent challenge ids by creation (evidence, admin view)
    {p}:{<uid>}:hist              zset  security history for the detection windows ("<seq>:<kind>:<cid>")
    {p}:{<uid>}:seen              hash  networks ("n:<net>") and locations ("l:<loc>") of approved sign-ins
    {p}:{<uid>}:alert:<aid>       hash  an alert (incident) and its evidence
    {p}:{<uid>}:alerts            zset  the user's alert ids by creation
    {p}:{<uid>}:incident          str   the open incident new events join (expires with the window)
    {p}:{<uid>}:aout              zset  alert versions not yet handed to the alert stream (outbox)
    {p}:{<uid>}:remembered        hash  remembered browsers: token id -> {app, browser hash, exp}
    {p}:enr:<sha256(code)>        hash  unused enrollment code (own slot; GETDEL consumes it)
    {p}:jti:enr:<jkt>:<jti>       str   replay cache for enrollment requests (no uid yet)
    {p}:events                    pub/sub channel for challenge decisions
    {p}:{alerts}:index            zset  every alert ("<uid>/<aid>") by creation: the security team's list
    {p}:{alerts}:open             zset  the same for alerts not yet acknowledged
    {p}:{alerts}:stream|delayed|dead    the alert delivery stream (store.streams), its retries, dead letter
    {p}:{alerts}:disabled         hash  alert sinks disabled by a 410, and when
    {p}:{expiry}:due              zset  challenge ids by expiry, for the expiry worker
    {p}:{audit}:stream            stream the audit trail (pushauth/audit.py)
    {p}:{<uid>}:acode             hash  the user's temporary access code (hashed) and its expiry
    {p}:rl:ip:<address>           hash  rate-limit bucket of a client address (IPv6: its /64, as
                                        "<network>/64"); lives a window at most
                                        (pushauth/ratelimit/limiter.py)
    {p}:rl:a:<application id>     hash  rate-limit bucket of an application

The `{uid}` hash tag puts all of one user's keys in one Cluster slot, so one script can change a
challenge, the user's counters and the alert it raises together. The `{alerts}` and `{expiry}` keys are
global; what links a user's slot to them is the per-user outbox (`aout`): an alert is written with its
cause, announced to the global stream right after, and re-announced by the alert worker's sweep if the
server died in between (see pushauth/alerts/store.py).
"""

from __future__ import annotations

import hashlib

from pushauth.crypto.secrets import sha256_hex


class KeySpace:
    __slots__ = ("alert_index", "alert_open", "alert_sinks_disabled", "audit", "events", "expiry_due",
                 "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.events = f"{prefix}:events"
        self.alert_index = f"{prefix}:{{alerts}}:index"
        self.alert_open = f"{prefix}:{{alerts}}:open"
        self.alert_sinks_disabled = f"{prefix}:{{alerts}}:disabled"
        self.expiry_due = f"{prefix}:{{expiry}}:due"
        self.audit = f"{prefix}:{{audit}}:stream"

    def user_prefix(self, uid: str) -> str:
        """What the Lua ledger builds a user's other keys from (same hash tag)."""
        return f"{self.prefix}:{{{uid}}}:"

    def alert(self, uid: str, aid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:alert:{aid}"

    def alerts(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:alerts"

    def alert_outbox(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:aout"

    def incident(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:incident"

    def recent(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:recent"

    def access_code(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:acode"

    def remembered(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:remembered"

    def user_index(self, canonical_user: str) -> str:
        return f"{self.prefix}:u:{hashlib.sha256(canonical_user.encode()).hexdigest()}"

    def user(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:user"

    def devices(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:devs"

    def new_devices(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:ndevs"

    def notices(self, uid: str, did: str) -> str:
        return f"{self.prefix}:{{{uid}}}:notices:{did}"

    def challenge_prefix(self, uid: str) -> str:
        """A challenge's key is this and its id (what a script builds challenge keys from)."""
        return f"{self.prefix}:{{{uid}}}:ch:"

    def device(self, uid: str, did: str) -> str:
        return f"{self.prefix}:{{{uid}}}:dev:{did}"

    def challenge(self, uid: str, cid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:ch:{cid}"

    def pending(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:pending"

    def jti(self, uid: str, did: str, jti: str) -> str:
        return f"{self.prefix}:{{{uid}}}:jti:{did}:{jti}"

    def enrollment(self, code: str) -> str:
        return f"{self.prefix}:enr:{sha256_hex(code)}"

    def enrollment_jti(self, jkt: str, jti: str) -> str:
        return f"{self.prefix}:jti:enr:{jkt}:{jti}"

    def rate_bucket(self, kind: str, subject: str) -> str:
        # No hash tag: each bucket is the only key its scripts touch, so any slot will do.
        return f"{self.prefix}:rl:{kind}:{subject}"

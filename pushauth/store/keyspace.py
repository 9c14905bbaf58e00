"""Every Redis key name, in one place.

    {p}:u:<sha256(user)>          -> uid                    user index (own slot; never changes once set)
    {p}:{<uid>}:user              hash  name, locked, ...  per-user state
    {p}:{<uid>}:devs              set   active device ids
    {p}:{<uid>}:dev:<did>         hash  device record (public key, push token, status)
    {p}:{<uid>}:ch:<cid>          hash  challenge
    {p}:{<uid>}:pending           zset  pending challenge ids scored by expiry
    {p}:{<uid>}:jti:<did>:<jti>   str   device-request replay cache, lives 2 x skew window
    {p}:enr:<sha256(code)>        hash  unused enrollment code (own slot; GETDEL consumes it)
    {p}:jti:enr:<jkt>:<jti>       str   replay cache for enrollment requests (no uid yet)
    {p}:events                    pub/sub channel for challenge decisions

The `{uid}` hash tag puts all of one user's keys in one Cluster slot.
"""

from __future__ import annotations

import hashlib

from pushauth.crypto.secrets import sha256_hex


class KeySpace:
    __slots__ = ("events", "p")

    def __init__(self, prefix: str) -> None:
        self.p = prefix
        self.events = f"{prefix}:events"

    def user_index(self, canonical_user: str) -> str:
        return f"{self.p}:u:{hashlib.sha256(canonical_user.encode()).hexdigest()}"

    def user(self, uid: str) -> str:
        return f"{self.p}:{{{uid}}}:user"

    def devices(self, uid: str) -> str:
        return f"{self.p}:{{{uid}}}:devs"

    def device(self, uid: str, did: str) -> str:
        return f"{self.p}:{{{uid}}}:dev:{did}"

    def challenge(self, uid: str, cid: str) -> str:
        return f"{self.p}:{{{uid}}}:ch:{cid}"

    def pending(self, uid: str) -> str:
        return f"{self.p}:{{{uid}}}:pending"

    def jti(self, uid: str, did: str, jti: str) -> str:
        return f"{self.p}:{{{uid}}}:jti:{did}:{jti}"

    def enrollment(self, code: str) -> str:
        return f"{self.p}:enr:{sha256_hex(code)}"

    def enrollment_jti(self, jkt: str, jti: str) -> str:
        return f"{self.p}:jti:enr:{jkt}:{jti}"

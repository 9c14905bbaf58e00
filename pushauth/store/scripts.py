"""Lua scripts: loading them from package data, and running them.

Each script lives in a `.lua` file beside the Python that owns it (`pushauth/challenges/lua/respond.lua`),
opening with a header that names its KEYS, its ARGV and what it returns, and is run only through that
package's typed wrapper (its `scripts.py`), which builds ARGV by name and decodes the reply. Nothing else
sends EVALSHA.

Why scripts rather than WATCH/MULTI: a challenge answer must check several things (replay cache, device
still active, challenge still pending and unexpired, user not locked) and then decide, and of 100
concurrent answers exactly one may win. A script does that in one round trip with no retry loop. Each
touches only keys with one hash tag, so the same scripts run on a single Redis and on Cluster.

Shared Lua (the detection ledger, the device library) is a file of its own, pulled in at load by a line

    --@include pushauth.detection ledger.lua

which is replaced by that file's text (once per script, in order). Times are passed in from the caller
(integer Unix seconds) so a test can reason about them; API servers are expected to run NTP, as any token
issuer must.

Scripts are sent with EVALSHA and re-sent with EVAL when Redis answers NOSCRIPT (after a restart or a
failover the script cache is empty): that is part of recovering by itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import redis.exceptions as rex

if TYPE_CHECKING:
    from pushauth.store.durability import ReplicaAcks

KeyT = str
ArgT = str | int | float | bytes

_INCLUDE = re.compile(r"^--@include\s+([\w.]+)\s+([\w.-]+\.lua)\s*$", re.MULTILINE)


def lua_source(package: str, filename: str) -> str:
    """The text of `package`'s `lua/<filename>` with its `--@include` lines replaced by the included files
    (recursively; a file included twice is included once)."""
    seen: set[tuple[str, str]] = set()

    def expand(pkg: str, name: str) -> str:
        seen.add((pkg, name))
        text = resources.files(pkg).joinpath("lua", name).read_text(encoding="utf-8")

        def include(m: re.Match[str]) -> str:
            target = (m.group(1), m.group(2))
            if target in seen:
                return f"-- ({target[0]} {target[1]} already included)"
            return f"-- >>> {target[0]} {target[1]}\n" + expand(*target).rstrip("\n") + \
                f"\n-- <<< {target[0]} {target[1]}"

        return _INCLUDE.sub(include, text)

    return expand(package, filename)


class Script:
    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        # SHA-1 because that is how Redis names cached scripts (EVALSHA), not for security.
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    @classmethod
    def load(cls, package: str, filename: str) -> Script:
        """The script in `package`'s `lua/<filename>` (package data), its includes expanded."""
        return cls(filename.removesuffix(".lua"), lua_source(package, filename))

    async def __call__(self, redis: aioredis.Redis, keys: Sequence[KeyT], args: Sequence[ArgT], *,
                       acks: ReplicaAcks | None = None) -> Any:
        """Run the script. With `acks`, the change is answered only once replicas hold it
        (`pushauth.store.durability`): what the API calls for every change it answers a client about."""
        if acks is not None:
            reply, acked = await acks.send(redis, ("EVALSHA", self.sha, len(keys), *keys, *args), keys[0])
            if isinstance(reply, rex.NoScriptError):  # the script cache is empty (restart, failover)
                reply, acked = await acks.send(redis, self.command(keys, args), keys[0])
            return acks.settle(self.name, reply, acked)
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except rex.NoScriptError:
            return await redis.eval(self.source, len(keys), *keys, *args)

    def command(self, keys: Sequence[KeyT], args: Sequence[ArgT]) -> tuple[ArgT, ...]:
        """The script as one command for a pipeline. EVAL, not EVALSHA: in a pipeline a NOSCRIPT answer
        (the script cache emptied by a restart or failover) cannot be retried alone, and these scripts are
        small."""
        return ("EVAL", self.source, len(keys), *keys, *args)

    def __repr__(self) -> str:
        return f"Script({self.name})"

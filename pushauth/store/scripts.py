"""The Lua scripts that change state. Each runs atomically inside Redis, and each touches only keys with
one user's hash tag, so the same scripts run on a single Redis and on Cluster.

Why scripts rather than WATCH/MULTI: a challenge answer must check several things (replay cache, device
still active, challenge still pending and unexpired, user not locked) and then decide, and of 100
concurrent answers exactly one may win. A script does that in one round trip with no retry loop.

Times are passed in from the caller (integer Unix seconds) so a test can reason about them; API servers
are expected to run NTP, as any token issuer must.

Scripts are sent with EVALSHA and re-sent with EVAL when Redis answers NOSCRIPT (after a restart or a
failover the script cache is empty): that is part of recovering by itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rex

KeyT = str
ArgT = str | int | float | bytes


class Script:
    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        # SHA-1 because that is how Redis names cached scripts (EVALSHA), not for security.
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, redis: aioredis.Redis, keys: Sequence[KeyT], args: Sequence[ArgT]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except rex.NoScriptError:
            return await redis.eval(self.source, len(keys), *keys, *args)

    def __repr__(self) -> str:
        return f"Script({self.name})"


# KEYS: user, devs, challenge, pending
# ARGV: now, exp, expire_at, cid, then field/value pairs for the challenge hash
# -> {"ok", "<comma-joined device ids>"} | {"locked"} | {"not_enrolled"}
CREATE_CHALLENGE = Script("create_challenge", """
local now = tonumber(ARGV[1])
if redis.call('HGET', KEYS[1], 'locked') == '1' then return {'locked'} end
local devs = redis.call('SMEMBERS', KEYS[2])
if #devs == 0 then return {'not_enrolled'} end
table.sort(devs)
local joined = table.concat(devs, ',')
redis.call('HSET', KEYS[3], 'devs', joined, unpack(ARGV, 5))
redis.call('EXPIREAT', KEYS[3], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[4])
return {'ok', joined}
""")

# The gate every authenticated device read passes: record the request's jti (replay cache) and check the
# device is still active, then read what the request is for.
# KEYS: jti, device, target (a challenge hash, or the pending zset)
# ARGV: jti_ttl, mode ('challenge' | 'pending'), now
# -> {"ok", <HGETALL of challenge> | <pending ids>} | {"replay"} | {"revoked"}
DEVICE_GATE = Script("device_gate", """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return {'replay'} end
if redis.call('HGET', KEYS[2], 'st') ~= 'active' then return {'revoked'} end
if ARGV[2] == 'challenge' then
  return {'ok', redis.call('HGETALL', KEYS[3])}
end
return {'ok', redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[3], '+inf')}
""")

# A device answers a challenge (its request already passed DEVICE_GATE, which recorded the jti).
# Everything that could make the answer invalid is re-checked here, at the moment of the transition, so
# nothing can change between the check and the write: the device revoked meanwhile, the challenge
# decided by a concurrent answer, expired, or the account locked.
# KEYS: challenge, pending, device, user
# ARGV: now, cid, did, status ('approved'|'denied'), reason, channel, answer_ip
# -> {"ok"} | {"revoked"} | {"not_found"} | {"expired"} | {"locked"} | {"conflict", status}
RESPOND = Script("respond", """
local now = tonumber(ARGV[1])
if redis.call('HGET', KEYS[3], 'st') ~= 'active' then return {'revoked'} end
local c = redis.call('HMGET', KEYS[1], 'st', 'exp', 'devs')
if not c[1] then return {'not_found'} end
if not string.find(',' .. c[3] .. ',', ',' .. ARGV[3] .. ',', 1, true) then return {'not_found'} end
if c[1] ~= 'pending' then return {'conflict', c[1]} end
if tonumber(c[2]) <= now then return {'expired'} end
if ARGV[4] == 'approved' and redis.call('HGET', KEYS[4], 'locked') == '1' then return {'locked'} end
redis.call('HSET', KEYS[1], 'st', ARGV[4], 'dat', ARGV[1], 'dev', ARGV[3], 'rsn', ARGV[5], 'aip', ARGV[7])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[6],
           ARGV[2] .. ' ' .. ARGV[4] .. ' ' .. ARGV[1] .. ' ' .. ARGV[3] .. ' ' .. ARGV[5])
return {'ok'}
""")

# The login flow gives up on a pending challenge.
# KEYS: challenge, pending
# ARGV: now, cid, app, channel
# -> {"ok"} | {"not_found"} | {"expired"} | {"conflict", status}
CANCEL = Script("cancel", """
local now = tonumber(ARGV[1])
local c = redis.call('HMGET', KEYS[1], 'st', 'exp', 'app')
if not c[1] or c[3] ~= ARGV[3] then return {'not_found'} end
if c[1] ~= 'pending' then return {'conflict', c[1]} end
if tonumber(c[2]) <= now then return {'expired'} end
redis.call('HSET', KEYS[1], 'st', 'cancelled', 'dat', ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[2] .. ' cancelled ' .. ARGV[1] .. ' - -')
return {'ok'}
""")

# Register a new device for a user.
# KEYS: devs, device, user
# ARGV: did, user name, then field/value pairs for the device hash
REGISTER_DEVICE = Script("register_device", """
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSETNX', KEYS[3], 'name', ARGV[2])
return {'ok'}
""")

# Revoke a device: it leaves the active set at once, so it gets no new challenges, and every later
# request it signs is refused by DEVICE_GATE / RESPOND.
# KEYS: devs, device
# ARGV: did, now, by
# -> {"ok"} | {"not_found"}
REVOKE_DEVICE = Script("revoke_device", """
if redis.call('HGET', KEYS[2], 'st') ~= 'active' then return {'not_found'} end
redis.call('HSET', KEYS[2], 'st', 'revoked', 'revoked_at', ARGV[2], 'revoked_by', ARGV[3])
redis.call('SREM', KEYS[1], ARGV[1])
return {'ok'}
""")

# A device replaces its push token (the app reinstalled, the OS rotated the token).
# KEYS: device   ARGV: provider, token, now
UPDATE_PUSH_TOKEN = Script("update_push_token", """
if redis.call('HGET', KEYS[1], 'st') ~= 'active' then return {'not_found'} end
redis.call('HSET', KEYS[1], 'pprov', ARGV[1], 'ptok', ARGV[2], 'ptok_at', ARGV[3])
redis.call('HDEL', KEYS[1], 'ptok_stale')
return {'ok'}
""")

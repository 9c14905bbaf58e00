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
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import redis.exceptions as rex

from pushauth.detection import LEDGER

if TYPE_CHECKING:
    from pushauth.store.durability import ReplicaAcks

KeyT = str
ArgT = str | int | float | bytes


class Script:
    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        # SHA-1 because that is how Redis names cached scripts (EVALSHA), not for security.
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, redis: aioredis.Redis, keys: Sequence[KeyT], args: Sequence[ArgT], *,
                       acks: ReplicaAcks | None = None) -> Any:
        """Run the script. With `acks`, the change is answered only once replicas hold it
        (`pushauth.store.durability`): what the API calls for every change it answers a client about."""
        if acks is not None:
            return await acks.run(redis, self, keys, args)
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except rex.NoScriptError:
            return await redis.eval(self.source, len(keys), *keys, *args)

    def __repr__(self) -> str:
        return f"Script({self.name})"


# The scripts below that evaluate detection rules include the ledger (`pushauth.detection.LEDGER`). They
# share one calling convention: KEYS[1] = the user hash (it routes the call to the user's slot; every
# other key is built from UP and shares its hash tag), ARGV[1..6] = UP, NOW, CFG, AID, USER (empty: read
# it from the user hash), CHAN, then their own arguments. Each returns {result, NOTES, ...}: NOTES are the
# alerts to announce (`pushauth.alerts.store.AlertStore.announce`).
_LEDGER_HEADER = """
local UP, NOW, CFG = ARGV[1], tonumber(ARGV[2]), cjson.decode(ARGV[3])
local AID, USER, CHAN = ARGV[4], ARGV[5], ARGV[6]
if USER == '' then USER = redis.call('HGET', KEYS[1], 'name') or '' end
"""


def with_ledger(name: str, body: str) -> Script:
    return Script(name, _LEDGER_HEADER + LEDGER + body)


# A login flow asks for a prompt. Expired prompts are settled first (ignored_prompts, lockout), then lock
# and suspension, then the phone's own pause, then a remembered browser (no prompt), then push bombing
# (refused: 429), then new_context; then the challenge is written.
# ARGV[7..]: exp, expire_at, cid, network, location, context JSON, app, remembered token id, browser hash,
#            then field/value pairs
# -> {"ok", NOTES, "<comma-joined device ids>"} | {"locked"|"suspended"|"not_enrolled"|"remembered", NOTES}
#    | {"rate_limited", NOTES, retry_after_s} | {"paused", NOTES, until}
#    | {"exempt", NOTES, "shared"|"exempt"}
CREATE_CHALLENGE = with_ledger("create_challenge", """
local exp, expire_at, cid, net, loc, ctxjson, app = tonumber(ARGV[7]), ARGV[8], ARGV[9], ARGV[10],
  ARGV[11], ARGV[12], ARGV[13]
local rtid, rbid = ARGV[14], ARGV[15]
-- accounts the security team marked shared (a mailbox) or exempt: no prompt, nothing else applies
local flags = redis.call('HMGET', uk('user'), 'policy_shared', 'policy_exempt')
if flags[1] == '1' then return {'exempt', NOTES, 'shared'} end
if flags[2] == '1' then return {'exempt', NOTES, 'exempt'} end
local login = nil
if ctxjson ~= '' then login = cjson.decode(ctxjson) end
settle()
local locked, suspended = gate_state()
if locked or suspended then
  local what = locked and 'locked' or 'suspended'
  -- a prompt the account cannot take: evidence for an open incident, never a page of its own
  if redis.call('EXISTS', uk('incident')) == 1 then
    raise('blocked_prompt', 'info', {reason = what, app = app, login = login})
  end
  return {what, NOTES}
end
-- the phone paused its own prompts (holiday): refused, and counted
local paused = tonumber(redis.call('HGET', uk('user'), 'paused_until') or '0')
if paused > NOW then
  redis.call('HINCRBY', uk('user'), 'paused_refused', 1)
  hist_add('paused', '-')
  return {'paused', NOTES, paused}
end
if rtid ~= '' then
  local raw = redis.call('HGET', uk('remembered'), rtid)
  if raw then
    local r = cjson.decode(raw)
    if r.app == app and r.bid == rbid and tonumber(r.exp) > NOW then return {'remembered', NOTES} end
  end
end
local devs = redis.call('SMEMBERS', uk('devs'))
if #devs == 0 then return {'not_enrolled', NOTES} end
local n, found = hist_count(CFG.bomb_win, {prompt = true})
if n >= CFG.bomb_max then
  raise('push_bombing', 'high', {app = app, login = login, prompts = found, refused = true})
  local retry = 1
  if found[1] then retry = math.max(1, found[1].at + CFG.bomb_win - NOW) end
  return {'rate_limited', NOTES, retry}
end
if CFG.ctx_s > 0 and (net ~= '' or loc ~= '') and redis.call('HGET', uk('user'), 'approvals') then
  local seen = false
  for _, f in ipairs({net ~= '' and ('n:' .. net) or false, loc ~= '' and ('l:' .. loc) or false}) do
    if f then
      local t = tonumber(redis.call('HGET', uk('seen'), f) or '0')
      if NOW - t <= CFG.ctx_s then seen = true end
    end
  end
  if not seen then
    raise('new_context', 'low', {challenge_id = cid, app = app, login = login,
                                 network = net ~= '' and net or nil})
  end
end
table.sort(devs)
local joined = table.concat(devs, ',')
local ckey = uk('ch:' .. cid)
redis.call('HSET', ckey, 'devs', joined, 'net', net, 'loc', loc, unpack(ARGV, 16))
redis.call('EXPIREAT', ckey, expire_at)
redis.call('ZADD', uk('pending'), exp, cid)
redis.call('ZADD', uk('recent'), NOW, cid)
redis.call('ZREMRANGEBYSCORE', uk('recent'), '-inf', NOW - 7 * 86400)
redis.call('ZREMRANGEBYRANK', uk('recent'), 0, -201)
hist_add('prompt', cid)
return {'ok', NOTES, joined}
""")

# Expired prompts of one user, settled by the expiry worker (the user's next event would do it too).
# -> {"ok", NOTES, settled count}
SETTLE = with_ledger("settle", """
local n = settle()
gate_state()
return {'ok', NOTES, n}
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
# decided by a concurrent answer, expired, or the account locked or suspended. The rules run in the same
# step: an alert and the decision it is about are written together.
# ARGV[7..]: cid, did, status ('approved'|'denied'), reason, answer_ip
# -> {"ok", NOTES} | {"revoked"|"not_found"|"expired"|"locked"|"suspended", NOTES}
#    | {"conflict", NOTES, status}
RESPOND = with_ledger("respond", """
local cid, did, status, reason, aip = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local ckey = uk('ch:' .. cid)
if redis.call('HGET', uk('dev:' .. did), 'st') ~= 'active' then return {'revoked', NOTES} end
local c = redis.call('HMGET', ckey, 'st', 'exp', 'devs', 'net', 'loc', 'late')
if not c[1] then return {'not_found', NOTES} end
if not string.find(',' .. c[3] .. ',', ',' .. did .. ',', 1, true) then return {'not_found', NOTES} end
if c[1] ~= 'pending' then return {'conflict', NOTES, c[1]} end
if tonumber(c[2]) <= NOW then
  -- An answer nobody is waiting for. Counted once per challenge; a late "not me" is still the user
  -- saying someone else is signing in, and is treated as such.
  if c[6] then return {'expired', NOTES} end
  settle()
  redis.call('HSET', ckey, 'late', status .. ':' .. reason, 'late_at', NOW, 'late_dev', did, 'aip', aip)
  if status == 'denied' and reason == 'not_me' then
    on_denial(cid, 'denied_not_me', 'critical')
    not_me()
    fail()
  else
    local ev = ch_evidence(cid)
    ev.answer = status
    ev.answer_reason = reason ~= '-' and reason or nil
    ev.device_id = did
    raise('late_response', 'medium', ev)
  end
  return {'expired', NOTES}
end
settle()
local locked, suspended = gate_state()
if status == 'approved' and (locked or suspended) then
  local what = locked and 'locked' or 'suspended'
  if redis.call('EXISTS', uk('incident')) == 1 then
    local ev = ch_evidence(cid)
    ev.reason = what
    ev.device_id = did
    ev.phone_ip = aip ~= '-' and aip or nil
    raise('blocked_approval', 'info', ev)
  end
  return {what, NOTES}
end
redis.call('HSET', ckey, 'st', status, 'dat', NOW, 'dev', did, 'rsn', reason, 'aip', aip)
redis.call('ZREM', uk('pending'), cid)
-- the sixth field, Redis's own clock in microseconds, times the notification (metrics only)
local t = redis.call('TIME')
redis.call('PUBLISH', CHAN, cid .. ' ' .. status .. ' ' .. NOW .. ' ' .. did .. ' ' .. reason .. ' '
           .. t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
if status == 'approved' then
  local n, found = hist_count(CFG.aad_win, {deny = true, wrong = true, ignored = true})
  if n >= CFG.aad_n then
    local ev = ch_evidence(cid)
    ev.failures = found
    raise('approved_after_denials', 'critical', ev)
  end
  hist_add('approve', cid)
  redis.call('HSET', uk('user'), 'fails', 0)
  redis.call('HINCRBY', uk('user'), 'approvals', 1)
  -- remember this browser for this application, if the login flow named it and remembering is on
  local rm = redis.call('HMGET', ckey, 'rmb', 'app')
  if CFG.remember_s > 0 and rm[1] and rm[1] ~= '' then
    redis.call('HSET', uk('remembered'), 'r' .. cid,
               cjson.encode({app = rm[2], bid = rm[1], created = NOW, exp = NOW + CFG.remember_s}))
    if redis.call('HLEN', uk('remembered')) > 100 then
      local all = redis.call('HGETALL', uk('remembered'))
      for i = 1, #all, 2 do
        if tonumber(cjson.decode(all[i + 1]).exp) <= NOW then redis.call('HDEL', uk('remembered'), all[i]) end
      end
    end
  end
  if c[4] and c[4] ~= '' then redis.call('HSET', uk('seen'), 'n:' .. c[4], NOW) end
  if c[5] and c[5] ~= '' then redis.call('HSET', uk('seen'), 'l:' .. c[5], NOW) end
else
  if reason == 'not_me' then
    on_denial(cid, 'denied_not_me', 'critical')
    not_me()
  elseif reason == 'wrong_number' then
    on_denial(cid, 'wrong_number', 'high')
  else
    on_denial(cid, 'denied', 'low')
  end
  fail()
end
return {'ok', NOTES}
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

# Register a new device for a user. A new phone revokes the user's remembered browsers (whoever enrolled
# it may be signing in from one), and, when the user had a phone before, raises an info alert and leaves
# a notice for the other phones ("a new phone was added to your account").
# ARGV[7..]: did, then field/value pairs for the device hash   -> {"ok", NOTES, other active device ids}
REGISTER_DEVICE = with_ledger("register_device", """
local did = ARGV[7]
local others = redis.call('SMEMBERS', uk('devs'))
local before = tonumber(redis.call('HGET', uk('user'), 'enrolled') or '0')
redis.call('HSET', uk('dev:' .. did), unpack(ARGV, 8))
redis.call('SADD', uk('devs'), did)
redis.call('HSETNX', uk('user'), 'name', USER)
redis.call('HINCRBY', uk('user'), 'enrolled', 1)
redis.call('DEL', uk('remembered'))
if before > 0 then
  local d = redis.call('HMGET', uk('dev:' .. did), 'name', 'platform', 'enroll_ip')
  raise('device_enrolled', 'info', {device_id = did, device_name = d[1] or nil, platform = d[2] or nil,
                                    phone_ip = (d[3] ~= '' and d[3]) or nil, other_devices = #others})
  for _, other in ipairs(others) do
    redis.call('LPUSH', uk('notices:' .. other), cjson.encode({type = 'device_added', device_id = did,
                                                                name = d[1], at = NOW}))
    redis.call('LTRIM', uk('notices:' .. other), 0, 49)
  end
end
return {'ok', NOTES, others}
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


# The security team unlocks a user: the lockout (and its failure count), the suspension, or both.
# KEYS: user   ARGV: now, by, what ('all' | 'lock' | 'suspension')
# -> {was_locked, was_suspended} as 0/1
UNLOCK_USER = Script("unlock_user", """
local u = redis.call('HMGET', KEYS[1], 'locked', 'suspended')
local was_locked, was_suspended = 0, 0
if ARGV[3] ~= 'suspension' then
  if u[1] == '1' then was_locked = 1 end
  redis.call('HSET', KEYS[1], 'locked', '0', 'fails', 0, 'unlocked_at', ARGV[1], 'unlocked_by', ARGV[2])
end
if ARGV[3] ~= 'lock' then
  if u[2] == '1' then was_suspended = 1 end
  redis.call('HSET', KEYS[1], 'suspended', '0', 'lifted_at', ARGV[1], 'lifted_by', ARGV[2])
end
return {was_locked, was_suspended}
""")

# The security team locks a user by hand: pending prompts are denied at once ("locked").
# ARGV[7]: why (who locked it)   -> {"ok", NOTES}
LOCK_USER = with_ledger("lock_user", """
lock(ARGV[7])
return {'ok', NOTES}
""")

# Acknowledge an alert. Its incident closes: later events open a new alert.
# KEYS: alert, incident   ARGV: now, by, aid  -> {"ok"} | {"not_found"} | {"already"}
ACK_ALERT = Script("ack_alert", """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'not_found'} end
if st == 'acked' then return {'already'} end
redis.call('HSET', KEYS[1], 'status', 'acked', 'acked_at', ARGV[1], 'acked_by', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return {'ok'}
""")


# The security team issues a temporary access code (stored hashed, one per user: a new one replaces the
# old). Raises an info alert so its use is visible.
# ARGV[7..]: sha256(code), expires_at, by   -> {"ok", NOTES}
ISSUE_ACCESS_CODE = with_ledger("issue_access_code", """
redis.call('HSET', uk('acode'), 'h', ARGV[7], 'exp', ARGV[8], 'by', ARGV[9], 'at', NOW)
redis.call('EXPIREAT', uk('acode'), ARGV[8])
raise('access_code_issued', 'info', {by = ARGV[9], expires = tonumber(ARGV[8])})
return {'ok', NOTES}
""")

# The login flow checks an access code. Single use; wrong codes are rate limited per user and count
# toward the lockout like any failed authentication. Comparing SHA-256 digests in Lua is not a timing
# oracle for the code: an attacker learns at most a prefix of the digest of their own guess.
# ARGV[7..]: sha256(code presented), attempts, window_s   -> {"valid"|"invalid"|"locked"|"suspended", NOTES}
#    | {"rate_limited", NOTES, retry_after_s}
VERIFY_ACCESS_CODE = with_ledger("verify_access_code", """
settle()
local locked, suspended = gate_state()
local n, found = hist_count(tonumber(ARGV[9]), {acode_fail = true})
if n >= tonumber(ARGV[8]) then
  return {'rate_limited', NOTES, math.max(1, found[1].at + tonumber(ARGV[9]) - NOW)}
end
if locked then return {'locked', NOTES} end
if suspended then return {'suspended', NOTES} end
local a = redis.call('HMGET', uk('acode'), 'h', 'exp')
if a[1] and tonumber(a[2]) > NOW and a[1] == ARGV[7] then
  redis.call('DEL', uk('acode'))
  hist_add('acode_ok', '-')
  redis.call('HSET', uk('user'), 'fails', 0)
  raise('access_code_used', 'info', {})
  return {'valid', NOTES}
end
hist_add('acode_fail', '-')
fail()
return {'invalid', NOTES}
""")

# A phone pauses its user's prompts (holiday) until a time, or resumes them (until = 0).
# KEYS: user   ARGV: until, did, now
PAUSE_PROMPTS = Script("pause_prompts", """
if tonumber(ARGV[1]) > 0 then
  redis.call('HSET', KEYS[1], 'paused_until', ARGV[1], 'paused_by', ARGV[2], 'paused_at', ARGV[3])
else
  redis.call('HDEL', KEYS[1], 'paused_until', 'paused_by', 'paused_at')
end
return {'ok'}
""")


# A rate-limit check (pushauth/ratelimit.py): the one round trip a limited request costs.
# KEYS[1]: the bucket, a hash: t = theoretical arrival time of its next request (GCRA), fn = auth failures
#          counted in the window that closes at fe (client addresses only)
# ARGV: now, quota (requests per window; 0: not metered), window_s, auth failures allowed (0: not checked)
# -> {"ok"} | {"requests", retry_after_s} | {"auth_failures", retry_after_s}
RATE_LIMIT = Script("rate_limit", """
local now, quota, win, fmax = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[1], 't', 'fn', 'fe')
local fe = tonumber(b[3] or '0')
if fmax > 0 and tonumber(b[2] or '0') >= fmax and fe > now then return {'auth_failures', fe - now} end
if quota == 0 then return {'ok'} end
-- a burst of the whole quota conforms; beyond it, one request per win/quota seconds
local tat = math.max(tonumber(b[1] or '0'), now) + win / quota
if tat - now > win then return {'requests', math.ceil(tat - now - win)} end
-- %.17g: the exact double; Lua's own tostring keeps 14 digits, too few for the fraction
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tat))
redis.call('EXPIRE', KEYS[1], math.max(math.ceil(tat - now), fe - now))
return {'ok'}
""")

# An authentication failure from a client address (its RATE_LIMIT bucket). The first one opens a window;
# RATE_LIMIT refuses the address once the count reaches its limit, until the window closes.
# KEYS[1]: the bucket   ARGV: now, window_s   -> the failures counted in the open window
RATE_AUTH_FAILURE = Script("rate_auth_failure", """
local now, win = tonumber(ARGV[1]), tonumber(ARGV[2])
local fe = tonumber(redis.call('HGET', KEYS[1], 'fe') or '0')
local n = 1
if fe <= now then
  fe = now + win
  redis.call('HSET', KEYS[1], 'fn', 1, 'fe', fe)
else
  n = redis.call('HINCRBY', KEYS[1], 'fn', 1)
end
if redis.call('TTL', KEYS[1]) < fe - now then redis.call('EXPIRE', KEYS[1], fe - now) end
return n
""")

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


# Activating a phone, shared by registration (a first phone, or one the security team vouched for) and by
# the answer that approves a further phone from an existing one. Included after the ledger.
DEVICE_LIB = """
-- The phone joins the active set (it gets challenges from now on), and the user's remembered browsers are
-- forgotten (whoever added it may be signing in from one). When the user had other phones, the security
-- team is alerted (high: a second phone is how a phished password becomes a lasting second factor) and
-- each other phone gets a `device_added` notice. `how` is merged into the alert's evidence (who approved
-- or vouched). Returns the phones to push the notice to (not the one that approved it).
local function device_added(did, how)
  local others = redis.call('SMEMBERS', uk('devs'))
  local dkey = uk('dev:' .. did)
  redis.call('HSET', dkey, 'st', 'active', 'activated', NOW)
  redis.call('HDEL', dkey, 'appr')
  redis.call('PERSIST', dkey)
  redis.call('SADD', uk('devs'), did)
  redis.call('SREM', uk('ndevs'), did)
  local before = tonumber(redis.call('HGET', uk('user'), 'enrolled') or '0')
  redis.call('HINCRBY', uk('user'), 'enrolled', 1)
  redis.call('DEL', uk('remembered'))
  local notify = {}
  if #others == 0 and before == 0 then return notify end
  local d = redis.call('HMGET', dkey, 'name', 'platform', 'enroll_ip')
  local ev = {device_id = did, device_name = d[1] or nil, platform = d[2] or nil,
              phone_ip = (d[3] and d[3] ~= '') and d[3] or nil, other_devices = #others}
  for k, v in pairs(how) do ev[k] = v end
  -- a phone again after all were removed (a replaced phone) is worth a note; a second one is a finding
  raise('device_enrolled', #others > 0 and 'high' or 'info', ev)
  for _, other in ipairs(others) do
    redis.call('LPUSH', uk('notices:' .. other), cjson.encode({type = 'device_added', device_id = did,
                                                                name = d[1], at = NOW}))
    redis.call('LTRIM', uk('notices:' .. other), 0, 49)
    if other ~= how.approved_by then notify[#notify + 1] = other end
  end
  return notify
end
"""


def with_device_lib(name: str, body: str) -> Script:
    return Script(name, _LEDGER_HEADER + LEDGER + DEVICE_LIB + body)


# A login flow asks for a prompt. Expired prompts are settled first (ignored_prompts), then lock and
# suspension (they win over every policy, exempt and shared accounts included), then the account's policy
# (exempt or shared: no prompt), then the phone's own pause, then a remembered browser (no prompt), then
# push bombing (refused: 429), then new_context; then the challenge is written.
# ARGV[7..]: exp, expire_at, cid, network, location, context JSON, app, remembered token id, browser hash,
#            the account kind by the configured patterns ('' | 'shared' | 'exempt'), then field/value pairs
# -> {"ok", NOTES, "<comma-joined device ids>"} | {"locked"|"suspended"|"not_enrolled"|"remembered", NOTES}
#    | {"rate_limited", NOTES, retry_after_s} | {"paused", NOTES, until}
#    | {"exempt", NOTES, "shared"|"exempt"}
CREATE_CHALLENGE = with_ledger("create_challenge", """
local exp, expire_at, cid, net, loc, ctxjson, app = tonumber(ARGV[7]), ARGV[8], ARGV[9], ARGV[10],
  ARGV[11], ARGV[12], ARGV[13]
local rtid, rbid, pattern = ARGV[14], ARGV[15], ARGV[16]
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
-- shared mailboxes and exempt accounts (the security team's flags, or the configured patterns): no prompt
local flags = redis.call('HMGET', uk('user'), 'policy_shared', 'policy_exempt')
if flags[1] == '1' or pattern == 'shared' then return {'exempt', NOTES, 'shared'} end
if flags[2] == '1' or pattern == 'exempt' then return {'exempt', NOTES, 'exempt'} end
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
local retry = bombing({app = app, login = login})
if retry then return {'rate_limited', NOTES, retry} end
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
redis.call('HSET', ckey, 'devs', joined, 'net', net, 'loc', loc, unpack(ARGV, 17))
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

# The gate every authenticated device request passes: record the request's jti (replay cache) and check the
# device is still active, then read what the request is for. A phone waiting for approval (st 'pending',
# added by an application for a user who already has a phone) may only make the 'self' requests.
# KEYS: jti, device, target (a challenge hash, the pending zset, or the device hash)
# ARGV: jti_ttl, mode, now, device id, challenge key prefix ("<p>:{<uid>}:ch:", for 'pending')
#   'challenge'  read the target
#   'fetch'      read a challenge, marking it `seen` when it targets this phone (the prompt reached a
#                phone: a cancellation then counts as an ignored prompt)
#   'pending'    the ids of the pending challenges, each marked `seen` the same way
#   'self'       read the target; a pending phone may too (unenrolling itself, a new push token)
#   'activation' the same, and a phone whose approval was refused may read why
# -> {"ok", <HGETALL of target> | <pending ids>} | {"replay"} | {"revoked"} | {"pending"}
DEVICE_GATE = Script("device_gate", """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return {'replay'} end
local mode, now, did = ARGV[2], ARGV[3], ARGV[4]
local st = redis.call('HGET', KEYS[2], 'st')
local own = mode == 'self' or mode == 'activation'
if st ~= 'active' and not (own and st == 'pending') and not (mode == 'activation' and st == 'refused') then
  if st == 'pending' then return {'pending'} end
  return {'revoked'}
end
local function mark_seen(key)
  local c = redis.call('HMGET', key, 'devs', 'seen')
  if c[1] and not c[2] and string.find(',' .. c[1] .. ',', ',' .. did .. ',', 1, true) then
    redis.call('HSET', key, 'seen', now)
  end
end
if mode == 'pending' then
  local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. now, '+inf')
  for _, cid in ipairs(ids) do mark_seen(ARGV[5] .. cid) end
  return {'ok', ids}
end
local h = redis.call('HGETALL', KEYS[3])
if mode == 'fetch' and #h > 0 then mark_seen(KEYS[3]) end
return {'ok', h}
""")

# A device answers a challenge (its request already passed DEVICE_GATE, which recorded the jti).
# Everything that could make the answer invalid is re-checked here, at the moment of the transition, so
# nothing can change between the check and the write: the device revoked meanwhile, the challenge
# decided by a concurrent answer, expired, or the account locked or suspended. The rules run in the same
# step: an alert and the decision it is about are written together.
# An answer to a prompt nobody waits for any more (it expired, or the login flow cancelled it) decides
# nothing, but a "not me" is still the user saying someone else is signing in: it is recorded, alerted and
# contained exactly as on a pending prompt (once per challenge).
# A challenge with purpose 'add_device' asks an existing phone to approve a new one (DEVICE_LIB): its
# approval activates the new phone, its denial refuses it.
# ARGV[7..]: cid, did, status ('approved'|'denied'), reason, answer_ip
# -> {"ok", NOTES, "<comma-joined devices to push a notice to>"}
#    | {"revoked"|"not_found"|"locked"|"suspended", NOTES}
#    | {"expired", NOTES, "", "recorded"?} | {"conflict", NOTES, status, "recorded"?}
RESPOND = with_device_lib("respond", """
local cid, did, status, reason, aip = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local ckey = uk('ch:' .. cid)
if redis.call('HGET', uk('dev:' .. did), 'st') ~= 'active' then return {'revoked', NOTES} end
local c = redis.call('HMGET', ckey, 'st', 'exp', 'devs', 'net', 'loc', 'late', 'purp', 'newdev')
if not c[1] then return {'not_found', NOTES} end
if not string.find(',' .. c[3] .. ',', ',' .. did .. ',', 1, true) then return {'not_found', NOTES} end
local not_me_said = status == 'denied' and reason == 'not_me'
local expired = c[1] == 'pending' and tonumber(c[2]) <= NOW
if c[1] == 'cancelled' or expired then
  local result, detail = 'expired', ''
  if c[1] == 'cancelled' then result, detail = 'conflict', 'cancelled' end
  -- counted once per challenge; on a cancelled prompt only a "not me" is news
  if c[6] or (c[1] == 'cancelled' and not not_me_said) then return {result, NOTES, detail} end
  settle()
  redis.call('HSET', ckey, 'late', status .. ':' .. reason, 'late_at', NOW, 'late_dev', did, 'aip', aip)
  if not_me_said then
    on_denial(cid, 'denied_not_me', 'critical', {answer = 'denied', answer_reason = 'not_me',
                                                  device_id = did, phone_ip = aip ~= '-' and aip or nil})
    not_me()
    return {result, NOTES, detail, 'recorded'}
  end
  local ev = ch_evidence(cid)
  ev.answer = status
  ev.answer_reason = reason ~= '-' and reason or nil
  ev.device_id = did
  raise('late_response', 'medium', ev)
  return {result, NOTES, detail}
end
if c[1] ~= 'pending' then return {'conflict', NOTES, c[1]} end
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
local adding = c[7] == 'add_device'
-- the new phone withdrew (unenrolled, or the security team revoked it) after the prompt was sent
if adding and redis.call('HGET', uk('dev:' .. c[8]), 'st') ~= 'pending' then
  return {'conflict', NOTES, 'cancelled'}
end
redis.call('HSET', ckey, 'st', status, 'dat', NOW, 'dev', did, 'rsn', reason, 'aip', aip)
redis.call('ZREM', uk('pending'), cid)
-- the sixth field, Redis's own clock in microseconds, times the notification (metrics only)
local t = redis.call('TIME')
redis.call('PUBLISH', CHAN, cid .. ' ' .. status .. ' ' .. NOW .. ' ' .. did .. ' ' .. reason .. ' '
           .. t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
local notify = ''
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
  if adding then
    notify = table.concat(device_added(c[8], {approved_by = did, approval_challenge_id = cid}), ',')
    return {'ok', NOTES, notify}
  end
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
  if adding then
    redis.call('HSET', uk('dev:' .. c[8]), 'st', 'refused', 'refused_at', NOW, 'refused_by', did,
               'refused_why', reason)
    redis.call('SREM', uk('ndevs'), c[8])
  end
  if reason == 'not_me' then
    on_denial(cid, 'denied_not_me', 'critical')
    not_me()
  elseif reason == 'wrong_number' then
    on_denial(cid, 'wrong_number', 'high')
    fail()
  else
    on_denial(cid, 'denied', 'low')
  end
end
return {'ok', NOTES, notify}
""")

# The login flow gives up on a pending challenge (DEL /v1/challenges/{id}). A prompt that had reached a
# phone (`seen`: fetched by one; `pd:<device>` = sent: a provider accepted its push) counts as ignored, and
# every cancellation counts toward prompt_cycling (`on_cancel` in the ledger). A prompt asking to add a
# phone is no login flow's to cancel.
# ARGV[7..]: cid, app
# -> {"ok", NOTES} | {"not_found", NOTES} | {"expired", NOTES} | {"conflict", NOTES, status}
CANCEL = with_ledger("cancel", """
local cid, app = ARGV[7], ARGV[8]
local ckey = uk('ch:' .. cid)
local c = redis.call('HMGET', ckey, 'st', 'exp', 'app', 'purp', 'seen', 'devs')
if not c[1] or c[3] ~= app or (c[4] and c[4] ~= '') then return {'not_found', NOTES} end
if c[1] ~= 'pending' then return {'conflict', NOTES, c[1]} end
if tonumber(c[2]) <= NOW then return {'expired', NOTES} end
redis.call('HSET', ckey, 'st', 'cancelled', 'dat', NOW)
redis.call('ZREM', uk('pending'), cid)
redis.call('PUBLISH', CHAN, cid .. ' cancelled ' .. NOW .. ' - -')
local reached = c[5] ~= false
if not reached then
  for did in string.gmatch(c[6] or '', '[^,]+') do
    if string.sub(redis.call('HGET', ckey, 'pd:' .. did) or '', 1, 4) == 'sent' then reached = true end
  end
end
on_cancel(cid, reached)
return {'ok', NOTES}
""")

# Register a new device for a user. Active at once when it is the user's first phone, or when the security
# team vouched for it (an admin-issued enrollment, or one made after the user proved themselves with a
# temporary access code); `device_added` (DEVICE_LIB) alerts and tells the other phones. Otherwise (an
# application asked for a further phone: a phished password is enough for that) it is 'pending': an
# 'add_device' challenge goes to the user's active phones, with a number the new phone shows, and RESPOND
# activates or refuses it. The pending phone and its record expire with that challenge. A locked or
# suspended account gets no new phone, and the approval prompt counts toward push bombing like any prompt.
# ARGV[7..]: did, vouch ('admin' | 'access_code' | ''), approval challenge id, its exp, its expire_at,
#            number, nonce, application id, login context JSON (the new phone's address), the phone's
#            context JSON, then field/value pairs of the device hash
# -> {"active", NOTES, "<phones to push a notice to>"} | {"pending", NOTES, "<phones asked to approve>"}
#    | {"locked"|"suspended", NOTES} | {"rate_limited", NOTES, retry_after_s}
REGISTER_DEVICE = with_device_lib("register_device", """
local did, vouch, acid, aexp, aexpire_at = ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10]), ARGV[11]
local num, nonce, app, ctxjson, pctxjson = ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16]
settle()
local locked, suspended = gate_state()
if locked or suspended then return {locked and 'locked' or 'suspended', NOTES} end
local others = redis.call('SMEMBERS', uk('devs'))
local approval = #others > 0 and vouch == ''
if approval then
  local retry = bombing({app = app, device_id = did})
  if retry then return {'rate_limited', NOTES, retry} end
end
local dkey = uk('dev:' .. did)
redis.call('HSET', dkey, unpack(ARGV, 17))
redis.call('HSETNX', uk('user'), 'name', USER)
if not approval then
  local how = {}
  if vouch ~= '' then how.vouched_by = vouch end
  return {'active', NOTES, table.concat(device_added(did, how), ',')}
end
table.sort(others)
local joined = table.concat(others, ',')
redis.call('HSET', dkey, 'st', 'pending', 'appr', acid)
redis.call('EXPIREAT', dkey, aexpire_at)
redis.call('SADD', uk('ndevs'), did)
local ckey = uk('ch:' .. acid)
redis.call('HSET', ckey, 'app', app, 'user', USER, 'st', 'pending', 'iat', NOW, 'exp', aexp, 'nonce', nonce,
           'num', num, 'purp', 'add_device', 'newdev', did, 'ndp', redis.call('HGET', dkey, 'platform') or '',
           'devs', joined, 'net', '', 'loc', '')
if ctxjson ~= '' then redis.call('HSET', ckey, 'ctx', ctxjson) end
if pctxjson ~= '' then redis.call('HSET', ckey, 'pctx', pctxjson) end
redis.call('EXPIREAT', ckey, aexpire_at)
redis.call('ZADD', uk('pending'), aexp, acid)
redis.call('ZADD', uk('recent'), NOW, acid)
hist_add('prompt', acid)
return {'pending', NOTES, joined}
""")

# Revoke a device (the security team; a phone unenrolling itself): it leaves the active set at once, so it
# gets no new challenges, and every later request it signs is refused by DEVICE_GATE / RESPOND. A phone
# still waiting for approval can be revoked too: its approval prompt is withdrawn.
# KEYS: devs, device, pending, pending devices   ARGV: did, now, by, challenge key prefix
# -> {"ok"} | {"not_found"}
REVOKE_DEVICE = Script("revoke_device", """
local d = redis.call('HMGET', KEYS[2], 'st', 'appr')
if d[1] ~= 'active' and d[1] ~= 'pending' then return {'not_found'} end
redis.call('HSET', KEYS[2], 'st', 'revoked', 'revoked_at', ARGV[2], 'revoked_by', ARGV[3])
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
if d[1] == 'pending' and d[2] then
  local ckey = ARGV[4] .. d[2]
  if redis.call('HGET', ckey, 'st') == 'pending' then
    redis.call('HSET', ckey, 'st', 'cancelled', 'dat', ARGV[2])
    redis.call('ZREM', KEYS[3], d[2])
  end
end
return {'ok'}
""")

# One of the user's phones revokes another (lost or replaced). A phone activated less than the cool-down
# ago cannot revoke a phone older than itself, unless the security team allowed it (`may_revoke`): a
# phished password plus an approval tricked out of the user must not end with the real phone removed.
# Either way the security team hears of it (high).
# ARGV[7..]: revoking device, target device, cool-down seconds
# -> {"ok", NOTES} | {"revoked", NOTES} | {"not_found", NOTES} | {"cooldown", NOTES, until}
REVOKE_BY_DEVICE = with_ledger("revoke_by_device", """
local by, target, cool = ARGV[7], ARGV[8], tonumber(ARGV[9])
local b = redis.call('HMGET', uk('dev:' .. by), 'st', 'activated', 'created', 'may_revoke')
if b[1] ~= 'active' then return {'revoked', NOTES} end
local t = redis.call('HMGET', uk('dev:' .. target), 'st', 'activated', 'created', 'name', 'platform')
if t[1] ~= 'active' then return {'not_found', NOTES} end
local b_since = tonumber(b[2] or b[3] or '0')
local t_since = tonumber(t[2] or t[3] or '0')
local ev = {device_id = target, device_name = t[4] or nil, platform = t[5] or nil, by_device = by}
if cool > 0 and NOW - b_since < cool and t_since <= b_since and b[4] ~= '1' then
  ev.cooldown_until = b_since + cool
  raise('device_revoke_refused', 'high', ev)
  return {'cooldown', NOTES, b_since + cool}
end
redis.call('HSET', uk('dev:' .. target), 'st', 'revoked', 'revoked_at', NOW, 'revoked_by', 'device:' .. by)
redis.call('SREM', uk('devs'), target)
raise('device_revoked', 'high', ev)
return {'ok', NOTES}
""")

# Which way an application's enrollment for a user goes: the user's first phone ('first'), a further phone
# the user may add at once because a temporary access code proved them within the grant window (the grant
# is spent: 'access_code'), or a further phone an existing one must approve ('approval').
# KEYS: user, devs   ARGV: now   -> 'first' | 'access_code' | 'approval'
ENROLL_MODE = Script("enroll_mode", """
if redis.call('SCARD', KEYS[2]) == 0 then return 'first' end
local grant = tonumber(redis.call('HGET', KEYS[1], 'acode_grant') or '0')
if grant > tonumber(ARGV[1]) then
  redis.call('HDEL', KEYS[1], 'acode_grant')
  return 'access_code'
end
return 'approval'
""")

# A device replaces its push token (the app reinstalled, the OS rotated the token).
# KEYS: device   ARGV: provider, token, now
UPDATE_PUSH_TOKEN = Script("update_push_token", """
if redis.call('HGET', KEYS[1], 'st') ~= 'active' then return {'not_found'} end
redis.call('HSET', KEYS[1], 'pprov', ARGV[1], 'ptok', ARGV[2], 'ptok_at', ARGV[3])
redis.call('HDEL', KEYS[1], 'ptok_stale')
return {'ok'}
""")


# The security team unlocks a user: the lockout (and its failure count), the suspension, or both; and
# either way the counts that would refuse the user at once afterwards (the push-bombing window and the
# wrong-access-code window start again from now: `hist_count`'s reset marks). Says which blocks it ended,
# for the audit trail.
# ARGV[7..]: by, what ('all' | 'lock' | 'suspension'), access-code window_s, access-code attempts
# -> {"ok", NOTES, was_locked, was_suspended, push_bombing_block_ended, access_code_block_ended} (0/1)
UNLOCK_USER = with_ledger("unlock_user", """
local by, what = ARGV[7], ARGV[8]
local u = redis.call('HMGET', uk('user'), 'locked', 'suspended')
local was_locked, was_suspended = 0, 0
local bombing = window_block('prompt', CFG.bomb_win, CFG.bomb_max, 'bomb_reset') and 1 or 0
local codes = window_block('acode_fail', tonumber(ARGV[9]), tonumber(ARGV[10]), 'acode_reset')
if what ~= 'suspension' then
  if u[1] == '1' then was_locked = 1 end
  redis.call('HSET', uk('user'), 'locked', '0', 'fails', 0, 'unlocked_at', NOW, 'unlocked_by', by)
end
if what ~= 'lock' then
  if u[2] == '1' then was_suspended = 1 end
  redis.call('HSET', uk('user'), 'suspended', '0', 'lifted_at', NOW, 'lifted_by', by)
end
local last = redis.call('HGET', uk('user'), 'seq') or '0'
redis.call('HSET', uk('user'), 'bomb_reset', last, 'acode_reset', last)
return {'ok', NOTES, was_locked, was_suspended, bombing, codes and 1 or 0}
""")

# What refuses the user for a while without anyone's decision: the push-bombing window, and the
# wrong-access-code window while a code exists (for the user view; nothing is changed).
# ARGV[7..]: access-code window_s, access-code attempts
# -> {"ok", NOTES, bombing since, bombing until, codes since, codes until} (0: not blocked)
USER_BLOCKS = with_ledger("user_blocks", """
local bs, bu = window_block('prompt', CFG.bomb_win, CFG.bomb_max, 'bomb_reset')
local cs, cu
if redis.call('EXISTS', uk('acode')) == 1 then
  cs, cu = window_block('acode_fail', tonumber(ARGV[7]), tonumber(ARGV[8]), 'acode_reset')
end
return {'ok', NOTES, bs or 0, bu or 0, cs or 0, cu or 0}
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
# old). Wrong codes typed before it no longer count toward its attempt limit (`acode_reset`): the user the
# team just helped must not meet "too many wrong access codes". Raises an info alert so its use is visible.
# ARGV[7..]: sha256(code), expires_at, by   -> {"ok", NOTES}
ISSUE_ACCESS_CODE = with_ledger("issue_access_code", """
redis.call('HSET', uk('acode'), 'h', ARGV[7], 'exp', ARGV[8], 'by', ARGV[9], 'at', NOW)
redis.call('EXPIREAT', uk('acode'), ARGV[8])
redis.call('HSET', uk('user'), 'acode_reset', redis.call('HGET', uk('user'), 'seq') or '0')
raise('access_code_issued', 'info', {by = ARGV[9], expires = tonumber(ARGV[8])})
return {'ok', NOTES}
""")

# The login flow checks an access code. Single use. While a code exists, wrong codes are guesses at it:
# rate limited per user and counted toward the lockout. Without one there is nothing to guess and nothing is
# counted (anyone with an application key could otherwise lock any user out, or block the code the service
# desk is about to issue). A valid code opens a window in which the user may add a phone at once
# (`acode_grant`, spent by ENROLL_MODE): proving themselves to the service desk stands in for approving it
# on a phone they no longer have. Comparing SHA-256 digests in Lua is not a timing oracle for the code: an
# attacker learns at most a prefix of the digest of their own guess.
# ARGV[7..]: sha256(code presented), attempts, window_s, enrollment grant_s
# -> {"valid"|"invalid"|"locked"|"suspended", NOTES} | {"rate_limited", NOTES, retry_after_s}
VERIFY_ACCESS_CODE = with_ledger("verify_access_code", """
settle()
local locked, suspended = gate_state()
local a = redis.call('HMGET', uk('acode'), 'h', 'exp')
local exists = a[1] and tonumber(a[2]) > NOW
local win = tonumber(ARGV[9])
local n, found = hist_count(win, {acode_fail = true}, 'acode_reset')
if exists and n >= tonumber(ARGV[8]) then
  return {'rate_limited', NOTES, math.max(1, found[1].at + win - NOW)}
end
if locked then return {'locked', NOTES} end
if suspended then return {'suspended', NOTES} end
if not exists then return {'invalid', NOTES} end
if a[1] == ARGV[7] then
  redis.call('DEL', uk('acode'))
  hist_add('acode_ok', '-')
  redis.call('HSET', uk('user'), 'fails', 0)
  if tonumber(ARGV[10]) > 0 then redis.call('HSET', uk('user'), 'acode_grant', NOW + tonumber(ARGV[10])) end
  raise('access_code_used', 'info', {})
  return {'valid', NOTES}
end
hist_add('acode_fail', '-')
fail()
return {'invalid', NOTES}
""")

# The security team marks an account exempt or shared (or clears it). Setting either while the account is
# contained (locked, suspended, inside a push-bombing block, or with an open critical alert) is refused:
# an exemption must never silently lift containment. With `force` it is done, and raises a high alert.
# (A lock and a suspension win over the flags anyway: CREATE_CHALLENGE checks them first.)
# ARGV[7..]: exempt ('1' | '0' | ''), shared (the same), force ('1' | ''), by
# -> {"ok", NOTES, "<what was active, comma-joined>"} | {"refused", NOTES, "<what is active>"}
SET_POLICY = with_ledger("set_policy", """
local exempt, shared, force, by = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local active = {}
if exempt == '1' or shared == '1' then
  settle()
  local locked, suspended = gate_state()
  if locked then active[#active + 1] = 'locked' end
  if suspended then active[#active + 1] = 'suspended' end
  if window_block('prompt', CFG.bomb_win, CFG.bomb_max, 'bomb_reset') then
    active[#active + 1] = 'push_bombing'
  end
  for _, aid in ipairs(redis.call('ZREVRANGE', uk('alerts'), 0, 49)) do
    local a = redis.call('HMGET', uk('alert:' .. aid), 'status', 'sev')
    if a[1] == 'open' and a[2] == 'critical' then
      active[#active + 1] = 'open_critical_alert'
      break
    end
  end
  if #active > 0 then
    if force ~= '1' then return {'refused', NOTES, table.concat(active, ',')} end
    raise('policy_override', 'high', {by = by, exempt = exempt == '1' or nil, shared = shared == '1' or nil,
                                      active = active})
  end
end
redis.call('HSET', uk('user'), 'name', USER)
if exempt ~= '' then redis.call('HSET', uk('user'), 'policy_exempt', exempt) end
if shared ~= '' then redis.call('HSET', uk('user'), 'policy_shared', shared) end
return {'ok', NOTES, table.concat(active, ',')}
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

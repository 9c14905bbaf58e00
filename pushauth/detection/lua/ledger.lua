-- ledger.lua: the detection ledger. A library, not a script: included with
--   --@include pushauth.detection ledger.lua
-- by every script that evaluates detection rules or writes alerts (the challenge scripts, the device
-- scripts that add or revoke a phone, the account scripts), before their own code. Its top-level locals
-- become the including script's. Python side: `pushauth.detection.ledger` (LedgerCall, LedgerReply);
-- rules and thresholds: `pushauth.detection.rules`.
--
-- NEEDS (the calling convention of every including script)
--   KEYS[1]      user   the user hash: it routes the call to the user's slot; every other key is built
--                       from UP and shares its hash tag, so this works unchanged on Redis Cluster
--   ARGV[1]      UP     the user's key prefix "<p>:{<uid>}:"
--   ARGV[2]      NOW    integer Unix seconds
--   ARGV[3]      CFG    `rules.ledger_config` as JSON
--   ARGV[4]      AID    a fresh alert id, used if an event opens a new incident
--   ARGV[5]      USER   the canonical user name ('' = read it from the user hash)
--   ARGV[6]      CHAN   the pub/sub channel that wakes waiting login flows
--   ARGV[7..]           the including script's own arguments
-- DEFINES
--   values      UP, NOW, CFG (decoded), AID, USER, CHAN as above; SEV (severity ranks); NOTES (the
--               "<alert id>|<version>" pairs to announce: the including script returns them second,
--               {result, NOTES, detail...}, for `AlertStore.announce`); CONTAINED (actions taken)
--   functions   uk(suffix) -> a user key; hist_add, hist_count (the user's event history); ch_evidence
--               (a challenge as alert evidence); raise (an event into the open incident, or a new one);
--               contained; deny_open; suspend; not_me; lock; fail (a lockout failure); gate_state (lock and
--               suspension now, lifting expired ones); ignored; settle (expired prompts); on_denial;
--               window_block; bombing (push bombing); on_cancel (prompt_cycling)

local UP, NOW, CFG = ARGV[1], tonumber(ARGV[2]), cjson.decode(ARGV[3])
local AID, USER, CHAN = ARGV[4], ARGV[5], ARGV[6]
if USER == '' then USER = redis.call('HGET', KEYS[1], 'name') or '' end

local SEV = {info = 1, low = 2, medium = 3, high = 4, critical = 5}
local NOTES = {}
local CONTAINED = {}

local function uk(s) return UP .. s end

local function hist_add(kind, cid)
  local seq = redis.call('HINCRBY', uk('user'), 'seq', 1)
  redis.call('ZADD', uk('hist'), NOW, seq .. ':' .. kind .. ':' .. (cid or '-'))
  redis.call('ZREMRANGEBYSCORE', uk('hist'), '-inf', NOW - CFG.hist_keep_s - 1)
end

-- How many entries of the given kinds the user's history holds within `window` seconds (and, when `reset`
-- names a field of the user hash, after the entry that was last when the security team reset that count:
-- the field holds that entry's sequence number, so the same second before and after a reset is told
-- apart), and which
local function hist_count(window, kinds, reset)
  local n, found = 0, {}
  local after = 0
  if reset then after = tonumber(redis.call('HGET', uk('user'), reset) or '0') end
  local items = redis.call('ZRANGEBYSCORE', uk('hist'), NOW - window, '+inf', 'WITHSCORES')
  for i = 1, #items, 2 do
    local _, _, seq, kind, cid = string.find(items[i], '^(%d+):([%a_]+):(.*)$')
    if kind and kinds[kind] and tonumber(seq) > after then
      n = n + 1
      found[#found + 1] = {kind = kind, challenge_id = cid, at = tonumber(items[i + 1])}
    end
  end
  return n, found
end

local function ch_evidence(cid)
  local c = redis.call('HMGET', uk('ch:' .. cid), 'app', 'iat', 'ctx', 'st', 'rsn', 'dev', 'aip', 'dat')
  local e = {challenge_id = cid, app = c[1] or nil, created = tonumber(c[2]), status = c[4] or nil,
             reason = c[5] or nil, device_id = c[6] or nil, phone_ip = c[7] or nil, decided = tonumber(c[8])}
  if e.reason == '-' or e.reason == '' then e.reason = nil end
  if e.device_id == '-' or e.device_id == '' then e.device_id = nil end
  if e.phone_ip == '-' or e.phone_ip == '' then e.phone_ip = nil end
  if c[3] and c[3] ~= '' then e.login = cjson.decode(c[3]) end
  return e
end

-- Kinds that take the alert's headline even at the severity it already has: what was done about an
-- incident (the account is locked) is news to whoever reads only the headline.
local HEADLINE = {account_locked = true}

local function raise(kind, sev, ev)
  ev.kind = kind
  ev.severity = sev
  ev.at = NOW
  local aid = redis.call('GET', uk('incident'))
  local akey
  if aid then
    -- the window is judged on NOW, not on the key's TTL (which only collects the pointer)
    akey = uk('alert:' .. aid)
    local a = redis.call('HMGET', akey, 'status', 'updated')
    if a[1] ~= 'open' or NOW - tonumber(a[2] or '0') > CFG.incident_window_s then aid = nil end
  end
  if not aid then
    aid = AID
    akey = uk('alert:' .. aid)
    redis.call('HSET', akey, 'id', aid, 'kind', kind, 'sev', sev, 'user', USER, 'created', NOW,
               'status', 'open', 'ver', 1, 'n', 0, 'events', '[]', 'kinds', '{}', 'contained', '[]')
    if ev.challenge_id then redis.call('HSET', akey, 'cid', ev.challenge_id) end
    if ev.device_id then redis.call('HSET', akey, 'did', ev.device_id) end
    if ev.login then redis.call('HSET', akey, 'ctx', cjson.encode(ev.login)) end
    redis.call('ZADD', uk('alerts'), NOW, aid)
    redis.call('ZADD', uk('aout'), NOW, aid .. '|1')
    NOTES[#NOTES + 1] = aid .. '|1'
  else
    local cur = redis.call('HMGET', akey, 'sev', 'kind')
    local rank = SEV[cur[1]] or 0
    if SEV[sev] > rank or (SEV[sev] == rank and HEADLINE[kind] and cur[2] ~= kind) then
      local ver = redis.call('HINCRBY', akey, 'ver', 1)
      redis.call('HSET', akey, 'kind', kind, 'sev', sev)
      if ev.challenge_id then redis.call('HSET', akey, 'cid', ev.challenge_id) end
      if ev.device_id then redis.call('HSET', akey, 'did', ev.device_id) end
      redis.call('ZADD', uk('aout'), NOW, aid .. '|' .. ver)
      NOTES[#NOTES + 1] = aid .. '|' .. ver
    end
  end
  local events = cjson.decode(redis.call('HGET', akey, 'events'))
  events[#events + 1] = ev
  while #events > CFG.max_events do table.remove(events, 1) end
  local kinds = cjson.decode(redis.call('HGET', akey, 'kinds'))
  if type(kinds) ~= 'table' then kinds = {} end
  kinds[kind] = (kinds[kind] or 0) + 1
  redis.call('HSET', akey, 'events', cjson.encode(events), 'kinds', cjson.encode(kinds), 'updated', NOW)
  redis.call('HINCRBY', akey, 'n', 1)
  redis.call('SET', uk('incident'), aid, 'EX', CFG.incident_window_s)
  return aid
end

-- Record a containment action on the open incident (the alert says what was done about it).
local function contained(action)
  CONTAINED[#CONTAINED + 1] = action
  local aid = redis.call('GET', uk('incident'))
  if not aid then return end
  local akey = uk('alert:' .. aid)
  local list = cjson.decode(redis.call('HGET', akey, 'contained') or '[]')
  if type(list) ~= 'table' then list = {} end
  list[#list + 1] = {action = action, at = NOW}
  redis.call('HSET', akey, 'contained', cjson.encode(list))
end

-- Deny the user's pending challenges (and, when `since` is given, approvals decided since then, whose
-- assertions a login flow may not have collected yet), waking their waiting login flows.
local function deny_open(reason, since)
  for _, cid in ipairs(redis.call('ZRANGE', uk('pending'), 0, -1)) do
    local key = uk('ch:' .. cid)
    if redis.call('HGET', key, 'st') == 'pending' then
      redis.call('HSET', key, 'st', 'denied', 'dat', NOW, 'rsn', reason)
      redis.call('PUBLISH', CHAN, cid .. ' denied ' .. NOW .. ' - ' .. reason)
    end
  end
  redis.call('DEL', uk('pending'))
  if since then
    for _, cid in ipairs(redis.call('ZRANGEBYSCORE', uk('recent'), since - 600, '+inf')) do
      local key = uk('ch:' .. cid)
      local c = redis.call('HMGET', key, 'st', 'dat')
      if c[1] == 'approved' and tonumber(c[2]) >= since then
        -- the record keeps what the user did; the login flow gets no assertion from it any more
        redis.call('HSET', key, 'revoked', reason, 'revoked_at', NOW)
        redis.call('PUBLISH', CHAN, cid .. ' denied ' .. NOW .. ' - ' .. reason)
      end
    end
  end
end

local function suspend(why)
  local untl = 0
  if CFG.suspend_for_s > 0 then untl = NOW + CFG.suspend_for_s end
  redis.call('HSET', uk('user'), 'suspended', '1', 'susp_at', NOW, 'susp_why', why, 'susp_until', untl)
  contained('prompts_suspended')
  deny_open('suspended', NOW - CFG.assertion_life_s)
end

-- "I didn't request this": each containment as configured
local function not_me()
  if CFG.suspend then suspend('not_me') end
  if CFG.revoke_remembered then
    redis.call('DEL', uk('remembered'))
    contained('remembered_browsers_revoked')
  end
end

local function lock(why)
  local untl = 0
  if CFG.unlock_s > 0 then untl = NOW + CFG.unlock_s end
  redis.call('HSET', uk('user'), 'locked', '1', 'locked_at', NOW, 'locked_why', why, 'locked_until', untl)
  deny_open('locked', NOW - CFG.assertion_life_s)
end

-- A failed authentication attempt (a wrong number; a wrong access code while one exists): count it toward
-- the lockout. Denials and ignored prompts are not guesses at the authenticator and never come here.
local function fail()
  local n = redis.call('HINCRBY', uk('user'), 'fails', 1)
  if CFG.lock_n > 0 and n >= CFG.lock_n and redis.call('HGET', uk('user'), 'locked') ~= '1' then
    raise('account_locked', 'high', {failures = n})
    lock('failures')
    contained('account_locked')
  end
end

-- Lock and suspension as they stand now, lifting those whose time is up.
local function gate_state()
  local u = redis.call('HMGET', uk('user'), 'locked', 'locked_until', 'suspended', 'susp_until')
  local locked, suspended = u[1] == '1', u[3] == '1'
  if locked and tonumber(u[2] or '0') > 0 and NOW >= tonumber(u[2]) then
    redis.call('HSET', uk('user'), 'locked', '0', 'fails', 0, 'unlocked_at', NOW, 'unlocked_by', 'auto')
    locked = false
  end
  if suspended and tonumber(u[4] or '0') > 0 and NOW >= tonumber(u[4]) then
    redis.call('HSET', uk('user'), 'suspended', '0', 'lifted_at', NOW, 'lifted_by', 'auto')
    suspended = false
  end
  return locked, suspended
end

-- A prompt the user saw and did not answer (expired, or cancelled by the login flow after it reached a
-- phone): several in the window are ignored_prompts. Never a lockout failure.
local function ignored(cid)
  redis.call('HSET', uk('ch:' .. cid), 'ign', '1')
  hist_add('ignored', cid)
  local count, found = hist_count(CFG.ign_win, {ignored = true})
  if count >= CFG.ign_n then
    local ev = ch_evidence(cid)
    ev.ignored = found
    raise('ignored_prompts', 'medium', ev)
  end
end

-- Prompts that expired unanswered.
local function settle()
  local due = redis.call('ZRANGEBYSCORE', uk('pending'), '-inf', NOW)
  if #due == 0 then return 0 end
  local n = 0
  for _, cid in ipairs(due) do
    redis.call('ZREM', uk('pending'), cid)
    if redis.call('HGET', uk('ch:' .. cid), 'st') == 'pending' then
      ignored(cid)
      n = n + 1
    end
  end
  return n
end

-- A denial or a wrong number: the per-event rule, then repeated_denials, then the lockout count.
local function on_denial(cid, kind, sev, extra)
  hist_add(kind == 'wrong_number' and 'wrong' or 'deny', cid)
  local ev = ch_evidence(cid)
  for k, v in pairs(extra or {}) do ev[k] = v end
  raise(kind, sev, ev)
  local count, found = hist_count(CFG.rep_win, {deny = true, wrong = true})
  if count >= CFG.rep_n then
    local rep = ch_evidence(cid)  -- its own evidence table: the per-event alert keeps its own
    rep.denials = found
    raise('repeated_denials', 'high', rep)
  end
end

-- A per-user limit of `limit` entries of `kind` in `window` seconds (counted after the `reset` mark): when
-- it is reached, since when and until when it refuses, and the entries; else nil. The one rule for
-- refusing, for the user view's blocks (user_blocks.lua) and for what an unlock or exemption finds active.
local function window_block(kind, window, limit, reset)
  local n, found = hist_count(window, {[kind] = true}, reset)
  if n < limit then return nil end
  return found[limit].at, found[n - limit + 1].at + window, found
end

-- Push bombing: at the limit of prompts in the window, a further prompt is refused and the attempt is
-- evidence (`ev`). Returns the seconds until a prompt is allowed again, or nil when this one may go.
local function bombing(ev)
  local _, untl, found = window_block('prompt', CFG.bomb_win, CFG.bomb_max, 'bomb_reset')
  if not untl then return nil end
  ev.prompts = found
  ev.refused = true
  raise('push_bombing', 'high', ev)
  return math.max(1, untl - NOW)
end

-- The login flow withdrew a prompt. One that reached a phone (pushed, or fetched by it) was seen and not
-- answered: it counts as ignored. Prompts withdrawn again and again are prompt_cycling: number fishing
-- withdraws every prompt whose number is not the one it wants typed.
local function on_cancel(cid, reached)
  hist_add('cancel', cid)
  if reached then ignored(cid) end
  local count, found = hist_count(CFG.cyc_win, {cancel = true})
  if count >= CFG.cyc_n then
    local ev = ch_evidence(cid)
    ev.cancelled = found
    raise('prompt_cycling', 'high', ev)
  end
end

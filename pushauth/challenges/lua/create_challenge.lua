-- create_challenge.lua: a login flow asks for a prompt (POST /v1/challenges).
--
-- Expired prompts are settled first (ignored_prompts), then lock and suspension (they win over every
-- policy, exempt and shared accounts included), then the account's policy (exempt or shared: no prompt),
-- then the phone's own pause, then a remembered browser (no prompt), then push bombing (refused: 429),
-- then new_context; then the challenge is written, and queued for the push worker when KEYS[2] is given.
--
-- KEYS[1]      user           the user hash (routes the call to the user's slot)
-- KEYS[2]      push           optional: the push stream (`<prefix>:{push}:stream`), to which the new challenge
--                             is added in this same call (the entry PushQueue.enqueue writes). Given on a
--                             single Redis and on Sentinel, where every key is on the one node; never on
--                             Cluster, where the stream is in another slot than the user's and the caller
--                             sends its own XADD.
-- ARGV[1..6]                  the ledger's (LedgerCall)
-- ARGV[7]      exp            when the prompt expires (Unix seconds)
-- ARGV[8]      expire_at      when the challenge hash is deleted (exp + retention)
-- ARGV[9]      cid            the new challenge's id
-- ARGV[10]     network        the login's network ('' = unknown)
-- ARGV[11]     location       the login's location ('' = unknown)
-- ARGV[12]     context        the login context as JSON ('' = none)
-- ARGV[13]     app            the application's id
-- ARGV[14]     token_id       a valid remember token's id ('' = none)
-- ARGV[15]     browser_hash   that token's browser hash ('' = none)
-- ARGV[16]     account_kind   the account kind by the configured patterns ('' | 'shared' | 'exempt')
-- ARGV[17]     push_maxlen    the push stream's cap (XADD MAXLEN ~), as PushQueue.enqueue's
-- ARGV[18..]   fields         field/value pairs of the challenge hash
-- RETURNS
--   {"ok", NOTES, devices}             written; devices: the comma-joined ids of the phones it goes to
--   {"exempt", NOTES, kind}            no prompt: the account is 'shared' or 'exempt' (flag or pattern)
--   {"remembered", NOTES}              no prompt: the token's browser is remembered for this application
--   {"locked", NOTES}                  refused: the account is locked
--   {"suspended", NOTES}               refused: the account's prompts are suspended
--   {"paused", NOTES, until}           refused: a phone paused the prompts until `until` (Unix seconds)
--   {"not_enrolled", NOTES}            no active phone
--   {"rate_limited", NOTES, retry_after_s}   refused: push bombing

--@include pushauth.detection ledger.lua

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
redis.call('HSET', ckey, 'devs', joined, 'net', net, 'loc', loc, unpack(ARGV, 18))
redis.call('EXPIREAT', ckey, expire_at)
redis.call('ZADD', uk('pending'), exp, cid)
redis.call('ZADD', uk('recent'), NOW, cid)
redis.call('ZREMRANGEBYSCORE', uk('recent'), '-inf', NOW - 7 * 86400)
redis.call('ZREMRANGEBYRANK', uk('recent'), 0, -201)
hist_add('prompt', cid)
-- Created, with phones to go to (none: 'not_enrolled' above). The worker decides per phone what to do
-- (push, or record 'polling' for a phone without a usable token), exactly as for an entry sent apart.
if KEYS[2] then redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[17], '*', 'c', cid) end
return {'ok', NOTES, joined}

-- respond.lua: a phone answers a challenge (POST /v1/device/challenges/{id}/response), in one round trip:
-- the device gate, the answer's checks and the transition.
--
-- The gate first, as device_gate.lua does it for every device request (record the jti: a replay is refused
-- as such; the phone must be active), then the challenge must exist and target this phone, the nonce must
-- match, and the number decides approve or wrong_number (nonce and number compared byte by byte to the
-- end, `same`, so the time a comparison takes says nothing about the secret). Everything that could make the answer
-- invalid is checked here, at the moment of the transition, so nothing can change between the check and
-- the write: the device revoked meanwhile, the challenge decided by a concurrent answer, expired, or the
-- account locked or suspended. The rules run in the same step: an alert and the decision it is about are
-- written together.
-- An answer to a prompt nobody waits for any more (it expired, or the login flow cancelled it) decides
-- nothing, but a "not me" is still the user saying someone else is signing in: it is recorded, alerted and
-- contained exactly as on a pending prompt (once per challenge).
-- A challenge with purpose 'add_device' asks an existing phone to approve a new one (`device_added` in
-- device_lib.lua): its approval activates the new phone, its denial refuses it.
--
-- KEYS[1]      user        the user hash (routes the call to the user's slot)
-- KEYS[2]      jti         the request's replay cache entry (`KeySpace.jti`, the user's slot)
-- ARGV[1..6]               the ledger's (LedgerCall; USER '' : read from the user hash)
-- ARGV[7]      cid         the challenge's id
-- ARGV[8]      did         the answering phone's id
-- ARGV[9]      decision    'approve' | 'deny'
-- ARGV[10]     reason      the deny reason the phone gave ('' = none: 'mistake' for a deny)
-- ARGV[11]     nonce       the nonce the phone echoes
-- ARGV[12]     number      the number the phone sends ('' = none)
-- ARGV[13]     has_number  '1' when the phone sent a number at all
-- ARGV[14]     answer_ip   the phone's address ('-' = unknown)
-- ARGV[15]     jti_ttl     seconds the jti is remembered
-- RETURNS
--   {"ok", NOTES, notify, status, reason, app, iat}
--                                            decided; notify: the comma-joined phones to push a
--                                            `device_added` notice to ('' unless a new phone was approved);
--                                            status 'approved' | 'denied', reason '-' | 'not_me' | 'mistake'
--                                            | 'wrong_number'; the challenge's app and iat (for metrics)
--   {"replay", NOTES}                        the jti was seen before
--   {"pending", NOTES}                       the phone waits for approval itself
--   {"revoked", NOTES}                       the answering phone is no longer active
--   {"not_found", NOTES}                     no such challenge, or not sent to this phone
--   {"bad_nonce", NOTES}                     the nonce does not match
--   {"reason_not_for_approve", NOTES}        an approval that gives a reason
--   {"number_required", NOTES}               the challenge uses number matching and no number was sent
--   {"locked", NOTES} | {"suspended", NOTES} an approval the account cannot take
--   {"expired", NOTES, "", "recorded"?}      too late; "recorded": a "not me" was taken all the same
--   {"conflict", NOTES, status, "recorded"?} already decided (status), or cancelled ("cancelled": the
--                                            login flow withdrew it, or the new phone withdrew)

--@include pushauth.detection ledger.lua
--@include pushauth.devices device_lib.lua

local cid, did, decision, given, aip = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[14]
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[15]) then return {'replay', NOTES} end
local dst = redis.call('HGET', uk('dev:' .. did), 'st')
if dst ~= 'active' then return {dst == 'pending' and 'pending' or 'revoked', NOTES} end
-- Compares every byte whatever an earlier one gave, so the time taken says nothing of how much of a secret
-- (the nonce, the number) was right; lengths are public. (redis.sha1hex on both sides would do as well on
-- a real Redis, but the embedded store's Lua has no sha1hex.)
local function same(a, b)
  if #a ~= #b then return false end
  local diff = 0
  for i = 1, #a do
    if string.byte(a, i) ~= string.byte(b, i) then diff = diff + 1 end
  end
  return diff == 0
end

local ckey = uk('ch:' .. cid)
local c = redis.call('HMGET', ckey, 'st', 'exp', 'devs', 'net', 'loc', 'late', 'purp', 'newdev', 'nonce', 'num',
                     'app', 'iat')
if not c[1] then return {'not_found', NOTES} end
if not string.find(',' .. c[3] .. ',', ',' .. did .. ',', 1, true) then return {'not_found', NOTES} end
if not same(ARGV[11], c[9] or '') then return {'bad_nonce', NOTES} end
local status, reason = 'denied', given ~= '' and given or 'mistake'
if decision == 'approve' then
  if given ~= '' then return {'reason_not_for_approve', NOTES} end
  status, reason = 'approved', '-'
  if c[10] and c[10] ~= '' then
    if ARGV[13] ~= '1' then return {'number_required', NOTES} end
    if not same(ARGV[12], c[10]) then status, reason = 'denied', 'wrong_number' end
  end
end
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
    return {'ok', NOTES, notify, status, reason, c[11] or '', c[12] or '0'}
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
return {'ok', NOTES, notify, status, reason, c[11] or '', c[12] or '0'}

-- register_device.lua: register a new device for a user (POST /v1/device/register).
--
-- Active at once when it is the user's first phone, or when the security team vouched for it (an
-- admin-issued enrollment, or one made after the user proved themselves with a temporary access code);
-- `device_added` (device_lib.lua) alerts and tells the other phones. Otherwise (an application asked for a
-- further phone: a phished password is enough for that) it is 'pending': an 'add_device' challenge goes to
-- the user's active phones, with a number the new phone shows, and respond.lua activates or refuses it. The
-- pending phone and its record expire with that challenge. A locked or suspended account gets no new
-- phone, and the approval prompt counts toward push bombing like any prompt.
--
-- KEYS[1]      user          the user hash (routes the call to the user's slot)
-- ARGV[1..6]                 the ledger's (LedgerCall)
-- ARGV[7]      did           the new device's id
-- ARGV[8]      vouch         who vouched for it: 'admin' | 'access_code' | '' (nobody: approval needed)
-- ARGV[9]      acid          the approval challenge's id (used only if approval is needed)
-- ARGV[10]     aexp          when the approval prompt expires (Unix seconds)
-- ARGV[11]     aexpire_at    when it and the pending device are deleted (aexp + retention)
-- ARGV[12]     number        the number the new phone shows
-- ARGV[13]     nonce         the approval challenge's nonce
-- ARGV[14]     app           the application that asked for the enrollment ('' = the security team)
-- ARGV[15]     context       the login context JSON (the new phone's address; '' = none)
-- ARGV[16]     phone_context the context the approving phones are shown, JSON ('' = none)
-- ARGV[17..]   fields        field/value pairs of the device hash
-- RETURNS
--   {"active", NOTES, notify}             active; notify: the comma-joined phones to push a notice to
--   {"pending", NOTES, asked}             waits for approval; asked: the comma-joined phones prompted
--   {"locked", NOTES} | {"suspended", NOTES}   refused: the account takes no new phone
--   {"rate_limited", NOTES, retry_after_s}     refused: the approval prompt would be push bombing

--@include pushauth.detection ledger.lua
--@include pushauth.devices device_lib.lua

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

-- cancel.lua: the login flow gives up on a pending challenge (DELETE /v1/challenges/{id}).
--
-- A prompt that had reached a phone (`seen`: fetched by one; `pd:<device>` = sent: a provider accepted its
-- push) counts as ignored, and every cancellation counts toward prompt_cycling (`on_cancel` in the
-- ledger). A prompt asking to add a phone is no login flow's to cancel.
--
-- KEYS[1]      user   the user hash (routes the call to the user's slot)
-- ARGV[1..6]          the ledger's (LedgerCall)
-- ARGV[7]      cid    the challenge's id
-- ARGV[8]      app    the cancelling application's id
-- RETURNS
--   {"ok", NOTES}                cancelled
--   {"not_found", NOTES}         no such challenge, another application's, or an add_device prompt
--   {"expired", NOTES}           still pending but past its expiry
--   {"conflict", NOTES, status}  already decided: its status

--@include pushauth.detection ledger.lua

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

-- The security team unlocks a user: the lockout (and its failure count), the suspension, or both; and
-- either way the counts that would refuse the user at once afterwards (the push-bombing window, the
-- wrong-access-code and the wrong-one-time-code windows start again from now: `hist_count`'s reset
-- marks). Says which blocks it ended, for the audit trail.
--
-- KEYS[1]  the user hash "<prefix>:{<uid>}:user" (routes the call to the user's slot; the ledger builds
--          every other key from UP, with the same hash tag)
-- ARGV[1..6]  the ledger's (pushauth.detection.ledger.LedgerCall)
-- ARGV[7]  by: who unlocked
-- ARGV[8]  what: 'all' | 'lock' | 'suspension'
-- ARGV[9]  code_window_s: the wrong-access-code window (seconds)
-- ARGV[10] code_attempts: wrong access codes allowed in that window
-- Returns  {"ok", NOTES, was_locked, was_suspended, push_bombing_block_ended, access_code_block_ended}
--          (each 0 or 1)

--@include pushauth.detection ledger.lua

local by, what = ARGV[7], ARGV[8]
local u = redis.call('HMGET', uk('user'), 'locked', 'suspended')
local was_locked, was_suspended = 0, 0
local bombing_block = window_block('prompt', CFG.bomb_win, CFG.bomb_max, 'bomb_reset') and 1 or 0
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
redis.call('HSET', uk('user'), 'bomb_reset', last, 'acode_reset', last, 'otp_reset', last)
return {'ok', NOTES, was_locked, was_suspended, bombing_block, codes and 1 or 0}

-- What refuses the user for a while without anyone's decision: the push-bombing window, the
-- wrong-access-code window while a code exists, and the wrong-one-time-code window while the user has a
-- code method (for the user view; nothing is changed).
--
-- KEYS[1]  the user hash "<prefix>:{<uid>}:user" (routes the call to the user's slot; the ledger builds
--          every other key from UP, with the same hash tag)
-- ARGV[1..6]  the ledger's (pushauth.detection.ledger.LedgerCall)
-- ARGV[7]  code_window_s: the wrong-access-code window (seconds)
-- ARGV[8]  code_attempts: wrong access codes allowed in that window
-- ARGV[9]  otp_window_s: the wrong-one-time-code window (seconds; pushauth/codes/lua/use_code.lua)
-- ARGV[10] otp_attempts: wrong one-time codes allowed in that window
-- Returns  {"ok", NOTES, bombing_since, bombing_until, codes_since, codes_until, otp_since, otp_until}
--          (Unix seconds; 0 and 0: not blocked)

--@include pushauth.detection ledger.lua

local bs, bu = window_block('prompt', CFG.bomb_win, CFG.bomb_max, 'bomb_reset')
local cs, cu
if redis.call('EXISTS', uk('acode')) == 1 then
  cs, cu = window_block('acode_fail', tonumber(ARGV[7]), tonumber(ARGV[8]), 'acode_reset')
end
local os_, ou
if redis.call('SCARD', uk('otps')) > 0 then
  os_, ou = window_block('otp_fail', tonumber(ARGV[9]), tonumber(ARGV[10]), 'otp_reset')
end
return {'ok', NOTES, bs or 0, bu or 0, cs or 0, cu or 0, os_ or 0, ou or 0}

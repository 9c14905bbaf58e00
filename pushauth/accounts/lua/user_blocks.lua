-- What refuses the user for a while without anyone's decision: the push-bombing window, and the
-- wrong-access-code window while a code exists (for the user view; nothing is changed).
-- ARGV[7..]: access-code window_s, access-code attempts
-- -> {"ok", NOTES, bombing since, bombing until, codes since, codes until} (0: not blocked)

--@include pushauth.detection ledger.lua

local bs, bu = window_block('prompt', CFG.bomb_win, CFG.bomb_max, 'bomb_reset')
local cs, cu
if redis.call('EXISTS', uk('acode')) == 1 then
  cs, cu = window_block('acode_fail', tonumber(ARGV[7]), tonumber(ARGV[8]), 'acode_reset')
end
return {'ok', NOTES, bs or 0, bu or 0, cs or 0, cu or 0}

-- The login flow checks an access code. Single use. While a code exists, wrong codes are guesses at it:
-- rate limited per user and counted toward the lockout. Without one there is nothing to guess and nothing is
-- counted (anyone with an application key could otherwise lock any user out, or block the code the service
-- desk is about to issue). A valid code opens a window in which the user may add a phone at once
-- (`acode_grant`, spent by enroll_mode.lua): proving themselves to the service desk stands in for approving
-- it on a phone they no longer have. Comparing SHA-256 digests in Lua is not a timing oracle for the code:
-- an attacker learns at most a prefix of the digest of their own guess.
--
-- KEYS[1]  the user hash "<prefix>:{<uid>}:user" (routes the call to the user's slot; the ledger builds
--          every other key from UP, with the same hash tag)
-- ARGV[1..6]  the ledger's (pushauth.detection.ledger.LedgerCall)
-- ARGV[7]  code_hash: sha256 hex of the code presented, normalised as issue_access_code.lua's
-- ARGV[8]  attempts: wrong access codes allowed in the window
-- ARGV[9]  window_s: the wrong-access-code window (seconds)
-- ARGV[10] grant_s: how long a valid code lets the user add a phone at once (0: not at all)
-- Returns  {"valid", NOTES} | {"invalid", NOTES} | {"locked", NOTES} | {"suspended", NOTES}
--          | {"rate_limited", NOTES, retry_after_s}

--@include pushauth.detection ledger.lua

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

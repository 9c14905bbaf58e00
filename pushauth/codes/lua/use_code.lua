-- The login flow (or the RADIUS front, or the OpenID sign-in page) checks a one-time code. The Python side
-- (pushauth/codes/service.py) has already computed, constant-time, which time step of which of the user's
-- methods the code matches, if any; this script decides, atomically with the replay cache: a step is
-- accepted only if it starts later than the last step accepted for the user (`otp_step`), so each code
-- works once per user, whichever of their methods made it. A wrong or replayed code is a guess: it joins the
-- user's history (`otp_fail`), counts toward the lockout (`fail`), and the guess that reaches the limit
-- raises `otp_guessing`; at the limit the answer is rate_limited until the window has moved on.
--
-- KEYS[1]  the user hash "<prefix>:{<uid>}:user" (routes the call to the user's slot; the ledger builds
--          every other key from UP, with the same hash tag)
-- ARGV[1..6]  the ledger's (pushauth.detection.ledger.LedgerCall)
-- ARGV[7]  method_id: the method whose code matched ('' when none did)
-- ARGV[8]  step_at: Unix time the matched step starts (step x period; -1 when none matched)
-- ARGV[9]  attempts: wrong codes allowed in the window
-- ARGV[10] window_s: the wrong-code window (seconds)
-- ARGV[11] via: where the code was typed (login_flow, radius, oidc), for the alert's evidence
-- ARGV[12] counter: for an HOTP (counter-based) token, the counter whose code matched (-1: none, or TOTP).
--          Accepted only if it is at least the method's next expected counter (`ctr`), which then moves
--          past it: each counter once, and never an older one.
-- Returns  {"valid", NOTES} | {"invalid", NOTES} | {"replayed", NOTES} | {"locked", NOTES}
--          | {"suspended", NOTES} | {"rate_limited", NOTES, retry_after_s}

--@include pushauth.detection ledger.lua

local mid, step_at = ARGV[7], tonumber(ARGV[8])
local attempts, win, via = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11]
local counter = tonumber(ARGV[12] or '-1')

settle()
local locked, suspended = gate_state()
local _, blocked_until = window_block('otp_fail', win, attempts, 'otp_reset')
if blocked_until then return {'rate_limited', NOTES, math.max(1, blocked_until - NOW)} end
if locked then return {'locked', NOTES} end
if suspended then return {'suspended', NOTES} end

local result = 'invalid'
-- the method may have been revoked since the caller read it, and a pushauth phone's own seed works only while
-- the phone is active (revoking the phone ends its codes): either way its code is then a wrong one
local method = redis.call('HMGET', uk('otp:' .. mid), 'st', 'did')
local usable = method[1] == 'active'
if usable and method[2] then usable = redis.call('HGET', uk('dev:' .. method[2]), 'st') == 'active' end
if counter >= 0 and mid ~= '' and usable then
  if counter >= tonumber(redis.call('HGET', uk('otp:' .. mid), 'ctr') or '0') then
    redis.call('HSET', uk('otp:' .. mid), 'ctr', counter + 1, 'used', NOW)
    redis.call('HSET', uk('user'), 'fails', 0)
    hist_add('otp_ok', '-')
    return {'valid', NOTES}
  end
  result = 'replayed'
elseif step_at >= 0 and mid ~= '' and usable then
  if step_at > tonumber(redis.call('HGET', uk('user'), 'otp_step') or '-1') then
    redis.call('HSET', uk('user'), 'otp_step', step_at, 'fails', 0)
    redis.call('HSET', uk('otp:' .. mid), 'used', NOW)
    hist_add('otp_ok', '-')
    return {'valid', NOTES}
  end
  result = 'replayed'
end
hist_add('otp_fail', '-')
local n = hist_count(win, {otp_fail = true}, 'otp_reset')
if n == attempts then
  raise('otp_guessing', 'high', {wrong_codes = n, window_s = win, via = via})
end
fail()
return {result, NOTES}

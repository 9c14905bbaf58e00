-- The security team activates a pending one-time-code method with a code the user read off it: proof that
-- the authenticator app (or the token) really holds the seed. The matched step is spent in the user's replay
-- cache, so the code used to activate cannot then sign anyone in. Wrong codes are counted on the method;
-- at the limit the pending method is thrown away (a new enrollment starts again). An expired pending
-- method is thrown away too.
--
-- KEYS[1]  the user hash "<prefix>:{<uid>}:user" (routes the call to the user's slot; the ledger builds
--          every other key from UP, with the same hash tag)
-- ARGV[1..6]  the ledger's (pushauth.detection.ledger.LedgerCall)
-- ARGV[7]  method_id
-- ARGV[8]  step_at: Unix time the matched step starts (-1 when the code did not match)
-- ARGV[9]  max_tries: wrong codes allowed before the pending method is discarded
-- ARGV[10] by: who activated it (for the alert's evidence)
-- ARGV[11] counter: an HOTP token's counter whose code matched (-1: none, or TOTP); the method's next
--          expected counter (`ctr`) moves past it, so the activation code cannot sign anyone in either
-- Returns  {"active", NOTES} | {"invalid", NOTES, tries_left} | {"discarded", NOTES} | {"expired", NOTES}
--          | {"not_pending", NOTES}

--@include pushauth.detection ledger.lua

local mid, step_at, max_tries, by = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
local counter = tonumber(ARGV[11] or '-1')
local key = uk('otp:' .. mid)
local m = redis.call('HMGET', key, 'st', 'exp', 'tries', 'kind', 'serial')
if m[1] ~= 'pending' then return {'not_pending', NOTES} end
if tonumber(m[2] or '0') > 0 and NOW >= tonumber(m[2]) then
  redis.call('DEL', key)
  redis.call('SREM', uk('otps'), mid)
  return {'expired', NOTES}
end
if counter >= 0 and counter < tonumber(redis.call('HGET', key, 'ctr') or '0') then counter = -1 end
if step_at < 0 and counter < 0 then
  local tries = redis.call('HINCRBY', key, 'tries', 1)
  if tries >= max_tries then
    redis.call('DEL', key)
    redis.call('SREM', uk('otps'), mid)
    return {'discarded', NOTES}
  end
  return {'invalid', NOTES, max_tries - tries}
end
redis.call('HSET', key, 'st', 'active', 'act', NOW, 'exp', 0, 'tries', 0)
redis.call('PERSIST', key)
if counter >= 0 then redis.call('HSET', key, 'ctr', counter + 1) end
if step_at > tonumber(redis.call('HGET', uk('user'), 'otp_step') or '-1') then
  redis.call('HSET', uk('user'), 'otp_step', step_at)
end
redis.call('HSET', uk('user'), 'name', USER)
raise('otp_enrolled', 'info', {method_id = mid, method = m[4], serial = m[5] or nil, by = by})
return {'active', NOTES}

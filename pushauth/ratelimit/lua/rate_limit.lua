-- A rate-limit check (pushauth/ratelimit/limiter.py): the one round trip a limited request costs.
--
-- KEYS[1]  the bucket, a hash: t = theoretical arrival time of its next request (GCRA), fn = auth failures
--          counted in the window that closes at fe (client addresses only)
-- ARGV[1]  now: Unix seconds
-- ARGV[2]  quota: requests per window (0: not metered)
-- ARGV[3]  window_s: the window (seconds)
-- ARGV[4]  auth_failures: failures allowed in their window (0: not checked)
-- Returns  {"ok"} | {"requests", retry_after_s} | {"auth_failures", retry_after_s}

local now, quota, win, fmax = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[1], 't', 'fn', 'fe')
local fe = tonumber(b[3] or '0')
if fmax > 0 and tonumber(b[2] or '0') >= fmax and fe > now then return {'auth_failures', fe - now} end
if quota == 0 then return {'ok'} end
-- a burst of the whole quota conforms; beyond it, one request per win/quota seconds
local tat = math.max(tonumber(b[1] or '0'), now) + win / quota
if tat - now > win then return {'requests', math.ceil(tat - now - win)} end
-- %.17g: the exact double; Lua's own tostring keeps 14 digits, too few for the fraction
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tat))
redis.call('EXPIRE', KEYS[1], math.max(math.ceil(tat - now), fe - now))
return {'ok'}

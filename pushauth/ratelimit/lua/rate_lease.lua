-- A lease of up to `want` requests from a bucket (pushauth/ratelimit/limiter.py, the batched path): a
-- process takes them in one round trip and spends them locally. They are metered exactly as that many
-- rate_limit.lua checks at `now` would be (GCRA), and a bucket with room for fewer grants what it has.
--
-- KEYS[1]  the bucket, a hash (see rate_limit.lua): t = theoretical arrival time of its next request,
--          fn = auth failures counted in the window that closes at fe (client addresses only)
-- ARGV[1]  now: Unix seconds
-- ARGV[2]  quota: requests per window (0: not metered: the whole `want` is granted)
-- ARGV[3]  window_s: the window (seconds)
-- ARGV[4]  auth_failures: failures allowed in their window (0: not checked)
-- ARGV[5]  want: requests asked for (>= 1)
-- Returns  {"ok", granted} (1 <= granted <= want) | {"requests", retry_after_s} | {"auth_failures", retry_after_s}

local now, quota, win, fmax = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local want = tonumber(ARGV[5])
local b = redis.call('HMGET', KEYS[1], 't', 'fn', 'fe')
local fe = tonumber(b[3] or '0')
if fmax > 0 and tonumber(b[2] or '0') >= fmax and fe > now then return {'auth_failures', fe - now} end
if quota == 0 then return {'ok', want} end
local step = win / quota
local tat = math.max(tonumber(b[1] or '0'), now)
-- n requests conform while tat + n * step - now <= win (rate_limit.lua with n = 1); the epsilon keeps an
-- exact fit (a quota that divides the window unevenly) from rounding one request away
local room = math.floor((now + win - tat) / step + 1e-9)
if room < 1 then return {'requests', math.ceil(tat + step - now - win)} end
local granted = math.min(want, room)
tat = tat + granted * step
-- %.17g: the exact double; Lua's own tostring keeps 14 digits, too few for the fraction
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tat))
redis.call('EXPIRE', KEYS[1], math.max(math.ceil(tat - now), fe - now))
return {'ok', granted}

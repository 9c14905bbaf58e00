-- An authentication failure from a client address (its rate_limit.lua bucket). The first one opens a
-- window; rate_limit.lua refuses the address once the count reaches its limit, until the window closes.
--
-- KEYS[1]  the bucket, a hash (see rate_limit.lua): fn = failures counted, fe = when their window closes
-- ARGV[1]  now: Unix seconds
-- ARGV[2]  window_s: how long a window opened now lasts
-- Returns  the failures counted in the open window (this one included)

local now, win = tonumber(ARGV[1]), tonumber(ARGV[2])
local fe = tonumber(redis.call('HGET', KEYS[1], 'fe') or '0')
local n = 1
if fe <= now then
  fe = now + win
  redis.call('HSET', KEYS[1], 'fn', 1, 'fe', fe)
else
  n = redis.call('HINCRBY', KEYS[1], 'fn', 1)
end
if redis.call('TTL', KEYS[1]) < fe - now then redis.call('EXPIRE', KEYS[1], fe - now) end
return n

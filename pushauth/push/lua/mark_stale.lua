-- Mark a device's push token stale, unless the phone has registered a new token since we sent.
--
-- KEYS[1]  the device hash
-- ARGV[1]  token: the token the provider refused
-- ARGV[2]  now: Unix seconds
-- Returns  1 (marked) | 0 (the device has another token now)

if redis.call('HGET', KEYS[1], 'ptok') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'ptok_stale', '1', 'ptok_stale_at', ARGV[2])
return 1

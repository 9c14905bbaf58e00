-- Mark a device's push token stale, unless the phone has registered a new token since we sent.
-- KEYS: device   ARGV: the token the provider refused, now

if redis.call('HGET', KEYS[1], 'ptok') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'ptok_stale', '1', 'ptok_stale_at', ARGV[2])
return 1

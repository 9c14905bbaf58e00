-- A device replaces its push token (the app reinstalled, the OS rotated the token).
-- KEYS: device   ARGV: provider, token, now

if redis.call('HGET', KEYS[1], 'st') ~= 'active' then return {'not_found'} end
redis.call('HSET', KEYS[1], 'pprov', ARGV[1], 'ptok', ARGV[2], 'ptok_at', ARGV[3])
redis.call('HDEL', KEYS[1], 'ptok_stale')
return {'ok'}

-- update_push_token.lua: a device replaces its push token (the app reinstalled, the OS rotated the token).
--
-- KEYS[1]   device     the device's hash
-- ARGV[1]   provider   the push provider ('apns' | 'fcm' | 'none')
-- ARGV[2]   token      the new push token
-- ARGV[3]   now        Unix seconds
-- RETURNS
--   {"ok"}          replaced (a stale mark is cleared)
--   {"not_found"}   the device is not active

if redis.call('HGET', KEYS[1], 'st') ~= 'active' then return {'not_found'} end
redis.call('HSET', KEYS[1], 'pprov', ARGV[1], 'ptok', ARGV[2], 'ptok_at', ARGV[3])
redis.call('HDEL', KEYS[1], 'ptok_stale')
return {'ok'}

-- revoke_device.lua: revoke a device (the security team; a phone unenrolling itself).
--
-- It leaves the active set at once, so it gets no new challenges, and every later request it signs is
-- refused by device_gate.lua / respond.lua. A phone still waiting for approval can be revoked too: its
-- approval prompt is withdrawn.
--
-- KEYS[1]   devs      the user's set of active devices
-- KEYS[2]   device    the device's hash
-- KEYS[3]   pending   the user's pending challenges (zset)
-- KEYS[4]   ndevs     the user's set of devices waiting for approval
-- ARGV[1]   did       the device's id
-- ARGV[2]   now       Unix seconds
-- ARGV[3]   by        who revokes it ('device', or 'admin:<token hash prefix>')
-- ARGV[4]   prefix    the user's challenge key prefix "<p>:{<uid>}:ch:"
-- RETURNS
--   {"ok"}          revoked
--   {"not_found"}   not an active or pending device

local d = redis.call('HMGET', KEYS[2], 'st', 'appr')
if d[1] ~= 'active' and d[1] ~= 'pending' then return {'not_found'} end
redis.call('HSET', KEYS[2], 'st', 'revoked', 'revoked_at', ARGV[2], 'revoked_by', ARGV[3])
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
if d[1] == 'pending' and d[2] then
  local ckey = ARGV[4] .. d[2]
  if redis.call('HGET', ckey, 'st') == 'pending' then
    redis.call('HSET', ckey, 'st', 'cancelled', 'dat', ARGV[2])
    redis.call('ZREM', KEYS[3], d[2])
  end
end
return {'ok'}

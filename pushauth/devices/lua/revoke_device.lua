-- Revoke a device (the security team; a phone unenrolling itself): it leaves the active set at once, so it
-- gets no new challenges, and every later request it signs is refused by DEVICE_GATE / RESPOND. A phone
-- still waiting for approval can be revoked too: its approval prompt is withdrawn.
-- KEYS: devs, device, pending, pending devices   ARGV: did, now, by, challenge key prefix
-- -> {"ok"} | {"not_found"}

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

-- device_gate.lua: the gate every authenticated device request passes.
--
-- Record the request's jti (replay cache) and check the device is still active, then read what the request
-- is for. A phone waiting for approval (st 'pending', added by an application for a user who already has a
-- phone) may only make the 'self' and 'activation' requests.
--
-- KEYS[1]   jti      the replay cache entry for this request's jti (SET NX with a TTL)
-- KEYS[2]   device   the requesting device's hash
-- KEYS[3]   target   what the request reads: a challenge hash, the user's pending zset, or the device hash
-- ARGV[1]   jti_ttl  seconds the jti is remembered
-- ARGV[2]   mode     what the request is:
--             'challenge'  read the target
--             'fetch'      read a challenge, marking it `seen` when it targets this phone (the prompt
--                          reached a phone: a cancellation then counts as an ignored prompt)
--             'pending'    the ids of the pending challenges, each marked `seen` the same way
--             'self'       read the target; a pending phone may too (unenrolling itself, a new push token)
--             'activation' the same, and a phone whose approval was refused may read why
-- ARGV[3]   now      Unix seconds
-- ARGV[4]   did      the requesting device's id
-- ARGV[5]   prefix   the user's challenge key prefix "<p>:{<uid>}:ch:" (for 'pending')
-- RETURNS
--   {"ok", data}   data: the target's HGETALL (flat field/value list), or for 'pending' the pending ids
--   {"replay"}     the jti was seen before
--   {"revoked"}    the device is not active (nor allowed in this mode)
--   {"pending"}    the device waits for approval and this mode is not for it

if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return {'replay'} end
local mode, now, did = ARGV[2], ARGV[3], ARGV[4]
local st = redis.call('HGET', KEYS[2], 'st')
local own = mode == 'self' or mode == 'activation'
if st ~= 'active' and not (own and st == 'pending') and not (mode == 'activation' and st == 'refused') then
  if st == 'pending' then return {'pending'} end
  return {'revoked'}
end
local function mark_seen(key)
  local c = redis.call('HMGET', key, 'devs', 'seen')
  if c[1] and not c[2] and string.find(',' .. c[1] .. ',', ',' .. did .. ',', 1, true) then
    redis.call('HSET', key, 'seen', now)
  end
end
if mode == 'pending' then
  local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. now, '+inf')
  for _, cid in ipairs(ids) do mark_seen(ARGV[5] .. cid) end
  return {'ok', ids}
end
local h = redis.call('HGETALL', KEYS[3])
if mode == 'fetch' and #h > 0 then mark_seen(KEYS[3]) end
return {'ok', h}

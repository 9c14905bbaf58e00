-- The gate every authenticated device request passes: record the request's jti (replay cache) and check the
-- device is still active, then read what the request is for. A phone waiting for approval (st 'pending',
-- added by an application for a user who already has a phone) may only make the 'self' requests.
-- KEYS: jti, device, target (a challenge hash, the pending zset, or the device hash)
-- ARGV: jti_ttl, mode, now, device id, challenge key prefix ("<p>:{<uid>}:ch:", for 'pending')
--   'challenge'  read the target
--   'fetch'      read a challenge, marking it `seen` when it targets this phone (the prompt reached a
--                phone: a cancellation then counts as an ignored prompt)
--   'pending'    the ids of the pending challenges, each marked `seen` the same way
--   'self'       read the target; a pending phone may too (unenrolling itself, a new push token)
--   'activation' the same, and a phone whose approval was refused may read why
-- -> {"ok", <HGETALL of target> | <pending ids>} | {"replay"} | {"revoked"} | {"pending"}

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

-- Record a device's delivery state on its challenge, but never create a stray hash for a challenge that
-- has already expired out of Redis, and never take back a "sent" (a late or repeated write of an older
-- state, e.g. a pipeline re-sent after a lost connection).
--
-- KEYS[1]  the challenge hash
-- ARGV[1]  field: `pd:<device id>`
-- ARGV[2]  value: "<state>" or "<state>:<reason>"
-- Returns  1 (written) | 0 (the challenge is gone, or the device's push was sent already)

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and old ~= ARGV[2] and string.sub(old, 1, 4) == 'sent' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1

-- claim_due.lua: the expiry sweeper claims the prompts due for settling (read and removed together, so
-- several sweepers never claim the same one).
--
-- KEYS[1]   due   the expiry index "{expiry}:due" (zset: challenge id -> exp)
-- ARGV[1]   now   Unix seconds: entries scored up to this are due
-- ARGV[2]   max   at most this many are claimed
-- RETURNS
--   the claimed challenge ids (a list, possibly empty)

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due

-- Claim the notifications whose lease has run out (their server stopped or died while following them):
-- each is given a new lease in the same step, so two servers sweeping at once never both adopt one.
--
-- KEYS[1]  the due set: notification ids by when their holder's lease ends
-- ARGV[1]  now: Unix seconds; leases that ended by then are taken
-- ARGV[2]  lease_until: the new lease's end
-- ARGV[3]  max_entries: at most this many per call
-- Returns  the ids claimed

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
end
return due

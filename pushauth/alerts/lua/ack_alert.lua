-- Acknowledge an alert. Its incident closes: later events open a new alert.
-- KEYS: alert, incident   ARGV: now, by, aid  -> {"ok"} | {"not_found"} | {"already"}

local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'not_found'} end
if st == 'acked' then return {'already'} end
redis.call('HSET', KEYS[1], 'status', 'acked', 'acked_at', ARGV[1], 'acked_by', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return {'ok'}

-- Acknowledge an alert. Its incident closes: later events open a new alert.
--
-- KEYS[1]  the alert hash "<prefix>:{<uid>}:alert:<aid>"
-- KEYS[2]  the user's open incident (a string holding the alert id it belongs to)
-- ARGV[1]  now: Unix seconds
-- ARGV[2]  by: who acknowledged it
-- ARGV[3]  aid: the alert's id (the incident is closed only if it is still this alert's)
-- Returns  {"ok"} | {"not_found"} | {"already"}

local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'not_found'} end
if st == 'acked' then return {'already'} end
redis.call('HSET', KEYS[1], 'status', 'acked', 'acked_at', ARGV[1], 'acked_by', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return {'ok'}

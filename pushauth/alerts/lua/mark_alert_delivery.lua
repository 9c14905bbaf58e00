-- Settle a version for a sink (and drop its retry mark), unless the alert is gone (never create a stray
-- hash); or, with an empty third argument, record a scheduled retry.
-- KEYS: alert   ARGV: field, value, field to delete ("" for none)

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[1], ARGV[3]) end
return 1

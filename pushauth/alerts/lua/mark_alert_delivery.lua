-- Settle a version for a sink (and drop its retry mark), unless the alert is gone (never create a stray
-- hash); or, with an empty third argument, record a scheduled retry.
--
-- KEYS[1]  the alert hash
-- ARGV[1]  field: the field to set (`dl:<sink>:<version>` settles, `dls:<sink>:<version>` marks a retry)
-- ARGV[2]  value: Unix seconds (delivered), "dead:<why>" or "retrying:<n>:<reason>"
-- ARGV[3]  drop: a field to delete with it ('' for none)
-- Returns  1 | 0 (the alert is gone: nothing written)

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[1], ARGV[3]) end
return 1

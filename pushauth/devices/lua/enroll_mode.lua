-- enroll_mode.lua: which way an application's enrollment for a user goes.
--
-- The user's first phone ('first'), a further phone the user may add at once because a temporary access
-- code proved them within the grant window (the grant is spent: 'access_code'), or a further phone an
-- existing one must approve ('approval').
--
-- KEYS[1]   user   the user hash (holds `acode_grant`)
-- KEYS[2]   devs   the user's set of active devices
-- ARGV[1]   now    Unix seconds
-- RETURNS
--   "first" | "access_code" | "approval"   (a bare string)

if redis.call('SCARD', KEYS[2]) == 0 then return 'first' end
local grant = tonumber(redis.call('HGET', KEYS[1], 'acode_grant') or '0')
if grant > tonumber(ARGV[1]) then
  redis.call('HDEL', KEYS[1], 'acode_grant')
  return 'access_code'
end
return 'approval'

-- device_lib.lua: activating a phone. A library, not a script: included with
--   --@include pushauth.devices device_lib.lua
-- by register_device.lua (a first phone, or one the security team vouched for) and by
-- challenges/lua/respond.lua (an existing phone approves a further one).
--
-- NEEDS     the ledger (it includes pushauth.detection ledger.lua itself, first; a script that included it
--           already gets it once): UP, NOW, uk, raise, and KEYS/ARGV[1..6] as the ledger needs them
-- DEFINES   device_added(did, how) -> the phones to push a `device_added` notice to

--@include pushauth.detection ledger.lua

-- The phone joins the active set (it gets challenges from now on), and the user's remembered browsers are
-- forgotten (whoever added it may be signing in from one). When the user had other phones, the security
-- team is alerted (high: a second phone is how a phished password becomes a lasting second factor) and
-- each other phone gets a `device_added` notice. `how` is merged into the alert's evidence (who approved
-- or vouched). Returns the phones to push the notice to (not the one that approved it).
local function device_added(did, how)
  local others = redis.call('SMEMBERS', uk('devs'))
  local dkey = uk('dev:' .. did)
  redis.call('HSET', dkey, 'st', 'active', 'activated', NOW)
  redis.call('HDEL', dkey, 'appr')
  redis.call('PERSIST', dkey)
  redis.call('SADD', uk('devs'), did)
  redis.call('SREM', uk('ndevs'), did)
  local before = tonumber(redis.call('HGET', uk('user'), 'enrolled') or '0')
  redis.call('HINCRBY', uk('user'), 'enrolled', 1)
  redis.call('DEL', uk('remembered'))
  local notify = {}
  if #others == 0 and before == 0 then return notify end
  local d = redis.call('HMGET', dkey, 'name', 'platform', 'enroll_ip')
  local ev = {device_id = did, device_name = d[1] or nil, platform = d[2] or nil,
              phone_ip = (d[3] and d[3] ~= '') and d[3] or nil, other_devices = #others}
  for k, v in pairs(how) do ev[k] = v end
  -- a phone again after all were removed (a replaced phone) is worth a note; a second one is a finding
  raise('device_enrolled', #others > 0 and 'high' or 'info', ev)
  for _, other in ipairs(others) do
    redis.call('LPUSH', uk('notices:' .. other), cjson.encode({type = 'device_added', device_id = did,
                                                                name = d[1], at = NOW}))
    redis.call('LTRIM', uk('notices:' .. other), 0, 49)
    if other ~= how.approved_by then notify[#notify + 1] = other end
  end
  return notify
end

-- Everything a push needs about one challenge, in one round trip: nothing when the challenge is gone,
-- decided or expired; else its expiry, then per targeted device (ARGV[3], or every device in `devs`) its
-- id, its delivery state so far, and the device's st, ptok, ptok_stale, pprov (false when missing).
-- The device keys are built here from ARGV[1] ("<prefix>:{<uid>}:dev:"): they share the challenge's hash
-- tag, so they live in its Cluster slot.
--
-- KEYS[1]  the challenge hash
-- ARGV[1]  device_prefix: the user's device key prefix, "<prefix>:{<uid>}:dev:"
-- ARGV[2]  now: Unix seconds
-- ARGV[3]  device_id: the one device to read (a retry), or '' for every device the challenge targets
-- Returns  {} | {exp, then per device: id, pd:<id>, st, ptok, ptok_stale, pprov}

local c = redis.call('HMGET', KEYS[1], 'st', 'exp', 'devs')
local exp = tonumber(c[2])
if c[1] ~= 'pending' or not exp or exp <= tonumber(ARGV[2]) then return {} end
local out = {c[2]}
local function add(did)
  local d = redis.call('HMGET', ARGV[1] .. did, 'st', 'ptok', 'ptok_stale', 'pprov')
  out[#out + 1] = did
  out[#out + 1] = redis.call('HGET', KEYS[1], 'pd:' .. did)
  out[#out + 1] = d[1]
  out[#out + 1] = d[2]
  out[#out + 1] = d[3]
  out[#out + 1] = d[4]
end
if ARGV[3] ~= '' then
  add(ARGV[3])
else
  for did in string.gmatch(c[3] or '', '[^,]+') do add(did) end
end
return out

-- Forget one sink's failures on an alert: its dead-lettered versions (`dl:<sink>:<version>` = "dead:...")
-- and its retry marks (`dls:<sink>:<version>`); deliveries that succeeded stay recorded. Plain string
-- comparisons: a sink name may hold Lua pattern characters.
--
-- KEYS[1]  the alert hash
-- ARGV[1]  sink: the sink's name
-- Returns  the number of fields removed

local h = redis.call('HGETALL', KEYS[1])
local dl, dls = 'dl:' .. ARGV[1] .. ':', 'dls:' .. ARGV[1] .. ':'
local n = 0
for i = 1, #h, 2 do
  local field, value = h[i], h[i + 1]
  if (string.sub(field, 1, #dl) == dl and string.sub(value, 1, 5) == 'dead:')
      or string.sub(field, 1, #dls) == dls then
    redis.call('HDEL', KEYS[1], field)
    n = n + 1
  end
end
return n

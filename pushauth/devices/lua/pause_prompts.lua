-- pause_prompts.lua: a phone pauses its user's prompts (holiday) until a time, or resumes them.
--
-- KEYS[1]   user    the user hash
-- ARGV[1]   until   Unix seconds the pause ends (0 = resume now)
-- ARGV[2]   did     the pausing device's id
-- ARGV[3]   now     Unix seconds
-- RETURNS
--   {"ok"}

if tonumber(ARGV[1]) > 0 then
  redis.call('HSET', KEYS[1], 'paused_until', ARGV[1], 'paused_by', ARGV[2], 'paused_at', ARGV[3])
else
  redis.call('HDEL', KEYS[1], 'paused_until', 'paused_by', 'paused_at')
end
return {'ok'}

-- A phone pauses its user's prompts (holiday) until a time, or resumes them (until = 0).
-- KEYS: user   ARGV: until, did, now

if tonumber(ARGV[1]) > 0 then
  redis.call('HSET', KEYS[1], 'paused_until', ARGV[1], 'paused_by', ARGV[2], 'paused_at', ARGV[3])
else
  redis.call('HDEL', KEYS[1], 'paused_until', 'paused_by', 'paused_at')
end
return {'ok'}

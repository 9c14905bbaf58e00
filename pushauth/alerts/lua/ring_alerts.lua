-- Announce new alert versions (AlertStore.announce): add each alert to the security team's index (and a
-- new one, version 1, to the open index) and append a pointer to the alert stream for the alert worker.
-- Idempotent but for the stream entry, which the worker dedupes by version.
--
-- KEYS[1]  the index of every alert, a zset of "<uid>/<aid>" by time
-- KEYS[2]  the index of open alerts, likewise
-- KEYS[3]  the alert stream
-- ARGV[1]  uid: the user the alerts belong to
-- ARGV[2]  now: Unix seconds (the index score)
-- ARGV[3]  maxlen: the stream's approximate length cap
-- ARGV[4..] notes: "<aid>|<version>" (malformed ones are skipped)
-- Returns  the number of notes given

for i = 4, #ARGV do
  local aid, ver = string.match(ARGV[i], '^([^|]+)|(%d+)$')
  if aid then
    redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1] .. '/' .. aid)
    if ver == '1' then redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1] .. '/' .. aid) end
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'u', ARGV[1], 'a', aid, 'v', ver)
  end
end
return #ARGV - 3

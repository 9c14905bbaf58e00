-- KEYS: index, open index, stream   ARGV: uid, now, maxlen, then "<aid>|<version>" notes

for i = 4, #ARGV do
  local aid, ver = string.match(ARGV[i], '^([^|]+)|(%d+)$')
  if aid then
    redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1] .. '/' .. aid)
    if ver == '1' then redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1] .. '/' .. aid) end
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'u', ARGV[1], 'a', aid, 'v', ver)
  end
end
return #ARGV - 3

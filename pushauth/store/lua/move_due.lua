-- Move delayed entries that are due back into their stream (StreamConsumer's delayed loop): each is
-- added to the stream and removed from the delayed set in one step, so none is lost or doubled.
--
-- KEYS[1]  the delayed set, a zset of JSON-encoded entry fields by due time
-- KEYS[2]  the stream
-- ARGV[1]  now: Unix seconds (fractional); entries due by then are moved
-- ARGV[2]  max_entries: at most this many per call
-- ARGV[3]  maxlen: the stream's approximate length cap
-- Returns  the number of entries moved

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local fields = cjson.decode(member)
  local flat = {}
  for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(flat))
  redis.call('ZREM', KEYS[1], member)
end
return #due

-- A further phone that asked for offline codes while it waited for approval (PROTOCOL.md 5.5, 17.5) polls
-- its activation once approved: its seed, stored sealed and pending at registration, becomes active and is
-- handed over by this one call. Only the call that moves it from pending to active gets it, so the seed
-- travels once however many polls race; a method gone (the approval expired, the method was revoked) or
-- of another phone is left alone.
--
-- KEYS[1]  the method hash "<prefix>:{<uid>}:otp:<method id>"
-- ARGV[1]  the phone's device id (the method's `did`)
-- ARGV[2]  now (Unix seconds)
-- Returns  1 delivered (now active) | 0 not this call's to deliver

local m = redis.call('HMGET', KEYS[1], 'st', 'did')
if m[1] ~= 'pending' or m[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'st', 'active', 'act', ARGV[2], 'exp', 0)
redis.call('PERSIST', KEYS[1])
return 1

-- The security team issues a temporary access code (stored hashed, one per user: a new one replaces the
-- old). Wrong codes typed before it no longer count toward its attempt limit (`acode_reset`): the user the
-- team just helped must not meet "too many wrong access codes". Raises an info alert so its use is visible.
--
-- KEYS[1]  the user hash "<prefix>:{<uid>}:user" (routes the call to the user's slot; the ledger builds
--          every other key from UP, with the same hash tag)
-- ARGV[1..6]  the ledger's (pushauth.detection.ledger.LedgerCall)
-- ARGV[7]  code_hash: sha256 hex of the code as typed, normalised (upper case, no dashes or spaces)
-- ARGV[8]  expires_at: Unix seconds; the code's hash (`acode`) expires then
-- ARGV[9]  by: who issued it (the admin token's hash prefix)
-- Returns  {"ok", NOTES}

--@include pushauth.detection ledger.lua

redis.call('HSET', uk('acode'), 'h', ARGV[7], 'exp', ARGV[8], 'by', ARGV[9], 'at', NOW)
redis.call('EXPIREAT', uk('acode'), ARGV[8])
redis.call('HSET', uk('user'), 'acode_reset', redis.call('HGET', uk('user'), 'seq') or '0')
raise('access_code_issued', 'info', {by = ARGV[9], expires = tonumber(ARGV[8])})
return {'ok', NOTES}

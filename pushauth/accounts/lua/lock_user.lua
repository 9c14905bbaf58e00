-- The security team locks a user by hand: pending prompts are denied at once ("locked"), and nothing signs
-- the user in until an unlock (or, if `containment.auto_unlock_after_s` is set, until that has passed).
--
-- KEYS[1]  the user hash "<prefix>:{<uid>}:user" (routes the call to the user's slot; the ledger builds
--          every other key from UP, with the same hash tag)
-- ARGV[1..6]  the ledger's (pushauth.detection.ledger.LedgerCall)
-- ARGV[7]  by: who locked it (stored as the lock's reason, `locked_why`)
-- Returns  {"ok", NOTES}

--@include pushauth.detection ledger.lua

lock(ARGV[7])
return {'ok', NOTES}

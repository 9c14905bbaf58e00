-- settle.lua: the expired prompts of one user, settled by the expiry sweeper (`challenges.expiry`; the
-- user's next event would do it too), and lock and suspension lifted when their time is up.
--
-- KEYS[1]      user   the user hash (routes the call to the user's slot)
-- ARGV[1..6]          the ledger's (LedgerCall)
-- RETURNS
--   {"ok", NOTES, settled}   settled: how many pending prompts were counted as ignored

--@include pushauth.detection ledger.lua

local n = settle()
gate_state()
return {'ok', NOTES, n}

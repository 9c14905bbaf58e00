-- The security team locks a user by hand: pending prompts are denied at once ("locked").
-- ARGV[7]: why (who locked it)   -> {"ok", NOTES}

--@include pushauth.detection ledger.lua

lock(ARGV[7])
return {'ok', NOTES}

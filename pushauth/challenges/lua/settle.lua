-- Expired prompts of one user, settled by the expiry worker (the user's next event would do it too).
-- -> {"ok", NOTES, settled count}

--@include pushauth.detection ledger.lua

local n = settle()
gate_state()
return {'ok', NOTES, n}

-- The security team marks an account exempt or shared (or clears it). Setting either while the account is
-- contained (locked, suspended, inside a push-bombing block, or with an open critical alert) is refused:
-- an exemption must never silently lift containment. With `force` it is done, and raises a high alert.
-- (A lock and a suspension win over the flags anyway: create_challenge.lua checks them first.)
--
-- KEYS[1]  the user hash "<prefix>:{<uid>}:user" (routes the call to the user's slot; the ledger builds
--          every other key from UP, with the same hash tag)
-- ARGV[1..6]  the ledger's (pushauth.detection.ledger.LedgerCall)
-- ARGV[7]  exempt: '1' set, '0' clear, '' leave as it is
-- ARGV[8]  shared: '1' set, '0' clear, '' leave as it is
-- ARGV[9]  force: '1' to set a flag even while the account is contained, else ''
-- ARGV[10] by: who (for the override alert)
-- Returns  {"ok", NOTES, "<what was active, comma-joined; '' if nothing>"}
--          | {"refused", NOTES, "<what is active, comma-joined>"}

--@include pushauth.detection ledger.lua

local exempt, shared, force, by = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local active = {}
if exempt == '1' or shared == '1' then
  settle()
  local locked, suspended = gate_state()
  if locked then active[#active + 1] = 'locked' end
  if suspended then active[#active + 1] = 'suspended' end
  if window_block('prompt', CFG.bomb_win, CFG.bomb_max, 'bomb_reset') then
    active[#active + 1] = 'push_bombing'
  end
  for _, aid in ipairs(redis.call('ZREVRANGE', uk('alerts'), 0, 49)) do
    local a = redis.call('HMGET', uk('alert:' .. aid), 'status', 'sev')
    if a[1] == 'open' and a[2] == 'critical' then
      active[#active + 1] = 'open_critical_alert'
      break
    end
  end
  if #active > 0 then
    if force ~= '1' then return {'refused', NOTES, table.concat(active, ',')} end
    raise('policy_override', 'high', {by = by, exempt = exempt == '1' or nil, shared = shared == '1' or nil,
                                      active = active})
  end
end
redis.call('HSET', uk('user'), 'name', USER)
if exempt ~= '' then redis.call('HSET', uk('user'), 'policy_exempt', exempt) end
if shared ~= '' then redis.call('HSET', uk('user'), 'policy_shared', shared) end
return {'ok', NOTES, table.concat(active, ',')}

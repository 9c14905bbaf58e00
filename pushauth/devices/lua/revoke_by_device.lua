-- revoke_by_device.lua: one of the user's phones revokes another (lost or replaced).
--
-- A phone activated less than the cool-down ago cannot revoke a phone older than itself, unless the
-- security team allowed it (`may_revoke`): a phished password plus an approval tricked out of the user must
-- not end with the real phone removed. Either way the security team hears of it (high).
--
-- KEYS[1]      user       the user hash (routes the call to the user's slot)
-- ARGV[1..6]              the ledger's (LedgerCall)
-- ARGV[7]      by         the revoking device's id
-- ARGV[8]      target     the device to revoke
-- ARGV[9]      cooldown   seconds a new phone cannot revoke an older one (0 = no cool-down)
-- RETURNS
--   {"ok", NOTES}                revoked
--   {"revoked", NOTES}           the revoking phone itself is no longer active
--   {"not_found", NOTES}         the target is not an active device
--   {"cooldown", NOTES, until}   refused until `until` (Unix seconds)

--@include pushauth.detection ledger.lua

local by, target, cool = ARGV[7], ARGV[8], tonumber(ARGV[9])
local b = redis.call('HMGET', uk('dev:' .. by), 'st', 'activated', 'created', 'may_revoke')
if b[1] ~= 'active' then return {'revoked', NOTES} end
local t = redis.call('HMGET', uk('dev:' .. target), 'st', 'activated', 'created', 'name', 'platform')
if t[1] ~= 'active' then return {'not_found', NOTES} end
local b_since = tonumber(b[2] or b[3] or '0')
local t_since = tonumber(t[2] or t[3] or '0')
local ev = {device_id = target, device_name = t[4] or nil, platform = t[5] or nil, by_device = by}
if cool > 0 and NOW - b_since < cool and t_since <= b_since and b[4] ~= '1' then
  ev.cooldown_until = b_since + cool
  raise('device_revoke_refused', 'high', ev)
  return {'cooldown', NOTES, b_since + cool}
end
redis.call('HSET', uk('dev:' .. target), 'st', 'revoked', 'revoked_at', NOW, 'revoked_by', 'device:' .. by)
redis.call('SREM', uk('devs'), target)
raise('device_revoked', 'high', ev)
return {'ok', NOTES}

-- A key-encryption-key rotation re-encrypts one seed: the new sealed text replaces the old only if the
-- method still holds exactly the old one (compare-and-set), so a method revoked or re-enrolled while the
-- rotation runs is left as it is. One key, so it runs unchanged on Redis Cluster (WATCH/MULTI does not).
--
-- KEYS[1]  the method hash "<prefix>:{<uid>}:otp:<method id>"
-- ARGV[1]  the sealed seed read before re-encrypting
-- ARGV[2]  the same seed sealed under the new current key
-- Returns  1 replaced | 0 left alone (gone or changed)

if redis.call('HGET', KEYS[1], 'seed') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'seed', ARGV[2])
return 1

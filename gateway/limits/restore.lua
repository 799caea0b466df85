-- Rebuild at start: raise each budget's spend to the ledger's figure, never lower it (other
-- replicas may have settled requests the ledger has not written yet). Alerts already crossed
-- are marked fired without reporting them again.
-- KEYS: nb budget hashes. ARGV: nb x (spent nano-$, alerts reached at that spend, ttl s)
for j = 1, #KEYS do
  local h = KEYS[j]
  local spent = tonumber(ARGV[3 * j - 2])
  if tonumber(redis.call('HGET', h, 'spent') or '0') < spent then
    redis.call('HSET', h, 'spent', ARGV[3 * j - 2])
  end
  if tonumber(redis.call('HGET', h, 'alerted') or '0') < tonumber(ARGV[3 * j - 1]) then
    redis.call('HSET', h, 'alerted', ARGV[3 * j - 1])
  end
  redis.call('EXPIRE', h, ARGV[3 * j])
end
return #KEYS

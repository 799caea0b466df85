-- Settlement: replace what admission reserved with what the request used, and free its slots.
-- Mirrors MemoryLimiter.settle in gateway/limits/memory.py.
--
-- KEYS: g TPM buckets, c concurrency sets, nb budget pairs (hash, zset) — as in admit.lua
-- ARGV: hold id, g, c, nb, g x (limit, token delta), nb x (actual nano-$, ttl s, thresholds)
--       thresholds: comma-separated nano-$ amounts at which alerts fire, ascending
-- Returns: nb x (alerts already fired, alerts reached now, spent)
-- Idempotent for slots and holds (ZREM/HDEL of an absent member do nothing); a hold whose
-- lease already expired is simply gone, and the actual cost is still added to the spend.

local id = ARGV[1]
local g, c, nb = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local WINDOW = 60000000
local function int(x) return string.format('%d', x) end
local out = {}

-- TPM: move the TAT by the difference (a refund when the estimate was too high, a debt
-- when too low), never back past now: a bucket holds at most its limit.
for i = 1, g do
  local limit = tonumber(ARGV[3 + 2 * i])
  local delta = tonumber(ARGV[4 + 2 * i])
  local base = math.max(tonumber(redis.call('GET', KEYS[i]) or '0'), now)
  local new = math.max(now, base + delta * WINDOW / limit)
  if new > now then
    redis.call('SET', KEYS[i], string.format('%.3f', new), 'PX', math.ceil((new - now) / 1000) + 1)
  else
    redis.call('DEL', KEYS[i])
  end
end

for k = 1, c do redis.call('ZREM', KEYS[g + k], id) end

local bkey, barg = g + c, 5 + 2 * g
for j = 0, nb - 1 do
  local h, z = KEYS[bkey + 2 * j + 1], KEYS[bkey + 2 * j + 2]
  local held = redis.call('HGET', h, 'r:' .. id)
  if held then
    redis.call('HINCRBY', h, 'reserved', int(-tonumber(held)))
    redis.call('HDEL', h, 'r:' .. id)
  end
  redis.call('ZREM', z, id)
  local spent = redis.call('HINCRBY', h, 'spent', ARGV[barg + 3 * j])
  redis.call('EXPIRE', h, ARGV[barg + 3 * j + 1])
  local reached = 0
  for th in string.gmatch(ARGV[barg + 3 * j + 2], '[^,]+') do
    if spent >= tonumber(th) then reached = reached + 1 end
  end
  local fired = tonumber(redis.call('HGET', h, 'alerted') or '0')
  -- Only the replica that moves `alerted` up reports the crossing: once per period in all.
  if reached > fired then redis.call('HSET', h, 'alerted', reached) end
  out[#out + 1] = fired
  out[#out + 1] = reached
  out[#out + 1] = spent
end
return out

-- Admission: check every limit of one request and, only if all pass, reserve them all.
-- One script, so one round trip and no interleaving with another replica's admission.
-- The arithmetic mirrors gateway/limits/memory.py (the reference); keep the two in step.
--
-- KEYS: g rate buckets (GCRA TAT), c concurrency sets (zset hold id -> lease expiry),
--       nb budget pairs (hash {spent, reserved, alerted, r:<hold id>}, zset hold id -> expiry)
-- ARGV: hold id, lease (us), g, c, nb,
--       g x (limit, cost), c x (limit), nb x (limit nano-$, cost nano-$, block 1/0, ttl s)
-- Returns: {status (1 admitted, 0 rate-limited, 2 budget blocked), now (us),
--           g x (ok, remaining, reset us, retry us, too large), c x (ok, in flight),
--           nb x (over, spent, reserved)}
-- Time is the Redis server's (TIME), so replicas with skewed clocks share one timeline.

local id = ARGV[1]
local lease = tonumber(ARGV[2])
local g, c, nb = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local WINDOW = 60000000
-- Lua numbers are doubles: format integers explicitly so Redis never sees "1e+15".
local function int(x) return string.format('%d', x) end

local out = {1, now}
local admitted, blocked = true, false

-- Budgets: expire holds whose replica never settled, then test the worst case.
local bkey, barg = g + c, 6 + 2 * g + c
local budget = {}
for j = 0, nb - 1 do
  local h, z = KEYS[bkey + 2 * j + 1], KEYS[bkey + 2 * j + 2]
  local limit = tonumber(ARGV[barg + 4 * j])
  local cost = tonumber(ARGV[barg + 4 * j + 1])
  local dead = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  for _, hid in ipairs(dead) do
    local amt = redis.call('HGET', h, 'r:' .. hid)
    if amt then
      redis.call('HINCRBY', h, 'reserved', int(-tonumber(amt)))
      redis.call('HDEL', h, 'r:' .. hid)
    end
  end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', now) end
  local spent = tonumber(redis.call('HGET', h, 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', h, 'reserved') or '0')
  local used = spent + reserved
  local over = used >= limit or used + cost > limit
  if over and ARGV[barg + 4 * j + 2] == '1' then blocked = true end
  budget[j] = {over and 1 or 0, spent, reserved}
end

-- Rates: GCRA. A bucket of `limit` units refills over WINDOW; the request fits when the
-- theoretical arrival time, advanced by `cost` intervals, is at most WINDOW ahead of now.
local tats = {}
for i = 1, g do
  local limit = tonumber(ARGV[4 + 2 * i])
  local cost = tonumber(ARGV[5 + 2 * i])
  local interval = WINDOW / limit
  local base = math.max(tonumber(redis.call('GET', KEYS[i]) or '0'), now)
  local new = base + cost * interval
  if cost > limit or new - now > WINDOW + 0.001 then
    admitted = false
    local large = cost > limit
    local left = math.floor((WINDOW - (base - now)) / interval + 1e-9)
    local retry = large and (base - now) or (new - WINDOW - now)
    for _, v in ipairs({0, left, math.ceil(base - now), math.ceil(retry), large and 1 or 0}) do
      out[#out + 1] = v
    end
  else
    tats[i] = new
    local left = math.floor((WINDOW - (new - now)) / interval + 1e-9)
    for _, v in ipairs({1, left, math.ceil(new - now), 0, 0}) do out[#out + 1] = v end
  end
end

-- Concurrency: drop expired leases (a crashed replica's slots), then count.
for k = 1, c do
  local z = KEYS[g + k]
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
  local n = redis.call('ZCARD', z)
  local ok = n < tonumber(ARGV[5 + 2 * g + k])
  if not ok then admitted = false end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = n
end

for j = 0, nb - 1 do
  for _, v in ipairs(budget[j]) do out[#out + 1] = v end
end

if blocked then out[1] = 2 return out end
if not admitted then out[1] = 0 return out end

-- Every check passed: reserve everything.
local expiry = now + lease
for i = 1, g do
  redis.call('SET', KEYS[i], string.format('%.3f', tats[i]),
             'PX', math.ceil((tats[i] - now) / 1000) + 1)
end
for k = 1, c do
  local z = KEYS[g + k]
  redis.call('ZADD', z, int(expiry), id)
  redis.call('PEXPIRE', z, math.ceil(lease / 1000) + 1000)
end
for j = 0, nb - 1 do
  local h, z = KEYS[bkey + 2 * j + 1], KEYS[bkey + 2 * j + 2]
  local cost = ARGV[barg + 4 * j + 1]
  local ttl = ARGV[barg + 4 * j + 3]
  redis.call('HINCRBY', h, 'reserved', cost)
  redis.call('HSET', h, 'r:' .. id, cost)
  redis.call('ZADD', z, int(expiry), id)
  redis.call('EXPIRE', h, ttl)
  redis.call('EXPIRE', z, ttl)
end
return out

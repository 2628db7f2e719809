-- llmq response cache: store one entry of a tenant scope within the scope's bounds.
-- Atomic; all keys share the scope's hash tag (one Cluster slot), the evicted entries'
-- keys too (KEYS[1] with another digest).
--
-- KEYS[1] entry key   KEYS[2] index (zset digest -> expiry ms)   KEYS[3] sizes hash
-- ARGV[1] digest  ARGV[2] value  ARGV[3] ttl (ms)  ARGV[4] now (unix ms)
-- ARGV[5] most bytes of the scope  ARGV[6] most entries of the scope
--
-- Returns '<stored 0|1>|<entries evicted>|<bytes of the scope after>'.

local now = tonumber(ARGV[4])
local size = string.len(ARGV[2])
local max_bytes = tonumber(ARGV[5])
local max_entries = tonumber(ARGV[6])
if size > max_bytes then return '0|0|0' end
local prefix = string.sub(KEYS[1], 1, string.len(KEYS[1]) - string.len(ARGV[1]))

local function forget(digest)
  local s = tonumber(redis.call('HGET', KEYS[3], digest)) or 0
  redis.call('HDEL', KEYS[3], digest)
  redis.call('ZREM', KEYS[2], digest)
  return s
end

local total = tonumber(redis.call('HGET', KEYS[3], '#bytes')) or 0
-- Entries whose TTL ran out are gone already: only their bookkeeping is left.
for _, digest in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 64)) do
  total = total - forget(digest)
end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then  -- replaced: its old size goes
  total = total - forget(ARGV[1])
end

-- Past a bound: evict the entries closest to expiring.
local count = redis.call('ZCARD', KEYS[2])
local evicted = 0
while count > 0 and (total + size > max_bytes or count + 1 > max_entries) do
  local digest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  total = total - forget(digest)
  redis.call('DEL', prefix .. digest)
  count = count - 1
  evicted = evicted + 1
end

local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
total = math.max(total, 0) + size
redis.call('HSET', KEYS[3], ARGV[1], size, '#bytes', total)
-- The bookkeeping lives as long as the longest-lived entry.
local last = tonumber(redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2]) or (now + ttl)
redis.call('PEXPIREAT', KEYS[2], math.ceil(last) + 1000)
redis.call('PEXPIREAT', KEYS[3], math.ceil(last) + 1000)
return '1|' .. evicted .. '|' .. total

-- llmq stored: the bytes a tenant scope's stored responses and conversations take.
--
-- KEYS[1] sizes hash (`<kind>:<hex>` -> bytes, `_total` -> their sum)
-- KEYS[2] expiry sorted set (`<kind>:<hex>` -> unix ms it expires at)
-- ARGV[1] now (unix ms)  ARGV[2] record ('' = only read the total)
-- ARGV[3] its size now (0 = gone)  ARGV[4] unix ms it expires at (0 = never)
--
-- Records past their expiry (the bucket's retention dropped them) are taken out first, at
-- most 1,000 a call. Returns the total after the change.

local now = tonumber(ARGV[1])
local total = tonumber(redis.call('HGET', KEYS[1], '_total')) or 0
for _, f in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)) do
  total = total - (tonumber(redis.call('HGET', KEYS[1], f)) or 0)
  redis.call('HDEL', KEYS[1], f)
  redis.call('ZREM', KEYS[2], f)
end
local record = ARGV[2]
if record ~= '' then
  local size = tonumber(ARGV[3])
  total = total - (tonumber(redis.call('HGET', KEYS[1], record)) or 0) + size
  if size > 0 then
    redis.call('HSET', KEYS[1], record, size)
    if tonumber(ARGV[4]) > 0 then
      redis.call('ZADD', KEYS[2], ARGV[4], record)
    else
      redis.call('ZREM', KEYS[2], record)
    end
  else
    redis.call('HDEL', KEYS[1], record)
    redis.call('ZREM', KEYS[2], record)
  end
end
if total < 0 then total = 0 end
redis.call('HSET', KEYS[1], '_total', total)
return total

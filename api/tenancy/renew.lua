-- llmq renew: push the leases of many open reservations to a new end in one call. Atomic.
--
-- The key's own slot (field `kin` of the reservation) is pushed along with the tenant's.
-- A reservation that was released, or whose lease already ran out, is left alone (a renewal
-- never revives a slot that may have been given to another request).
--
-- KEYS[2i-1] in-flight zset of reservation i   KEYS[2i] reservation hash of reservation i
-- ARGV[1] now (unix ms)  ARGV[2] new lease end (unix ms)  ARGV[3] reservation grace (ms)
-- ARGV[3+i] job id of reservation i
--
-- Returns one character per reservation: '1' renewed, '0' gone.

local now = tonumber(ARGV[1])
local until_ms = tonumber(ARGV[2])
local grace = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS / 2 do
  local zset, hash, job = KEYS[2 * i - 1], KEYS[2 * i], ARGV[3 + i]
  local score = tonumber(redis.call('ZSCORE', zset, job))
  if score and score > now then
    if score < until_ms then
      redis.call('ZADD', zset, until_ms, job)
    end
    if redis.call('PTTL', zset) < until_ms - now + 60000 then
      redis.call('PEXPIREAT', zset, until_ms + 60000)
    end
    redis.call('PEXPIREAT', hash, until_ms + grace)
    -- The API key's slot (if the request came with a key) follows the tenant's.
    local kin = redis.call('HGET', hash, 'kin')
    if kin then
      local kscore = tonumber(redis.call('ZSCORE', kin, job))
      if kscore and kscore > now and kscore < until_ms then
        redis.call('ZADD', kin, until_ms, job)
        if redis.call('PTTL', kin) < until_ms - now + 60000 then
          redis.call('PEXPIREAT', kin, until_ms + 60000)
        end
      end
    end
    out[i] = '1'
  else
    out[i] = '0'
  end
end
return table.concat(out)

-- llmq release: end one job's reservation. Atomic and idempotent.
--
-- Frees the concurrency slot, replaces the reserved tokens and spend with the real ones in
-- the minute, day and month counters it was reserved in, books usage for the day and
-- appends one ledger entry (global stream and the tenant's stream).
--
-- KEYS[1] reservation hash   KEYS[2] in-flight zset   KEYS[3] usage hash (release day)
-- KEYS[4] ledger stream      KEYS[5] tenant ledger stream
-- (in a Cluster KEYS[4] is KEYS[5]: the caller appends to the global ledger itself)
-- ARGV[1] job id  ARGV[2] prompt tokens  ARGV[3] completion tokens  ARGV[4] failed 0|1
-- ARGV[5] now (unix ms)  ARGV[6] usage expires at (unix ms)  ARGV[7] ledger max length
-- ARGV[8] tenant  ARGV[9] model
--
-- Returns '<released 0|1>|<cost_usd>|<reserved tokens>'.

local job = ARGV[1]
-- Always free the slot, even without a reservation record (nothing else can hold it).
redis.call('ZREM', KEYS[2], job)

local r = redis.call('HMGET', KEYS[1], 'need', 'in_price', 'out_price', 'cost', 'win', 'day',
  'month')
if not r[1] then
  return '0|0'
end
redis.call('DEL', KEYS[1])

local prompt = tonumber(ARGV[2])
local completion = tonumber(ARGV[3])
local need = tonumber(r[1])
local cost = (prompt * tonumber(r[2]) + completion * tonumber(r[3])) / 1e6
local delta = prompt + completion - need
local dcost = cost - tonumber(r[4])

-- Reconcile only counters that still exist: an expired window has nothing left to correct.
if delta ~= 0 then
  for _, k in ipairs({r[5], r[6], r[7]}) do
    if redis.call('EXISTS', k) == 1 then
      redis.call('HINCRBY', k, 'tok', delta)
    end
  end
end
if dcost ~= 0 and redis.call('EXISTS', r[7]) == 1 then
  redis.call('HINCRBYFLOAT', r[7], 'usd', string.format('%.17g', dcost))
end

local model = ARGV[9]
local usd = string.format('%.17g', cost)
redis.call('HINCRBY', KEYS[3], 'req:' .. model, 1)
if ARGV[4] == '1' then
  redis.call('HINCRBY', KEYS[3], 'fail:' .. model, 1)
end
redis.call('HINCRBY', KEYS[3], 'in:' .. model, prompt)
redis.call('HINCRBY', KEYS[3], 'out:' .. model, completion)
if cost > 0 then
  redis.call('HINCRBYFLOAT', KEYS[3], 'usd:' .. model, usd)
end
redis.call('PEXPIREAT', KEYS[3], tonumber(ARGV[6]))

local status = 'ok'
if ARGV[4] == '1' then status = 'failed' end
local entry = {'ts', ARGV[5], 'tenant', ARGV[8], 'model', model, 'job', job,
  'prompt', prompt, 'completion', completion, 'reserved', need, 'cost', usd, 'status', status}
if KEYS[4] ~= KEYS[5] then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', unpack(entry))
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', unpack(entry))

return '1|' .. usd .. '|' .. need

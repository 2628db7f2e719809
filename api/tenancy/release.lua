-- llmq release: end one job's reservation. Atomic and idempotent.
--
-- Frees the concurrency slots (tenant's and key's), replaces the reserved tokens and spend
-- with the real ones in the rate, day and month counters it was reserved in (tenant's and
-- key's), books usage for the day (per model; per key and per end user when the request had
-- them), stamps the key's last use and appends one ledger entry (global stream and the
-- tenant's stream).
--
-- KEYS[1] reservation hash   KEYS[2] in-flight zset   KEYS[3] usage hash (release day)
-- KEYS[4] ledger stream      KEYS[5] tenant ledger stream
-- KEYS[6] usage-per-key hash (release day)  KEYS[7] usage-per-user hash (release day)
-- KEYS[8] the tenant's key-last-used hash (key id -> unix ms)
-- (in a Cluster KEYS[4] is KEYS[5]: the caller appends to the global ledger itself)
-- ARGV[1] job id  ARGV[2] prompt tokens  ARGV[3] completion tokens  ARGV[4] failed 0|1
-- ARGV[5] now (unix ms)  ARGV[6] usage expires at (unix ms)  ARGV[7] ledger max length
-- ARGV[8] tenant  ARGV[9] model  ARGV[10] cached prompt tokens  ARGV[11] cache-write tokens
-- ARGV[12] most end users booked per tenant and day (more go to '(other)')
-- ARGV[13] '' or how the response cache served the job ('hit' | 'join'): then ARGV[14] is
-- its whole cost (the model's cache_hit_price), it counts as `hits:<model>` in the usage,
-- and its ledger entry says `cached` 'true' (and `cache` hit|join)
-- ARGV[15] tenant ledger max length  ARGV[16] ms the tenant's ledger outlives its last entry
--
-- Returns '<released 0|1>|<cost_usd>|<reserved tokens>'.

local job = ARGV[1]
-- <record> (a lease booking's fold, lease_book.py, reads the record lease_book.lua made
-- in the same call instead)
-- Always free the slot, even without a reservation record (nothing else can hold it).
redis.call('ZREM', KEYS[2], job)

local r = redis.call('HMGET', KEYS[1], 'need', 'in_price', 'out_price', 'cost', 'rate', 'tokT',
  'day', 'month', 'krate', 'ktokT', 'kday', 'kmonth', 'kin', 'cin_price', 'cw_price', 'key',
  'user')
if not r[1] then
  return '0|0'
end
redis.call('DEL', KEYS[1])
if r[13] then redis.call('ZREM', r[13], job) end
-- </record>

local prompt = tonumber(ARGV[2])
local completion = tonumber(ARGV[3])
local cached = math.min(math.max(tonumber(ARGV[10]) or 0, 0), prompt)
local written = math.min(math.max(tonumber(ARGV[11]) or 0, 0), prompt - cached)
local in_price = tonumber(r[2])
local cin_price = tonumber(r[14]) or in_price
local cw_price = tonumber(r[15]) or in_price
local need = tonumber(r[1])
local served = ARGV[13] or ''
local cost
if served ~= '' then
  cost = tonumber(ARGV[14]) or 0
else
  cost = ((prompt - cached - written) * in_price + cached * cin_price + written * cw_price
    + completion * tonumber(r[3])) / 1e6
end
local delta = prompt + completion - need
local dcost = cost - tonumber(r[4])

-- Reconcile only counters that still exist: an expired one has nothing left to correct
-- (and an increment would make it again, without an expiry).
-- A rate is a GCRA arrival time: delta tokens move it by delta * (ms per token).
-- One EXISTS over a scope's counters (they almost always all exist); one each only when
-- one of them is missing.
-- `hold`: a lease booking's fold (lease_book.lua) left the hold out of `day` and `month`:
-- the job's real tokens and cost go in at once, the counters made with these expiries.
local function held_now(rate, per, day, month, hold)
  local used = prompt + completion
  if redis.call('HINCRBY', day, 'tok', used) == used then
    redis.call('PEXPIREAT', day, hold[1])
  end
  local month_new = redis.call('HINCRBY', month, 'tok', used) == used
  if cost ~= 0 then redis.call('HINCRBYFLOAT', month, 'usd', string.format('%.17g', cost)) end
  if month_new then redis.call('PEXPIREAT', month, hold[2]) end
  if delta ~= 0 and per > 0 and redis.call('EXISTS', rate) == 1 then
    redis.call('HINCRBYFLOAT', rate, 'tok', string.format('%.17g', delta * per))
  end
end
local function reconcile(rate, tok_t, day, month, hold)
  if hold then return held_now(rate, tonumber(tok_t) or 0, day, month, hold) end
  if not day or (delta == 0 and dcost == 0) then return end
  local per = tonumber(tok_t) or 0
  local all
  if delta == 0 then
    all = redis.call('EXISTS', month) == 1
  elseif per > 0 then
    all = redis.call('EXISTS', rate, day, month) == 3
  else
    all = redis.call('EXISTS', day, month) == 2
  end
  if delta ~= 0 then
    if per > 0 and (all or redis.call('EXISTS', rate) == 1) then
      redis.call('HINCRBYFLOAT', rate, 'tok', string.format('%.17g', delta * per))
    end
    if all or redis.call('EXISTS', day) == 1 then
      redis.call('HINCRBY', day, 'tok', delta)
    end
    if all or redis.call('EXISTS', month) == 1 then
      redis.call('HINCRBY', month, 'tok', delta)
    end
  end
  if dcost ~= 0 and (all or redis.call('EXISTS', month) == 1) then
    redis.call('HINCRBYFLOAT', month, 'usd', string.format('%.17g', dcost))
  end
end
reconcile(r[5], r[6], r[7], r[8], r[18])
reconcile(r[9], r[10], r[11], r[12], r[19])

local usd = string.format('%.17g', cost)
local failed = ARGV[4] == '1'
local expires = tonumber(ARGV[6])
-- `req` is the count of `who`'s requests after this one (HINCRBY 'req:' .. who, done by
-- the caller). A usage hash gets its expiry in the call that creates it: that call is
-- the first one to book anything in it, so its `req:` field is new too (req == 1). A
-- field seen before means the hash existed before, with its expiry set when it was made.
local function book(hash, who, req)
  if failed then
    redis.call('HINCRBY', hash, 'fail:' .. who, 1)
  end
  redis.call('HINCRBY', hash, 'in:' .. who, prompt)
  if cached > 0 then
    redis.call('HINCRBY', hash, 'cached:' .. who, cached)
  end
  redis.call('HINCRBY', hash, 'out:' .. who, completion)
  if cost > 0 then
    redis.call('HINCRBYFLOAT', hash, 'usd:' .. who, usd)
  end
  if req == 1 then
    redis.call('PEXPIREAT', hash, expires)
  end
end

local model = ARGV[9]
book(KEYS[3], model, redis.call('HINCRBY', KEYS[3], 'req:' .. model, 1))
if served ~= '' then redis.call('HINCRBY', KEYS[3], 'hits:' .. model, 1) end
local key_id = r[16] or ''
if key_id ~= '' then
  book(KEYS[6], key_id, redis.call('HINCRBY', KEYS[6], 'req:' .. key_id, 1))
  redis.call('HSET', KEYS[8], key_id, ARGV[5])
end
local user = r[17] or ''
if user ~= '' then
  -- Bounded cardinality: past the cap, new end users of the day share one row (the ledger,
  -- capped by length, still names them).
  local row = user
  local req = redis.call('HINCRBY', KEYS[7], 'req:' .. user, 1)
  if req == 1 and redis.call('HINCRBY', KEYS[7], '#users', 1) > tonumber(ARGV[12]) then
    -- A new user past the cap: take the row back, book under '(other)'.
    redis.call('HINCRBY', KEYS[7], '#users', -1)
    redis.call('HDEL', KEYS[7], 'req:' .. user)
    row = '(other)'
    req = redis.call('HINCRBY', KEYS[7], 'req:(other)', 1)
  end
  book(KEYS[7], row, req)
end

local status = 'ok'
if ARGV[4] == '1' then status = 'failed' end
local entry = {'ts', ARGV[5], 'tenant', ARGV[8], 'model', model, 'job', job,
  'prompt', prompt, 'completion', completion, 'reserved', need, 'cost', usd, 'status', status,
  'cached', cached, 'key', key_id, 'user', user}
if served ~= '' then
  -- a response-cache answer: its own line, marked (the prompt-cache count moves aside)
  entry[20] = 'true'
  entry[#entry + 1] = 'cache'
  entry[#entry + 1] = served
  entry[#entry + 1] = 'cached_tokens'
  entry[#entry + 1] = cached
end
if KEYS[4] ~= KEYS[5] then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', unpack(entry))
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[15], '*', unpack(entry))
redis.call('PEXPIRE', KEYS[5], ARGV[16])

return '1|' .. usd .. '|' .. need

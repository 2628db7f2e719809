-- llmq lease booking: make a lease-admitted job's reservation record, once, so that
-- release.lua books it exactly as it books a job reserved by quota.lua. It runs only in
-- lease_book.py's fold, right before release.lua in the same call: the record is handed
-- to it as a table (field -> value), never written to Redis.
--
-- A job admitted from a lease (docs/routing.md, "Leased budget") made no Redis call: its
-- requests, TPM tokens and slot were charged with the lease. The record release.lua reads
-- is made here, with what quota.lua would have held for it in the day and month counters
-- (tokens, spend: its `hold`); release.lua, called right after, adds the real tokens and
-- spend to those counters (the hold and the difference in one increment), gives the TPM
-- difference back and books usage and the ledger. The marker KEYS[2] makes it once per
-- job: the relaying api and the usage booker may both call it.
--
-- KEYS[1] reservation hash (this job; not written)  KEYS[2] booked marker  KEYS[3] price table
-- KEYS[4..6] tenant rate, day, month   KEYS[7..9] the key's rate, day, month (the day and
-- month are release.lua's to add to: they are the record's)
-- KEYS[10] tenant in-flight set  KEYS[11] the key's
-- KEYS[12] the job's budget lease record, when its lease held day, month and spend: while
-- it is there, the job's tokens and spend are in the counters already (counted as booked
-- in it, for the reaper); once it is gone (given back), they are added as without one
-- ARGV[1] job id  ARGV[2] model  ARGV[3] prompt tokens  ARGV[4] key id ('' = none)
-- ARGV[5] end user  ARGV[6] tenant ms per token (0 = no TPM)  ARGV[7] the key's
-- ARGV[8] day expiry (ms)  ARGV[9] month expiry (ms)  ARGV[10] marker ttl (ms)
-- ARGV[11] admitted at (unix ms)  ARGV[12] output tokens held (max_tokens)
-- ARGV[13] the lease slot the job held ('-': none): taken out of both in-flight sets on
-- every call (a slot serves one job only, so taking it out twice is harmless)
--
-- Returns the record, or nil when the job was booked before.

if ARGV[13] ~= '-' then
  redis.call('ZREM', KEYS[10], ARGV[13])
  if ARGV[4] ~= '' then redis.call('ZREM', KEYS[11], ARGV[13]) end
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[10]) then return nil end
local model = ARGV[2]
local prompt, out = tonumber(ARGV[3]), tonumber(ARGV[12])
local need = prompt + out
local in_price, out_price, cin_price, cw_price = 0, 0, 0, 0
local p = redis.call('HGET', KEYS[3], model)
if p then
  local price = cjson.decode(p)
  in_price = tonumber(price['input_per_1m']) or 0
  out_price = tonumber(price['output_per_1m']) or 0
  cin_price = tonumber(price['cached_input_per_1m']) or in_price
  cw_price = tonumber(price['cache_write_per_1m']) or in_price
end
local cost = (prompt * in_price + out * out_price) / 1e6  -- what quota.lua would hold
local function g17(x) return string.format('%.17g', x) end
local usd = g17(cost)
local rec = {'model', model, 'need', need, 'in_price', g17(in_price),
  'out_price', g17(out_price), 'cin_price', g17(cin_price), 'cw_price', g17(cw_price),
  'cost', usd, 'at', ARGV[11], 'key', ARGV[4], 'user', ARGV[5]}
-- The hold (`need` tokens and `cost` on the admission's day and month) is not added here:
-- release.lua, next in the call, adds it with the job's difference from it, one increment
-- a counter (the record's `hold`: the counters' expiries when they are made)
local function hold(prefix)
  local n = #rec
  rec[n + 1], rec[n + 2] = prefix .. 'hold', {ARGV[8], ARGV[9]}
end
local function held_in(prefix, rate, tok_t, day, month)
  local n = #rec
  rec[n + 1], rec[n + 2] = prefix .. 'rate', rate
  rec[n + 3], rec[n + 4] = prefix == '' and 'tokT' or 'ktokT', tok_t
  rec[n + 5], rec[n + 6] = prefix .. 'day', day
  rec[n + 7], rec[n + 8] = prefix .. 'month', month
end
local leased = KEYS[12] and redis.call('EXISTS', KEYS[12]) == 1
if leased then
  redis.call('HINCRBY', KEYS[12], 'btok', need)
  if cost > 0 then redis.call('HINCRBYFLOAT', KEYS[12], 'busd', usd) end
end
if not leased then hold('') end
held_in('', KEYS[4], ARGV[6], KEYS[5], KEYS[6])
if ARGV[4] ~= '' then
  if not leased then hold('k') end
  held_in('k', KEYS[7], ARGV[7], KEYS[8], KEYS[9])
end
local record = {}
for i = 1, #rec, 2 do record[rec[i]] = rec[i + 1] end
return record

-- llmq reserve: check every limit of one request and, if all pass, reserve it. Atomic.
--
-- KEYS[1] tenant hash           KEYS[2] price table hash     KEYS[3] in-flight zset
-- (in a Cluster KEYS[2] is KEYS[1] and the price comes as ARGV[11]: one slot per script)
-- KEYS[4] minute window hash    KEYS[5] day quota hash       KEYS[6] month quota hash
-- KEYS[7] reservation hash (this job)
-- ARGV[1] model  ARGV[2] prompt tokens  ARGV[3] max tokens  ARGV[4] job id
-- ARGV[5] now (unix ms)  ARGV[6] lease (ms)  ARGV[7] minute end (ms)  ARGV[8] day end (ms)
-- ARGV[9] month end (ms)  ARGV[10] reservation ttl (ms)
-- ARGV[11] (Cluster only) the model's price JSON, or '' for none
--
-- Returns one string (cheaper to parse than an array), fields joined by '|':
--   allowed 0|1, reason, limit, retry_after_ms, limit_req, remaining_req, reset_req_ms,
--   limit_tok, remaining_tok, reset_tok_ms, reserved_tokens, reserved_usd, lease_until_ms,
--   duplicate 0|1; a limit of -1 = unlimited.

local now = tonumber(ARGV[5])
local minute_end = tonumber(ARGV[7])
local reset = minute_end - now

local t = redis.call('HMGET', KEYS[1], 'status', 'models', 'rpm', 'tpm', 'max_concurrent',
  'daily_tokens', 'monthly_tokens', 'spend_budget_usd')
if not t[1] then
  return '0|unknown_tenant||0|-1|-1|0|-1|-1|0|0|0|0|0'
end
local rpm = tonumber(t[3]) or 0
local tpm = tonumber(t[4]) or 0
local max_conc = tonumber(t[5]) or 0
local daily = tonumber(t[6]) or 0
local monthly = tonumber(t[7]) or 0
local spend = tonumber(t[8]) or 0

local w = redis.call('HMGET', KEYS[4], 'req', 'tok')
local w_req = tonumber(w[1]) or 0
local w_tok = tonumber(w[2]) or 0

local function answer(allowed, reason, limit, retry_ms, req, tok, need, usd, lease_until, dup)
  local lr, rr, lt, rt = -1, -1, -1, -1
  if rpm > 0 then lr = rpm; rr = math.max(rpm - req, 0) end
  if tpm > 0 then lt = tpm; rt = math.max(tpm - tok, 0) end
  return string.format('%d|%s|%s|%d|%d|%d|%d|%d|%d|%d|%d|%s|%d|%d', allowed, reason, limit,
    retry_ms, lr, rr, reset, lt, rt, reset, need, usd, lease_until, dup)
end

local function refuse(reason, limit, retry_ms)
  return answer(0, reason, limit, retry_ms, w_req, w_tok, 0, '0', 0, 0)
end

if t[1] ~= 'active' then
  return refuse('suspended', '', 0)
end

local model = ARGV[1]
if t[2] and t[2] ~= '' and t[2] ~= '[]' then
  local found = false
  for _, m in ipairs(cjson.decode(t[2])) do
    if m == model then found = true; break end
  end
  if not found then return refuse('model_not_allowed', '', 0) end
end

-- Reap slots whose lease ran out: a crashed api can never hold one forever.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)

local job = ARGV[4]
if redis.call('EXISTS', KEYS[7]) == 1 then
  -- The same job reserved before (a retried call): answer yes, count nothing again.
  local r = redis.call('HMGET', KEYS[7], 'need', 'cost')
  local lease_until = tonumber(redis.call('ZSCORE', KEYS[3], job)) or 0
  return answer(1, 'ok', '', 0, w_req, w_tok, tonumber(r[1]) or 0, r[2] or '0', lease_until, 1)
end

local prompt = tonumber(ARGV[2])
local need = prompt + tonumber(ARGV[3])
local in_price, out_price = 0, 0
local p = ARGV[11]
if not p then p = redis.call('HGET', KEYS[2], model) elseif p == '' then p = nil end
if p then
  local price = cjson.decode(p)
  in_price = tonumber(price['input_per_1m']) or 0
  out_price = tonumber(price['output_per_1m']) or 0
end
local cost = (prompt * in_price + tonumber(ARGV[3]) * out_price) / 1e6

-- Budgets first: when one is spent, retrying within the minute will not help.
local d_tok = tonumber(redis.call('HGET', KEYS[5], 'tok')) or 0
local m = redis.call('HMGET', KEYS[6], 'tok', 'usd')
local m_tok = tonumber(m[1]) or 0
local m_usd = tonumber(m[2]) or 0
if daily > 0 and d_tok + need > daily then
  return refuse('insufficient_quota', 'daily_tokens', tonumber(ARGV[8]) - now)
end
if monthly > 0 and m_tok + need > monthly then
  return refuse('insufficient_quota', 'monthly_tokens', tonumber(ARGV[9]) - now)
end
if spend > 0 and m_usd + cost > spend then
  return refuse('insufficient_quota', 'spend_budget_usd', tonumber(ARGV[9]) - now)
end

if rpm > 0 and w_req + 1 > rpm then
  return refuse('rate_limit_exceeded', 'rpm', reset)
end
if tpm > 0 and w_tok + need > tpm then
  return refuse('rate_limit_exceeded', 'tpm', reset)
end
if max_conc > 0 and redis.call('ZCARD', KEYS[3]) >= max_conc then
  return refuse('rate_limit_exceeded', 'max_concurrent', 1000)
end

-- Everything passed: count the request and hold its tokens, spend and slot.
redis.call('HINCRBY', KEYS[4], 'req', 1)
redis.call('HINCRBY', KEYS[4], 'tok', need)
redis.call('PEXPIREAT', KEYS[4], minute_end + 60000)
redis.call('HINCRBY', KEYS[5], 'tok', need)
redis.call('PEXPIREAT', KEYS[5], tonumber(ARGV[8]) + 86400000)
redis.call('HINCRBY', KEYS[6], 'tok', need)
local usd = string.format('%.17g', cost)
if cost > 0 then
  redis.call('HINCRBYFLOAT', KEYS[6], 'usd', usd)
end
redis.call('PEXPIREAT', KEYS[6], tonumber(ARGV[9]) + 86400000)

local lease_until = now + tonumber(ARGV[6])
redis.call('ZADD', KEYS[3], lease_until, job)
if redis.call('PTTL', KEYS[3]) < lease_until - now + 60000 then
  redis.call('PEXPIREAT', KEYS[3], lease_until + 60000)
end

redis.call('HSET', KEYS[7], 'model', model, 'need', need, 'in_price', string.format('%.17g', in_price),
  'out_price', string.format('%.17g', out_price), 'cost', usd, 'win', KEYS[4], 'day', KEYS[5],
  'month', KEYS[6], 'at', now)
redis.call('PEXPIRE', KEYS[7], tonumber(ARGV[10]))

return answer(1, 'ok', '', 0, w_req + 1, w_tok + need, need, usd, lease_until, 0)

-- llmq reserve: check every limit of one request (its tenant's and its API key's) and, if all
-- pass, reserve it. Atomic: one call per admission.
--
-- KEYS[1] tenant hash           KEYS[2] price table hash     KEYS[3] in-flight zset
-- KEYS[4] rate hash (GCRA)      KEYS[5] day quota hash       KEYS[6] month quota hash
-- KEYS[7] reservation hash (this job)                        KEYS[8] tenant's keys hash
-- KEYS[9..12] the key's in-flight zset, rate hash, day and month quota hashes
-- ARGV[1] model  ARGV[2] prompt tokens  ARGV[3] max tokens  ARGV[4] job id
-- ARGV[5] now (unix ms)  ARGV[6] lease (ms)  ARGV[7] key id ('' = none)  ARGV[8] day end (ms)
-- ARGV[9] month end (ms)  ARGV[10] reservation ttl (ms)  ARGV[11] end user ('' = none)
-- A lease of 0 takes no concurrency slot (an answer from the response cache): the slot is
-- neither checked nor held; everything else is.
--
-- Rates (RPM, TPM) are GCRA: a limit L per minute is a bucket of L that refills L/60000 per
-- ms, kept as one "theoretical arrival time" (tat): taking c units moves it c * 60000/L ms
-- later, and is allowed while it stays within one minute of now. No fixed window, so no
-- burst of 2 L across a minute boundary.
-- ARGV[12] (Cluster only) the model's price JSON, or '' for none; in a Cluster KEYS[2]
-- is KEYS[1], so the script stays in one slot; '-' (or absent) reads the price table
-- ARGV[13] lease end E (unix ms, 0 = no lease)  ARGV[14] requests wished for the lease
-- ARGV[15] end of the lease's concurrency slots (unix ms)  ARGV[16] when a lease's day,
-- month and spend left over is given back if its replica did not (unix ms)
-- KEYS[13] (with a lease only) the tenant's budget leases (zset: record key -> ARGV[16])
-- ARGV[17] '1': a lease only, asked for ahead of need: ARGV[4] names the lease, not a job;
-- the request is checked as any (so no lease is granted where it would be refused) but
-- nothing of its own is counted or held: no unit, tokens, slot or record
local lease_only = ARGV[17] == '1'
-- A lease (docs/routing.md, "Leased budget") is granted with an admitted request when every
-- scope is far from its limits: `g` more requests of this request's size, charged as
-- arriving at E (tat = max(tat, E) + g * per), never given back, `g` concurrency slots
-- `<job>#<i>` held until ARGV[15], and, when a scope has a daily, monthly or spend limit,
-- `g` requests' tokens and spend added to the day and month counters, recorded in
-- KEYS[7] .. '#L' (what is left is given back when the lease ends: lease_end.lua, or the
-- reaper below). At most a quarter of each limit's headroom, so leases shrink to nothing
-- near a limit.
--
-- Returns one string (cheaper to parse than an array), fields joined by '|':
--   allowed 0|1, reason, limit, retry_after_ms, limit_req, remaining_req, reset_req_ms,
--   limit_tok, remaining_tok, reset_tok_ms, reserved_tokens, reserved_usd, lease_until_ms,
--   duplicate 0|1, lease requests granted, lease slots, the tenant's and the key's ms per
--   token (TPM; 0 = none), budget lease 0|1, input and output price per 1M tokens;
--   a limit of -1 = unlimited.

local MINUTE = 60000
local now = tonumber(ARGV[5])
local key_id = ARGV[7]

local t = redis.call('HMGET', KEYS[1], 'status', 'models', 'rpm', 'tpm', 'max_concurrent',
  'daily_tokens', 'monthly_tokens', 'spend_budget_usd')
if not t[1] then
  return '0|unknown_tenant||0|-1|-1|0|-1|-1|0|0|0|0|0'
end

-- One scope's limits: the tenant's, then (when the request came with a key) the key's.
local function scope(rpm, tpm, conc, daily, monthly, spend, inflight, rate, day, month, tag)
  local s = {rpm = tonumber(rpm) or 0, tpm = tonumber(tpm) or 0, conc = tonumber(conc) or 0,
    daily = tonumber(daily) or 0, monthly = tonumber(monthly) or 0,
    spend = tonumber(spend) or 0, inflight = inflight, rate = rate, day = day, month = month,
    tag = tag, tat_req = now, tat_tok = now, new_req = now, new_tok = now}
  if s.rpm > 0 or s.tpm > 0 then  -- without a rate limit the arrival times are not used
    local r = redis.call('HMGET', rate, 'req', 'tok')
    s.tat_req = math.max(tonumber(r[1]) or now, now)
    s.tat_tok = math.max(tonumber(r[2]) or now, now)
  end
  return s
end

local scopes = {scope(t[3], t[4], t[5], t[6], t[7], t[8], KEYS[3], KEYS[4], KEYS[5], KEYS[6], '')}

-- Headers show the tighter of the tenant's and the key's rate, after this request.
local function headers(took_req, took_tok)
  local best = {-1, -1, 0, -1, -1, 0}
  for _, s in ipairs(scopes) do
    if s.rpm > 0 then
      local tat = s.tat_req
      if took_req then tat = s.new_req end
      local left = math.max(math.floor(s.rpm - (tat - now) * s.rpm / MINUTE + 1e-9), 0)
      if best[1] < 0 or left < best[2] then best[1], best[2], best[3] = s.rpm, left, tat - now end
    end
    if s.tpm > 0 then
      local tat = s.tat_tok
      if took_tok then tat = s.new_tok end
      local left = math.max(math.floor(s.tpm - (tat - now) * s.tpm / MINUTE + 1e-9), 0)
      if best[4] < 0 or left < best[5] then best[4], best[5], best[6] = s.tpm, left, tat - now end
    end
  end
  return best
end

local function answer(allowed, reason, limit, retry_ms, need, usd, lease_until, dup, took)
  local h = headers(took, took)
  return string.format('%d|%s|%s|%d|%d|%d|%d|%d|%d|%d|%d|%s|%d|%d', allowed, reason, limit,
    math.ceil(retry_ms), h[1], h[2], math.ceil(h[3]), h[4], h[5], math.ceil(h[6]), need, usd,
    lease_until, dup)
end

-- How many more requests of `need` tokens a lease ending at E may take (0: none): a
-- quarter of the headroom left at E, and no more than refills in half the lease's time
-- (so units a replica leaves unspent delay others by at most that).
local function lease_size(wish, E, need, cost)
  local g = wish
  local half = (E - now) / 2
  for _, s in ipairs(scopes) do
    if (s.daily > 0 or s.monthly > 0) and need <= 0 then return 0 end
    if s.daily > 0 then g = math.min(g, math.floor((s.daily - s.d - need) / need / 4)) end
    if s.monthly > 0 then g = math.min(g, math.floor((s.monthly - s.mtok - need) / need / 4)) end
    if s.spend > 0 and cost > 0 then
      g = math.min(g, math.floor((s.spend - s.musd - cost) / cost / 4))
    end
    if s.rpm > 0 then
      local room = math.min((now + MINUTE - math.max(s.new_req, E)) / 4, half)
      g = math.min(g, math.floor(room * s.rpm / MINUTE))
    end
    if s.tpm > 0 and need > 0 then
      local room = math.min((now + MINUTE - math.max(s.new_tok, E)) / 4, half)
      g = math.min(g, math.floor(room * s.tpm / MINUTE / need))
    end
    if s.conc > 0 then g = math.min(g, math.floor((s.conc - s.held - 1) / 4)) end
  end
  return math.max(g, 0)
end

local function refuse(reason, limit, retry_ms)
  return answer(0, reason, limit, retry_ms, 0, '0', 0, 0, false)
end

if t[1] ~= 'active' then
  return refuse('suspended', '', 0)
end

local model = ARGV[1]
local function allows(models_json)
  if not models_json or models_json == '' or models_json == '[]' then return true end
  local list = models_json
  if type(list) == 'string' then list = cjson.decode(list) end
  if type(list) ~= 'table' or #list == 0 then return true end
  for _, m in ipairs(list) do
    if m == model then return true end
  end
  return false
end
if not allows(t[2]) then return refuse('model_not_allowed', '', 0) end

-- A key record (msgspec's encoding of `ApiKey`, fields in their declared order) with this
-- in it has no expiry, models or limits of its own: no need to decode it. Outside a JSON
-- string only (a quote inside one is escaped), so only the record's own fields can match.
local PLAIN_KEY = '"expires_at":0.0,"models":[],"rpm":0,"tpm":0,"max_concurrent":0,"daily_tokens":0,"monthly_tokens":0,"spend_budget_usd":0.0,'
if key_id ~= '' then
  local raw = redis.call('HGET', KEYS[8], key_id)
  if not raw then return refuse('invalid_api_key', '', 0) end  -- revoked since it was cached
  if string.find(raw, PLAIN_KEY, 1, true) then
    -- No expiry, models or limits of its own: what decoding the record would say.
    scopes[2] = scope(0, 0, 0, 0, 0, 0, KEYS[9], KEYS[10], KEYS[11], KEYS[12], 'key_')
  else
    local k = cjson.decode(raw)
    local expires = tonumber(k['expires_at']) or 0
    if expires > 0 and now >= expires * 1000 then return refuse('invalid_api_key', '', 0) end
    if not allows(k['models']) then return refuse('model_not_allowed', 'key', 0) end
    scopes[2] = scope(k['rpm'], k['tpm'], k['max_concurrent'], k['daily_tokens'],
      k['monthly_tokens'], k['spend_budget_usd'], KEYS[9], KEYS[10], KEYS[11], KEYS[12], 'key_')
  end
end

-- Reap slots whose lease ran out: a crashed api can never hold one forever. A scope with a
-- concurrency limit reaps when its count reaches the limit (below it, a stale slot changes
-- no answer: see the check below), so a request usually does not.
local function reap(s)
  return redis.call('ZREMRANGEBYSCORE', s.inflight, '-inf', now)
end
for _, s in ipairs(scopes) do
  if s.conc <= 0 then reap(s) end
end

local job = ARGV[4]
if redis.call('EXISTS', KEYS[7]) == 1 then
  -- The same job reserved before (a retried call): answer yes, count nothing again.
  local r = redis.call('HMGET', KEYS[7], 'need', 'cost')
  local lease_until = tonumber(redis.call('ZSCORE', KEYS[3], job)) or 0
  if lease_until <= now then lease_until = 0 end  -- ran out: a reap would have removed it
  return answer(1, 'ok', '', 0, tonumber(r[1]) or 0, r[2] or '0', lease_until, 1, false)
end

local prompt = tonumber(ARGV[2])
local need = prompt + tonumber(ARGV[3])
local in_price, out_price, cin_price, cw_price = 0, 0, 0, 0
local p = ARGV[12]
if not p or p == '-' then p = redis.call('HGET', KEYS[2], model) elseif p == '' then p = nil end
if p then
  local price = cjson.decode(p)
  in_price = tonumber(price['input_per_1m']) or 0
  out_price = tonumber(price['output_per_1m']) or 0
  cin_price = tonumber(price['cached_input_per_1m']) or in_price
  cw_price = tonumber(price['cache_write_per_1m']) or in_price
end
local cost = (prompt * in_price + tonumber(ARGV[3]) * out_price) / 1e6

-- Budgets first: when one is spent, retrying within the minute will not help.
for _, s in ipairs(scopes) do
  if s.daily > 0 then
    local d = tonumber(redis.call('HGET', s.day, 'tok')) or 0
    s.d = d
    if d + need > s.daily then
      return refuse('insufficient_quota', s.tag .. 'daily_tokens', tonumber(ARGV[8]) - now)
    end
  end
  if s.monthly > 0 or s.spend > 0 then
    local m = redis.call('HMGET', s.month, 'tok', 'usd')
    s.mtok, s.musd = tonumber(m[1]) or 0, tonumber(m[2]) or 0
    if s.monthly > 0 and (tonumber(m[1]) or 0) + need > s.monthly then
      return refuse('insufficient_quota', s.tag .. 'monthly_tokens', tonumber(ARGV[9]) - now)
    end
    if s.spend > 0 and (tonumber(m[2]) or 0) + cost > s.spend then
      return refuse('insufficient_quota', s.tag .. 'spend_budget_usd', tonumber(ARGV[9]) - now)
    end
  end
end

for _, s in ipairs(scopes) do
  if s.rpm > 0 then
    s.new_req = s.tat_req + MINUTE / s.rpm
    if s.new_req - now > MINUTE + 1e-6 then
      return refuse('rate_limit_exceeded', s.tag .. 'rpm', s.new_req - MINUTE - now)
    end
  end
  if s.tpm > 0 then
    s.new_tok = s.tat_tok + need * MINUTE / s.tpm
    if s.new_tok - now > MINUTE + 1e-6 then
      -- A request larger than the whole TPM never fits: say when the bucket is full again.
      local wait = s.new_tok - MINUTE - now
      if need > s.tpm then wait = s.tat_tok - now + 1000 end
      return refuse('rate_limit_exceeded', s.tag .. 'tpm', wait)
    end
  end
end
local slot = tonumber(ARGV[6]) > 0
for _, s in ipairs(scopes) do
  if s.conc > 0 and slot then
    -- Every live slot is in the count, and maybe stale ones: below the limit it is below
    -- with or without them; at it, reap them and count what is left.
    local held = redis.call('ZCARD', s.inflight)
    if held >= s.conc then held = held - reap(s) end
    if held >= s.conc then
      return refuse('rate_limit_exceeded', s.tag .. 'max_concurrent', 1000)
    end
    s.held = held
  end
end

local E = tonumber(ARGV[13] or '0') or 0
local grant, slots, budget = 0, 0, 0
-- A lease never crosses the end of the UTC day: its jobs book on the day it charged.
if E > now and E < tonumber(ARGV[8]) and slot then
  grant = lease_size(tonumber(ARGV[14]) or 0, E, need, cost)
end
if lease_only and grant == 0 then
  return refuse('no_lease', '', 0)
end
if grant > 0 then
  for _, s in ipairs(scopes) do
    if lease_only then s.new_req, s.new_tok = s.tat_req, s.tat_tok end  -- no unit of its own
    if s.rpm > 0 then s.new_req = math.max(s.new_req, E) + grant * MINUTE / s.rpm end
    if s.tpm > 0 then s.new_tok = math.max(s.new_tok, E) + grant * need * MINUTE / s.tpm end
    if s.conc > 0 then slots = grant end
    if s.daily > 0 or s.monthly > 0 or s.spend > 0 then budget = 1 end
  end
end
-- A budget lease adds its requests' tokens and spend to the counters with this request's.
local held_tok, held_cost = need, cost
local own = 1
if lease_only then own = 0 end
if budget == 1 or lease_only then
  held_tok, held_cost = need * (grant * budget + own), cost * (grant * budget + own)
end

-- Give back what budget leases whose replica never ended them left over (a few per call).
if KEYS[13] then
  for _, rec in ipairs(redis.call('ZRANGEBYSCORE', KEYS[13], '-inf', now, 'LIMIT', 0, 4)) do
    local l = redis.call('HMGET', rec, 'closed', 'tok', 'usd', 'btok', 'busd', 'day', 'month',
      'kday', 'kmonth')
    if l[2] and l[1] ~= '1' then
      local tok = (tonumber(l[4]) or 0) - tonumber(l[2])
      local usd_back = (tonumber(l[5]) or 0) - tonumber(l[3])
      for _, c in ipairs({l[6], l[7], l[8], l[9]}) do
        if c ~= '' and redis.call('EXISTS', c) == 1 then
          redis.call('HINCRBY', c, 'tok', tok)
          if usd_back ~= 0 and (c == l[7] or c == l[9]) then
            redis.call('HINCRBYFLOAT', c, 'usd', string.format('%.17g', usd_back))
          end
        end
      end
    end
    redis.call('DEL', rec)
    redis.call('ZREM', KEYS[13], rec)
  end
end

-- Everything passed: count the request and hold its tokens, spend and slot in each scope.
local function g17(x) return string.format('%.17g', x) end
local usd = g17(cost)
local lease_until = now + tonumber(ARGV[6])
local in_s = g17(in_price)
local cin_s, cw_s = in_s, in_s  -- the usual case: no price of their own, the input price
if cin_price ~= in_price then cin_s = g17(cin_price) end
if cw_price ~= in_price then cw_s = g17(cw_price) end
local rec = {'model', model, 'need', need, 'in_price', in_s, 'out_price', g17(out_price),
  'cin_price', cin_s, 'cw_price', cw_s, 'cost', usd, 'at', now, 'key', key_id,
  'user', ARGV[11]}
-- A day or month hash gets its expiry in the call that creates it, not on every request
-- (its day's or month's end is in its name: the expiry never changes). Its 'tok' is
-- always there, so a count of exactly `need` after this one says it is new (or was at 0:
-- setting the same expiry again is harmless).
local day_expiry = tonumber(ARGV[8]) + 86400000
local month_expiry = tonumber(ARGV[9]) + 86400000
-- Where a scope's reservation is held, for the release: five fields of the record.
local function held_in(s, tok_t, rate, tokT, day, month, inflight)
  local n = #rec
  rec[n + 1], rec[n + 2] = rate, s.rate
  rec[n + 3], rec[n + 4] = tokT, tok_t == 0 and '0' or g17(tok_t)
  rec[n + 5], rec[n + 6] = day, s.day
  rec[n + 7], rec[n + 8] = month, s.month
  rec[n + 9], rec[n + 10] = inflight, s.inflight
end
for i, s in ipairs(scopes) do
  local tat = now
  local tok_t = 0
  if s.rpm > 0 and s.tpm > 0 then
    tok_t = MINUTE / s.tpm
    redis.call('HSET', s.rate, 'req', g17(s.new_req), 'tok', g17(s.new_tok))
    tat = math.max(tat, s.new_req, s.new_tok)
  elseif s.rpm > 0 then
    redis.call('HSET', s.rate, 'req', g17(s.new_req))
    tat = math.max(tat, s.new_req)
  elseif s.tpm > 0 then
    tok_t = MINUTE / s.tpm
    redis.call('HSET', s.rate, 'tok', g17(s.new_tok))
    tat = math.max(tat, s.new_tok)
  end
  if tat > now then
    -- Past its tat a bucket is full: the hash may go, plus a minute for late reconciling.
    redis.call('PEXPIREAT', s.rate, math.ceil(math.max(tat, s.tat_req, s.tat_tok)) + MINUTE)
  end
  if redis.call('HINCRBY', s.day, 'tok', held_tok) == held_tok then
    redis.call('PEXPIREAT', s.day, day_expiry)
  end
  local month_new = redis.call('HINCRBY', s.month, 'tok', held_tok) == held_tok
  if held_cost > 0 then
    redis.call('HINCRBYFLOAT', s.month, 'usd', g17(held_cost))
  end
  if month_new then redis.call('PEXPIREAT', s.month, month_expiry) end
  if slot then
    local last = lease_until
    if lease_only then last = 0 else redis.call('ZADD', s.inflight, lease_until, job) end
    if slots > 0 then
      last = math.max(last, tonumber(ARGV[15]))
      -- one ZADD per 1,000 of them (a call per member was most of a grant's calls)
      for first = 1, slots, 1000 do
        local members = {}
        for n = first, math.min(slots, first + 999) do
          members[#members + 1], members[#members + 2] = ARGV[15], job .. '#' .. n
        end
        redis.call('ZADD', s.inflight, unpack(members))
      end
    end
    if redis.call('PTTL', s.inflight) < last - now + 60000 then
      redis.call('PEXPIREAT', s.inflight, last + 60000)
    end
  end
  -- field names: tenant scope unprefixed, key scope with 'k'
  if i == 1 then
    held_in(s, tok_t, 'rate', 'tokT', 'day', 'month', 'in')
  else
    held_in(s, tok_t, 'krate', 'ktokT', 'kday', 'kmonth', 'kin')
  end
end

if not lease_only then
  redis.call('HSET', KEYS[7], unpack(rec))
  redis.call('PEXPIRE', KEYS[7], tonumber(ARGV[10]))
end

if budget == 1 then
  local lease = KEYS[7] .. '#L'
  local l = {'tok', need * grant, 'usd', g17(cost * grant), 'day', scopes[1].day,
    'month', scopes[1].month, 'kday', '', 'kmonth', ''}
  if scopes[2] then l[10], l[12] = scopes[2].day, scopes[2].month end
  redis.call('HSET', lease, unpack(l))
  redis.call('PEXPIREAT', lease, tonumber(ARGV[16]) + 86400000)
  redis.call('ZADD', KEYS[13], ARGV[16], lease)
  redis.call('PEXPIREAT', KEYS[13], tonumber(ARGV[16]) + 86400000)
end

local tokT = {'0', '0'}
for i, s in ipairs(scopes) do
  if s.tpm > 0 then tokT[i] = g17(MINUTE / s.tpm) end
end
return answer(1, 'ok', '', 0, need, usd, lease_until, 0, true) .. '|' .. grant .. '|' .. slots
  .. '|' .. tokT[1] .. '|' .. tokT[2] .. '|' .. budget .. '|' .. in_s .. '|' .. g17(out_price)

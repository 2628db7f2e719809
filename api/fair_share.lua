-- Fair share of one model's queue, shared by every api replica (api/fair_ledger.py).
-- KEYS: q (zset "<tenant>\t<rank>\t<ticket>" -> expiry ms), n (hash: tenant -> its queued
-- tickets, "\t<rank>" -> the class's), w (zset "<rank>\t<tenant>" -> lease expiry ms).
-- ARGV[1] = op: take | give | withdraw.
-- take     ARGV: tenant, rank, ticket, hold_ms, lease_ms, share, more -> 1 taken, 0 wait
-- give     ARGV: tenant, rank, ticket                                 -> 1 given back
-- renew    ARGV: (tenant, rank, ticket, hold_ms)...  the live tickets of one replica -> 0
-- withdraw ARGV: tenant, rank                                         -> 0
local q, n, w = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function count(field)
  return tonumber(redis.call('HGET', n, field) or '0')
end

local function drop(field)
  if redis.call('HINCRBY', n, field, -1) <= 0 then redis.call('HDEL', n, field) end
end

local function forget(member)
  local tenant, rank = string.match(member, '^(.-)\t(%d+)\t')
  drop(tenant)
  drop('\t' .. rank)
end

if op == 'give' then
  local member = ARGV[2] .. '\t' .. ARGV[3] .. '\t' .. ARGV[4]
  if redis.call('ZREM', q, member) == 1 then forget(member); return 1 end
  return 0
end
if op == 'renew' then
  local longest = 0
  for i = 2, #ARGV, 4 do
    local member = ARGV[i] .. '\t' .. ARGV[i + 1] .. '\t' .. ARGV[i + 2]
    local hold = tonumber(ARGV[i + 3])
    if redis.call('ZSCORE', q, member) then redis.call('ZADD', q, 'XX', now + hold, member) end
    if hold > longest then longest = hold end
  end
  for _, key in ipairs({q, n}) do
    if redis.call('PTTL', key) < longest then redis.call('PEXPIRE', key, longest) end
  end
  return 0
end
if op == 'withdraw' then
  redis.call('ZREM', w, ARGV[3] .. '\t' .. ARGV[2])
  return 0
end

local tenant, rank, ticket = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local hold, lease, share, more = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local gone = redis.call('ZRANGEBYSCORE', q, '-inf', now)
for _, member in ipairs(gone) do forget(member) end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', q, '-inf', now) end
redis.call('ZREMRANGEBYSCORE', w, '-inf', now)

local line = rank .. '\t' .. tenant
-- within its tenant's share, and no higher class queued or waiting to queue
local free = count(tenant) < share
for r = rank + 1, 9 do
  if free and count('\t' .. r) > 0 then free = false end
end
if free then
  for _, other in ipairs(redis.call('ZRANGE', w, 0, -1)) do
    if tonumber(string.match(other, '^(%d+)\t')) > rank then
      free = false
      break
    end
  end
end
if free then
  redis.call('ZADD', q, now + hold, tenant .. '\t' .. rank .. '\t' .. ticket)
  redis.call('HINCRBY', n, tenant, 1)
  redis.call('HINCRBY', n, '\t' .. rank, 1)
  if more == '1' then redis.call('ZADD', w, now + lease, line) else redis.call('ZREM', w, line) end
else
  redis.call('ZADD', w, now + lease, line)
end
local ttl = hold + lease
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
if free then return 1 end
return 0

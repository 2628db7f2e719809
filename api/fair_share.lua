-- Fair share of one model's queue, shared by every api replica (api/fair_ledger.py).
-- KEYS: q (zset "<tenant>\t<ticket>" -> expiry ms), n (hash tenant -> queued), w (zset
-- "<rank>\t<tenant>" -> lease expiry ms). ARGV[1] = op: take | give | withdraw.
-- take  ARGV: tenant, rank, ticket, hold_ms, lease_ms, cap, more -> 1 taken, 0 wait
-- give  ARGV: tenant, ticket                                      -> 1 given back
-- withdraw ARGV: tenant, rank                                     -> 0
local q, n, w = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function forget(member)
  local tenant = string.match(member, '^(.-)\t')
  if redis.call('HINCRBY', n, tenant, -1) <= 0 then redis.call('HDEL', n, tenant) end
end

if op == 'give' then
  local member = ARGV[2] .. '\t' .. ARGV[3]
  if redis.call('ZREM', q, member) == 1 then forget(member); return 1 end
  return 0
end
if op == 'withdraw' then
  redis.call('ZREM', w, ARGV[3] .. '\t' .. ARGV[2])
  return 0
end

local tenant, rank, ticket = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local hold, lease, cap, more = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local gone = redis.call('ZRANGEBYSCORE', q, '-inf', now)
for _, member in ipairs(gone) do forget(member) end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', q, '-inf', now) end
redis.call('ZREMRANGEBYSCORE', w, '-inf', now)

local line = rank .. '\t' .. tenant
local mine = tonumber(redis.call('HGET', n, tenant) or '0')
local free = redis.call('ZCARD', q) < cap
if free then
  -- a waiting line of a higher class, or of the same class with fewer queued, goes first
  for _, other in ipairs(redis.call('ZRANGE', w, 0, -1)) do
    if other ~= line then
      local r, who = string.match(other, '^(%d+)\t(.*)$')
      r = tonumber(r)
      if r > rank or (r == rank and who ~= tenant
          and tonumber(redis.call('HGET', n, who) or '0') < mine) then
        free = false
        break
      end
    end
  end
end
local ttl = hold + lease
if free then
  redis.call('ZADD', q, now + hold, tenant .. '\t' .. ticket)
  redis.call('HINCRBY', n, tenant, 1)
  if more == '1' then redis.call('ZADD', w, now + lease, line) else redis.call('ZREM', w, line) end
else
  redis.call('ZADD', w, now + lease, line)
end
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
if free then return 1 end
return 0

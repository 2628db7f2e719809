-- llmq lease end: give back what an ended budget lease holds beyond what its replica spent
-- (docs/routing.md, "Leased budget"). Once: the record is marked closed; a record the
-- reaper in quota.lua gave back already (gone) is left alone.
--
-- KEYS[1] the lease record (`<reservation key of its job>#L`)
-- ARGV[1] tokens spent  ARGV[2] USD spent
--
-- Returns 1 when something was given back, 0 when the lease was closed or reaped before.

local l = redis.call('HMGET', KEYS[1], 'closed', 'tok', 'usd', 'day', 'month', 'kday', 'kmonth')
if not l[2] or l[1] == '1' then return 0 end
redis.call('HSET', KEYS[1], 'closed', '1')
local tok = tonumber(ARGV[1]) - tonumber(l[2])
local usd = tonumber(ARGV[2]) - tonumber(l[3])
if tok > 0 then tok = 0 end
if usd > 0 then usd = 0 end
for i, c in ipairs({l[4], l[5], l[6], l[7]}) do
  if c ~= '' and redis.call('EXISTS', c) == 1 then
    if tok ~= 0 then redis.call('HINCRBY', c, 'tok', tok) end
    if usd ~= 0 and (i == 2 or i == 4) then
      redis.call('HINCRBYFLOAT', c, 'usd', string.format('%.17g', usd))
    end
  end
end
return 1

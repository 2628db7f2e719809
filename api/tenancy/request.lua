-- llmq request: count one call that holds no tokens (a list call) against the RPM of its
-- tenant and of its API key, GCRA as in quota.lua; refuse when either is spent.
--
-- KEYS[1] tenant hash  KEYS[2] tenant rate hash  KEYS[3] tenant's keys hash
-- KEYS[4] the key's rate hash
-- ARGV[1] now (unix ms)  ARGV[2] key id ('' = none)
--
-- Returns the milliseconds to wait: 0 = counted; -1 = unknown tenant or key.

local MINUTE = 60000
local now = tonumber(ARGV[1])
local key_id = ARGV[2]

local t = redis.call('HMGET', KEYS[1], 'status', 'rpm')
if not t[1] then return -1 end
local scopes = {{rpm = tonumber(t[2]) or 0, rate = KEYS[2]}}
if key_id ~= '' then
  local raw = redis.call('HGET', KEYS[3], key_id)
  if not raw then return -1 end
  local k = cjson.decode(raw)
  scopes[2] = {rpm = tonumber(k['rpm']) or 0, rate = KEYS[4]}
end
for _, s in ipairs(scopes) do
  if s.rpm > 0 then
    local tat = math.max(tonumber(redis.call('HGET', s.rate, 'req')) or now, now)
    s.new = tat + MINUTE / s.rpm
    if s.new - now > MINUTE + 1e-6 then return math.max(math.ceil(s.new - MINUTE - now), 1) end
  end
end
for _, s in ipairs(scopes) do
  if s.rpm > 0 then
    redis.call('HSET', s.rate, 'req', string.format('%.17g', s.new))
    if redis.call('PTTL', s.rate) < s.new - now + MINUTE then
      redis.call('PEXPIREAT', s.rate, math.ceil(s.new) + MINUTE)
    end
  end
end
return 0

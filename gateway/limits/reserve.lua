-- Admit one request of one API key, atomically, or say which limit refuses it and for how long.
-- Time is Redis' own clock (TIME), so replicas with skewed clocks still share one exact window.
--
-- KEYS[1] sliding window: sorted set, one member "<request id>:<tokens>" per admitted request, score = ms
-- KEYS[2] tokens held by the window's members (integer)
-- KEYS[3] budget of the current period: hash {spent, reserved} in nano-USD
-- KEYS[4] revocation marker (exists = revoked)
-- ARGV: window_ms, rpm (0 = none), tpm (0 = none), tokens, budget_nano (-1 = none), cost_nano, request_id,
--       budget_ttl_s (0 = no expiry)
-- Reply: {1, budget_left_nano (-1 = none)} admitted | {0, limit, retry_after_ms} refused | {-1} revoked

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {-1}
end
local window = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
local ttl = tonumber(ARGV[8])
local windowed = rpm > 0 or tpm > 0

local function member_tokens(m)
  return tonumber(string.match(m, ':(%-?%d+)$'))
end

if windowed then
  -- drop what left the window, and the tokens it held
  local cutoff = now - window
  local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  if #expired > 0 then
    local freed = 0
    for _, m in ipairs(expired) do freed = freed + member_tokens(m) end
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
    if freed ~= 0 then redis.call('DECRBY', KEYS[2], freed) end
  end
  if rpm > 0 and redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, 'rpm', tonumber(oldest[2]) + window - now}
  end
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tpm > 0 and used + tokens > tpm then
    if tokens > tpm then
      return {0, 'tpm_request', window}
    end
    -- oldest first: when will enough tokens have left the window?
    local need = used + tokens - tpm
    local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      need = need - member_tokens(entries[i])
      if need <= 0 then
        return {0, 'tpm', tonumber(entries[i + 1]) + window - now}
      end
    end
    return {0, 'tpm', window}
  end
end

local left = -1
if budget >= 0 then
  local held = redis.call('HMGET', KEYS[3], 'spent', 'reserved')
  left = budget - tonumber(held[1] or '0') - tonumber(held[2] or '0')
  if left <= 0 then
    return {0, 'budget', 0}
  end
  redis.call('HINCRBY', KEYS[3], 'reserved', ARGV[6])
  if ttl > 0 then redis.call('EXPIRE', KEYS[3], ttl) end
end

if windowed then
  redis.call('ZADD', KEYS[1], now, ARGV[7] .. ':' .. ARGV[4])
  redis.call('INCRBY', KEYS[2], tokens)
  redis.call('PEXPIRE', KEYS[1], window * 2)
  redis.call('PEXPIRE', KEYS[2], window * 2)
end
return {1, left}

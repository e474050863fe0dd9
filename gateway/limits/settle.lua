-- Replace one request's reserved estimates by what it really used (see reserve.lua for the keys).
--
-- KEYS[1] sliding window, KEYS[2] window tokens, KEYS[3] budget hash of the reservation's period
-- ARGV: reserved member ("<request id>:<estimated tokens>"), real tokens, minus the reserved cost_nano,
--       real cost_nano, has budget ("1"/"0")   (money stays in strings: Lua would print big numbers as 1e+15)
-- A member that already left the window, or a period that already expired, is left alone.

local real = tonumber(ARGV[2])
local reserved = tonumber(string.match(ARGV[1], ':(%-?%d+)$'))
if real ~= reserved then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if score then
    local rid = string.match(ARGV[1], '^(.*):%-?%d+$')
    redis.call('ZREM', KEYS[1], ARGV[1])
    redis.call('ZADD', KEYS[1], score, rid .. ':' .. ARGV[2])
    redis.call('INCRBY', KEYS[2], real - reserved)
  end
end
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HINCRBY', KEYS[3], 'reserved', ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'spent', ARGV[4])
end
return 1

-- A key's usage now, read-only: {requests in window, tokens in window, spent_nano, reserved_nano}.
-- KEYS[1] sliding window, KEYS[2] budget hash; ARGV[1] window_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf')
local tokens = 0
for _, m in ipairs(live) do tokens = tokens + tonumber(string.match(m, ':(%-?%d+)$')) end
local held = redis.call('HMGET', KEYS[2], 'spent', 'reserved')
return {#live, tokens, tonumber(held[1] or '0'), tonumber(held[2] or '0')}

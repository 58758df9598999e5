-- snapshot.lua: a key's x-ratelimit values, charging nothing (LimiterStore.snapshot).
-- Requires gcra.lua.
--
-- KEYS  1 requests TAT   2 tokens TAT
-- ARGV  1,2 requests rate, burst   3,4 tokens rate, burst (rate 0: not configured)
-- Returns {corrupt 1|0, requests remaining, requests reset µs, tokens remaining, tokens reset µs}

local now = redisNow()
local values = { 0 }
for i = 1, 2 do
  local bucket = bucketAt(1 + (i - 1) * 2)
  local d = 0
  if bucket ~= nil then d = readDelta(KEYS[i], bucket, now) end
  local remaining, reset = headerValues(bucket, d)
  values[#values + 1] = remaining
  values[#values + 1] = reset
end
values[1] = corrupt
return values

-- snapshot.lua: a key's x-ratelimit values, charging nothing (LimiterStore.snapshot).
-- Requires gcra.lua. Reads only the two fields it needs.
--
-- KEYS  1 the key's state hash
-- ARGV  1,2 requests rate, burst   3,4 tokens rate, burst (rate 0: not configured)
-- Returns {corrupt 1|0, requests remaining, requests reset µs, tokens remaining, tokens reset µs}

local now = redisNow()
local raw = redis.pcall('HMGET', KEYS[1], 'r', 't')
local fields = {}
if type(raw) == 'table' and raw.err then
  corrupt = 1
else
  fields = { r = raw[1] or nil, t = raw[2] or nil }  -- HMGET answers false for a missing field
end
local values = { 0 }
for i = 1, 2 do
  local bucket = bucketAt(1 + (i - 1) * 2)
  local d = 0
  if bucket ~= nil then d = stateDelta(fields, BUCKET_FIELDS[i], bucket, now) end
  local remaining, reset = headerValues(bucket, d)
  values[#values + 1] = remaining
  values[#values + 1] = reset
end
values[1] = corrupt
return values

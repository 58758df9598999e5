-- settle.lua: settles one reservation exactly once (LimiterStore.settle). Requires gcra.lua.
--
-- KEYS  1 requests TAT   2 tokens TAT   3 input tokens TAT   4 output tokens TAT
--       5 concurrency leases   6 quotas   7 the reservation (string written by admit.lua)
--       8 the day's usage (hash: <model>:prompt, <model>:completion, <model>:requests)
--       9 the usage stream
-- ARGV  1 request id
--       2,3 requests rate, burst   4,5 tokens   6,7 input tokens   8,9 output tokens (rate 0: none)
--       10 actual prompt tokens   11 actual completion tokens   12 model
--       13 usage TTL ms   14 usage stream max length (approximate trimming)
-- Returns {settled 1|0, corrupt 1|0, requests remaining, requests reset µs, tokens remaining,
--          tokens reset µs}; settled 0 (nothing changed) when there is no reservation: already
--          settled, expired, or the database was flushed.

local requestID = ARGV[1]
local now, seconds = redisNow()
local reservationKey = KEYS[7]

local buckets = {}
for i = 1, 4 do
  buckets[i] = bucketAt(2 + (i - 1) * 2)
end

-- The deltas this call already read or wrote, by bucket index (not read again for the result).
local known = {}

local function result(settled)
  local deltas = {}
  for i = 1, 2 do
    if buckets[i] == nil then
      deltas[i] = 0
    else
      deltas[i] = known[i] or readDelta(KEYS[i], buckets[i], now)
    end
  end
  local requestsRemaining, requestsReset = headerValues(buckets[1], deltas[1])
  local tokensRemaining, tokensReset = headerValues(buckets[2], deltas[2])
  return { settled, corrupt, requestsRemaining, requestsReset, tokensRemaining, tokensReset }
end

-- Taking the reservation (GETDEL) is what makes this settle the only one.
local raw = redis.pcall('GETDEL', reservationKey)
if type(raw) == 'table' then
  -- Not a string: not ours, or corrupted. Nothing can be settled from it.
  redis.call('DEL', reservationKey)
  corrupt = 1
  return result(0)
end
if not raw then
  return result(0)
end
local stored = {}
for field in string.gmatch(raw, '%S+') do stored[#stored + 1] = field end

local function storedInteger(i)
  local n = tonumber(stored[i])
  if not isInteger(n) then
    corrupt = 1
    return nil
  end
  return n
end

local actualPrompt = math.max(tonumber(ARGV[10]) or 0, 0)
local actualCompletion = math.max(tonumber(ARGV[11]) or 0, 0)
local reservedPrompt, reservedOutput = storedInteger(1), storedInteger(2)

-- Refund what was reserved but not used, or charge what was used beyond the reservation.
local function reconcile(i, reserved, actual)
  local bucket = buckets[i]
  if bucket == nil or reserved == nil or actual == reserved then return end
  local d = readDelta(KEYS[i], bucket, now)
  if actual < reserved then
    d = bucketRefund(bucket, reserved - actual, d)
  else
    d = bucketCharge(bucket, actual - reserved, d)
  end
  writeDelta(KEYS[i], d, now)
  known[i] = d
end
if reservedPrompt ~= nil and reservedOutput ~= nil then
  reconcile(2, reservedPrompt + reservedOutput, actualPrompt + actualCompletion)
  reconcile(3, reservedPrompt, actualPrompt)
  reconcile(4, reservedOutput, actualCompletion)
end

if stored[3] == '1' then
  if type(redis.pcall('ZREM', KEYS[5], requestID)) == 'table' then
    redis.call('DEL', KEYS[5])
    corrupt = 1
  end
end

-- Quotas: only the periods in which the reservation was charged, if they are still current
-- (yesterday's counter is history once the day has turned).
local quotaCost, quotaDay, quotaMonth = storedInteger(4), storedInteger(5), storedInteger(6)
if quotaCost ~= nil and quotaDay ~= nil and quotaMonth ~= nil and (quotaDay >= 0 or quotaMonth >= 0) then
  local today, thisMonth, nextDay, nextMonthDay = quotaPeriods(seconds)
  local dayUsed, monthUsed = readQuota(KEYS[6], today, thisMonth)
  local difference = actualPrompt + actualCompletion - quotaCost
  local newDayUsed, newMonthUsed, endDay = nil, nil, nextDay
  if quotaDay == today then newDayUsed = dayUsed + difference end
  if quotaMonth == thisMonth then
    newMonthUsed = monthUsed + difference
    endDay = nextMonthDay
  end
  if newDayUsed ~= nil or newMonthUsed ~= nil then
    writeQuota(KEYS[6], today, newDayUsed, thisMonth, newMonthUsed, endDay, now)
  end
end

-- Usage records. A key of the wrong type, or a field that is not an integer, is replaced rather
-- than failing the settle. The writes themselves detect both (no TYPE check per settle).
local model = ARGV[12]
local usageTTL = ARGV[13]
local function isWrongType(reply)
  return type(reply) == 'table' and reply.err ~= nil and string.find(reply.err, 'WRONGTYPE', 1, true) ~= nil
end
local function addUsage(field, amount)
  local reply = redis.pcall('HINCRBY', KEYS[8], field, int(amount))
  if type(reply) ~= 'table' then return end
  corrupt = 1
  if isWrongType(reply) then redis.call('DEL', KEYS[8]) end
  redis.call('HSET', KEYS[8], field, int(amount))
end
addUsage(model .. ':prompt', actualPrompt)
addUsage(model .. ':completion', actualCompletion)
addUsage(model .. ':requests', 1)
redis.call('PEXPIRE', KEYS[8], usageTTL)

local function appendUsage()
  return redis.pcall('XADD', KEYS[9], 'MAXLEN', '~', ARGV[14], '*',
    'request_id', requestID, 'model', model,
    'prompt_tokens', int(actualPrompt), 'completion_tokens', int(actualCompletion),
    'reserved_prompt_tokens', int(reservedPrompt or 0), 'reserved_output_tokens', int(reservedOutput or 0))
end
local appended = appendUsage()
if isWrongType(appended) then
  redis.call('DEL', KEYS[9])
  corrupt = 1
  appended = appendUsage()
end
if type(appended) == 'table' and appended.err ~= nil then return redis.error_reply(appended.err) end
redis.call('PEXPIRE', KEYS[9], usageTTL)

return result(1)

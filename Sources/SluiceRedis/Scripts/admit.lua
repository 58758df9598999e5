-- admit.lua: one admission over all of a key's limits, all-or-nothing (LimiterStore.admit).
-- Requires gcra.lua before it.
--
-- KEYS  1 requests TAT   2 tokens TAT   3 input tokens TAT   4 output tokens TAT
--       5 concurrency leases (zset: member request id, score expiry ms)
--       6 quotas (hash: day, day_used, month, month_used)
--       7 the reservation (string), sluice:{key}:res:<request id>
-- ARGV  1 request id
--       2..4 requests rate, burst, cost     5..7 tokens     8..10 input tokens     11..13 output tokens
--                                           (rate 0: that limit is not configured)
--       14 max concurrent requests (0: none)   15 tokens per day (0: none)   16 tokens per month (0: none)
--       17 quota cost   18 prompt tokens   19 reserved output tokens
--       20 lease TTL ms   21 reservation TTL ms
--       22 deadline, µs of Redis' clock (0: none): the caller gives up then, so a call that runs
--          later (it waited in a frozen server's socket) must change nothing
--       23 retry-after of a concurrency denial, µs (RateLimitDenial.concurrencyRetryAfterSeconds)
-- Denial kinds are RateLimitKind.code; buckets come in RateLimitKind.buckets' order.
-- Returns {admitted 1|0|2 (2: past its deadline, nothing changed), corrupt 1|0,
--          requests remaining, requests reset µs, tokens remaining, tokens reset µs,
--          denial kind, limit, burst, used, requested, retry after µs, never fits 1|0,
--          Redis' clock µs}
--   denial kinds: 1 requests 2 tokens 3 input tokens 4 output tokens 5 concurrency
--                 6 daily tokens 7 monthly tokens (0 and zeros when admitted)

local requestID = ARGV[1]
local now, seconds = redisNow()
local nowMillis = math.floor(now / 1000)

local deadline = tonumber(ARGV[22]) or 0
if deadline > 0 and now > deadline then
  return { 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, now }
end

local denial = nil

-- RateLimitDenial.outranks: a request that never fits wins, then the longest wait.
local function consider(kind, limit, burst, used, requested, retryAfter, neverFits)
  if denial ~= nil then
    local wins
    if neverFits ~= denial[7] then
      wins = neverFits == 1
    else
      wins = retryAfter > denial[6]
    end
    if not wins then return end
  end
  denial = { kind, limit, burst, used, requested, retryAfter, neverFits }
end

-- Per-minute buckets.
local buckets, deltas, newDeltas = {}, {}, {}
for i = 1, 4 do
  local base = 2 + (i - 1) * 3
  local bucket = bucketAt(base)
  if bucket ~= nil then
    buckets[i] = bucket
    local cost = tonumber(ARGV[base + 2])
    local d = readDelta(KEYS[i], bucket, now)
    deltas[i] = d
    local verdict, value = bucketAdmit(bucket, cost, d)
    if verdict == 'allowed' then
      newDeltas[i] = value
    elseif verdict == 'denied' then
      consider(i, tonumber(ARGV[base]), tonumber(ARGV[base + 1]), bucketUsed(bucket, d), cost, value, 0)
    else
      consider(i, tonumber(ARGV[base]), tonumber(ARGV[base + 1]), bucketUsed(bucket, d), cost, 0, 1)
    end
  end
end

-- Concurrency: leases expire by themselves (a node that died mid-request frees its slots).
local maxConcurrent = tonumber(ARGV[14])
local leaseTTL = tonumber(ARGV[20])
if maxConcurrent > 0 then
  local leases = KEYS[5]
  local inFlight = 0
  if type(redis.pcall('ZREMRANGEBYSCORE', leases, '-inf', int(nowMillis))) == 'table' then
    redis.call('DEL', leases)
    corrupt = 1
  else
    -- A score beyond any lease this script writes would hold a slot for ever: such members are
    -- not counted (and go with the key's expiry).
    inFlight = redis.call('ZCOUNT', leases, '-inf', int(nowMillis + 2 * leaseTTL))
  end
  if inFlight >= maxConcurrent then
    consider(5, maxConcurrent, maxConcurrent, inFlight, 1, tonumber(ARGV[23]), 0)
  end
end

-- Quotas: counters of the current UTC day and month (Redis' clock).
local perDay, perMonth = tonumber(ARGV[15]), tonumber(ARGV[16])
local quotaCost = tonumber(ARGV[17])
local today, thisMonth, nextDay, nextMonthDay
local dayUsed, monthUsed = 0, 0
if perDay > 0 or perMonth > 0 then
  today, thisMonth, nextDay, nextMonthDay = quotaPeriods(seconds)
  dayUsed, monthUsed = readQuota(KEYS[6], today, thisMonth)
  if perDay > 0 and dayUsed + quotaCost > perDay then
    if quotaCost > perDay then
      consider(6, perDay, perDay, dayUsed, quotaCost, 0, 1)
    else
      consider(6, perDay, perDay, dayUsed, quotaCost, nextDay * DAY_SECONDS * 1000000 - now, 0)
    end
  end
  if perMonth > 0 and monthUsed + quotaCost > perMonth then
    if quotaCost > perMonth then
      consider(7, perMonth, perMonth, monthUsed, quotaCost, 0, 1)
    else
      consider(7, perMonth, perMonth, monthUsed, quotaCost, nextMonthDay * DAY_SECONDS * 1000000 - now, 0)
    end
  end
end

if denial ~= nil then
  local requestsRemaining, requestsReset = headerValues(buckets[1], deltas[1] or 0)
  local tokensRemaining, tokensReset = headerValues(buckets[2], deltas[2] or 0)
  return { 0, corrupt, requestsRemaining, requestsReset, tokensRemaining, tokensReset,
           denial[1], denial[2], denial[3], denial[4], denial[5], denial[6], denial[7], now }
end

-- Admitted: charge everything.
for i = 1, 4 do
  if buckets[i] ~= nil then writeDelta(KEYS[i], newDeltas[i], now) end
end
if maxConcurrent > 0 then
  redis.call('ZADD', KEYS[5], int(nowMillis + leaseTTL), requestID)
  redis.call('PEXPIRE', KEYS[5], int(leaseTTL + 1000))
end
local quotaDay, quotaMonth = -1, -1
if perDay > 0 or perMonth > 0 then
  local newDayUsed, newMonthUsed, endDay = nil, nil, nextDay
  if perDay > 0 then
    newDayUsed = dayUsed + quotaCost
    quotaDay = today
  end
  if perMonth > 0 then
    newMonthUsed = monthUsed + quotaCost
    quotaMonth = thisMonth
    endDay = nextMonthDay
  end
  writeQuota(KEYS[6], today, newDayUsed, thisMonth, newMonthUsed, endDay, now)
end

-- The reservation: what settle.lua reconciles, exactly once (it takes this key with GETDEL). One
-- string of six integers: prompt, output, lease 1|0, quota cost, quota day, quota month.
redis.call('SET', KEYS[7], table.concat({ ARGV[18], ARGV[19], maxConcurrent > 0 and '1' or '0',
  ARGV[17], int(quotaDay), int(quotaMonth) }, ' '), 'PX', ARGV[21])

local requestsRemaining, requestsReset = headerValues(buckets[1], newDeltas[1] or 0)
local tokensRemaining, tokensReset = headerValues(buckets[2], newDeltas[2] or 0)
return { 1, corrupt, requestsRemaining, requestsReset, tokensRemaining, tokensReset, 0, 0, 0, 0, 0, 0, 0, now }

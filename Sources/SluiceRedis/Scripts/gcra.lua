-- Shared library of the limiter scripts: the prelude of the function library that holds batch.lua,
-- snapshot.lua and usage.lua (RedisScriptFiles.limiterFunctions), so the bucket math exists once in Lua.
--
-- The bucket math mirrors GCRABucket.swift formula by formula. It works on d = tat - now, the
-- time in microseconds until a bucket is full again, never on sums of absolute timestamps with
-- tau (which could pass 2^53). Every product formed (c * P, (tau - d) * R) is below 2^53, so the
-- doubles of Redis' Lua hold them exactly, and idiv() corrects the rounding of the division.

local PERIOD = 60000000                 -- P: one minute in microseconds
local MAX_VALUE = 150000000             -- LimitSet.maximumValue
local DAY_SECONDS = 86400
-- A TAT further ahead than tau + this cannot have been written by the limiter for any sane
-- configuration (31 days of debt): it is treated as corrupt and reset.
local DEBT_HORIZON = 31 * 86400 * 1000000

-- Set to 1 whenever a value in Redis had to be discarded; reported to the caller, who logs it.
local corrupt = 0

local function int(x)
  return string.format('%d', x)
end

-- floor(a / b) for integers 0 <= a < 2^53 and b > 0, exact.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- ceil(a / b), same domain.
local function cdiv(a, b)
  return idiv(a + b - 1, b)
end

local function clampUnits(c)
  if c < 0 then return 0 end
  if c > MAX_VALUE then return MAX_VALUE end
  return c
end

-- GCRABucket.init: rate and burst clamped into 1...MAX_VALUE; tau = cost(burst). Buckets are kept
-- by rate and burst for the library's life (a key's limits rarely change): not rebuilt per call.
local bucketsByLimits = {}
local bucketsKept = 0
local function newBucket(rate, burst)
  local r = math.min(math.max(rate, 1), MAX_VALUE)
  local b = math.min(math.max(burst, 1), MAX_VALUE)
  local byBurst = bucketsByLimits[r]
  local bucket = byBurst and byBurst[b]
  if bucket then return bucket end
  bucket = { rate = r, burst = b, tau = cdiv(b * PERIOD, r) }
  if bucketsKept >= 10000 then
    bucketsByLimits = {}
    bucketsKept = 0
  end
  if not bucketsByLimits[r] then bucketsByLimits[r] = {} end
  bucketsByLimits[r][b] = bucket
  bucketsKept = bucketsKept + 1
  return bucket
end

-- cost(c) = ceil(c * P / R)
local function refillMicros(bucket, units)
  return cdiv(clampUnits(units) * PERIOD, bucket.rate)
end

-- admit(c): returns 'tooLarge' | 'allowed', newD | 'denied', retryAfterMicros
local function bucketAdmit(bucket, cost, d)
  local units = math.max(cost, 0)
  if units > bucket.burst then return 'tooLarge', 0 end
  local newD = math.max(d, 0) + refillMicros(bucket, units)
  if newD <= bucket.tau then return 'allowed', newD end
  return 'denied', newD - bucket.tau
end

-- refund(a): tat := max(tat - floor(a * P / R), now)
local function bucketRefund(bucket, amount, d)
  local back = idiv(clampUnits(amount) * PERIOD, bucket.rate)
  return math.max(d - back, 0)
end

-- charge(a): tat := max(tat, now) + cost(a)   (may create debt)
local function bucketCharge(bucket, amount, d)
  return math.max(d, 0) + refillMicros(bucket, amount)
end

-- remaining: max(0, min(B, floor((tau - d) * R / P)))
local function bucketRemaining(bucket, d)
  local inUse = math.max(d, 0)
  if inUse >= bucket.tau then return 0 end
  return math.min(bucket.burst, idiv((bucket.tau - inUse) * bucket.rate, PERIOD))
end

-- used: burst - remaining, or in debt ceil(d * R / P) (display only, like GCRABucket.used).
local function bucketUsed(bucket, d)
  local inUse = math.max(d, 0)
  if inUse <= bucket.tau then return bucket.burst - bucketRemaining(bucket, d) end
  return math.ceil(inUse * bucket.rate / PERIOD)
end

-- Redis' clock: all nodes share it. Returns now in microseconds and the whole seconds.
local function redisNow()
  local t = redis.call('TIME')
  local seconds = tonumber(t[1])
  return seconds * 1000000 + tonumber(t[2]), seconds
end

local function isInteger(n)
  return n ~= nil and n == n and n ~= math.huge and n ~= -math.huge and n == math.floor(n)
end

-- The rate and burst at ARGV[index], ARGV[index + 1]; nil when the limit is not configured (0).
local function bucketAt(index)
  local rate = tonumber(ARGV[index])
  if rate == nil or rate <= 0 then return nil end
  return newBucket(rate, tonumber(ARGV[index + 1]) or rate)
end

-- The x-ratelimit values of a bucket: remaining, reset after (µs); zeros when not configured.
local function headerValues(bucket, d)
  if bucket == nil then return 0, 0 end
  return bucketRemaining(bucket, d), math.max(d, 0)
end

-- Calendar (UTC, proleptic Gregorian) from days since 1970-01-01, for the quota periods.
local function civilFromDays(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400
  if month <= 2 then year = year + 1 end
  return year, month, day
end

local function daysFromCivil(year, month, day)
  if month <= 2 then year = year - 1 end
  local era = math.floor(year / 400)
  local yoe = year - era * 400
  local mp = (month + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + day - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- The quota periods at `seconds`: day index, month index (year * 12 + month - 1), and the first
-- day index of the next day and the next month.
local function quotaPeriods(seconds)
  local today = math.floor(seconds / DAY_SECONDS)
  local year, month = civilFromDays(today)
  local nextYear, nextMonth = year, month + 1
  if nextMonth > 12 then nextYear, nextMonth = year + 1, 1 end
  return today, year * 12 + month - 1, today + 1, daysFromCivil(nextYear, nextMonth, 1)
end

-- A key's limiter state is one hash, sluice:{k}:state (RedisKeyLayout), read whole with one HGETALL
-- and written with one HSET per call. Its fields:
--   r t i o          the TAT of the requests, tokens, input and output tokens buckets (µs of Redis'
--                    clock; absent, or in the past: the bucket is full)
--   qd qdu qm qmu    the quota periods (UTC day index, year * 12 + month - 1) and their usage
--   bd bdu bm bmu    the budgets' periods and their spend (nano-dollars, reservations included)
--   lr lt li lo      the lease marks: the end of the last slice of each bucket handed to a node
--                    (batch.lua): refunds never move a TAT below it
--   exp              the hash's expiry (ms) as last set, so PEXPIRE runs only when it must move
--   n:<node>         one per node: "slots leaseExpiryMs epoch ack seenMs" (see batch.lua)
local BUCKET_FIELDS = { 'r', 't', 'i', 'o' }
local LEASE_MARKS = { 'lr', 'lt', 'li', 'lo' }

-- The hash at key as a table of fields (empty when absent). A key of another type is deleted
-- and flagged: the limiter starts over rather than fail every request of that API key.
local function readState(key)
  local raw = redis.pcall('HGETALL', key)
  if type(raw) == 'table' and raw.err then
    redis.call('DEL', key)
    corrupt = 1
    return {}
  end
  local fields = {}
  for index = 1, #raw, 2 do fields[raw[index]] = raw[index + 1] end
  return fields
end

-- A field holding a non-negative integer; nil when absent, flagged when it holds anything else.
local function stateInteger(fields, name)
  local raw = fields[name]
  if raw == nil then return nil end
  local n = tonumber(raw)
  if not isInteger(n) or n < 0 then
    corrupt = 1
    return nil
  end
  return n
end

-- d = tat - now of a bucket's field (0: absent, i.e. full). A value that is not an integer, or a
-- TAT beyond tau + DEBT_HORIZON, counts as a full bucket and is flagged (the next write replaces it).
local function stateDelta(fields, name, bucket, now)
  local tat = stateInteger(fields, name)
  if tat == nil then return 0 end
  if tat - now > bucket.tau + DEBT_HORIZON then
    corrupt = 1
    return 0
  end
  return tat - now
end

-- The usage of the current day and month in the state's quota fields (0 when the stored period
-- is another one).
local function stateQuota(fields, today, thisMonth)
  local dayUsed, monthUsed = 0, 0
  if stateInteger(fields, 'qd') == today then dayUsed = stateInteger(fields, 'qdu') or 0 end
  if stateInteger(fields, 'qm') == thisMonth then monthUsed = stateInteger(fields, 'qmu') or 0 end
  return dayUsed, monthUsed
end

-- batch.lua: one call of a node's lane for one API key (RedisLimiterStore.KeyLane). It carries
-- everything the node has for that key since its last call, applied in this order: the resolution
-- of a call whose reply was lost, a lease returned, settlements, admissions (each all-or-nothing,
-- in order), a lease taken. Requires gcra.lua before it.
--
-- Cost to Redis: this FCALL, TIME, HGETALL and one HSET, whatever the number of requests carried;
-- PEXPIRE only when the hash's expiry must move, HDEL only to forget a node gone for good.
--
-- KEYS  1 the key's state hash (gcra.lua: readState)
--       2 (keys in a team only) the team's state hash, in the same slot (RedisKeyLayout tags the
--         names of a team's keys by the team): the request must pass both in this one call
-- ARGV  1 node id   2 call sequence number (increasing per node and key)
--       3 deadline, µs of Redis' clock (0: none): the caller gives up then, so a call that runs
--         later (it waited in a frozen server's socket) must change nothing
--       4..11 rate, burst of the requests, tokens, input, output buckets (rate 0: not configured)
--       12 max concurrent requests   13 tokens per day   14 tokens per month   (0: none)
--       15 slot lease TTL ms   16 state TTL ms (how long the hash outlives its last call, at least)
--       17 retry-after of a concurrency denial, µs
--       18 lost call's sequence number (0: none)   19 first sequence number that tried to resolve it
--       20 lost admissions   21 lost settlements   22 settlements   23 admissions   (counts)
--       24..27 lease wanted: units of the requests, tokens, input, output buckets (0: none)
--       28..35 lease returned: end and start of the unused tail (µs) of each bucket's slice (0 0: none)
--       36 concurrency slots wanted for the lease   37 parked slots returned   38 their epoch
--       39..42 the least worth taking of each bucket's slice: a request's cost (a smaller slice
--             admits nothing and only keeps the capacity from the other nodes)
--       43 parked slots the lost call gave back   44 their epoch
--       45 USD per day   46 USD per month: the budgets, nano-dollars (0: none)
--       47 1 when some request of the call tracks the key's tokens of the month (fields pm pmu;
--          with KEYS[2], the team's tokens of the month: pm pmu of the team's hash, not the key's)
--       48..61 (only with KEYS[2]) the team's limits, as 4..14 and 45..46 are the key's: rate,
--             burst of its requests, tokens, input, output buckets (48..55), max concurrent (56),
--             tokens per day (57), per month (58), USD per day (59), per month (60); 61 the key id
--             (names the node's concurrency entry in the team's hash). The variable part then
--             starts at 62 instead of 48.
--       48..  lost admissions (4 each: prompt, output, cost, tracks 1|0), lost settlements and
--             settlements (10 each: reserved prompt, reserved output, actual prompt, actual
--             completion, quota day, quota month (-1: not charged), slot epoch (0: no slot), reserved
--             cost, actual cost, tracks 1|0), admissions (4 each: prompt, output, cost (nano-dollars:
--             the most the request can cost), tracks the month's tokens 1|0)
--
-- Node entries n:<node> = "slots leaseExpiryMs epoch ack seenMs admitted granted": the concurrency
-- slots the node's requests hold or it keeps parked (counted while leaseExpiryMs is ahead: a dead node's slots free one TTL
-- after its last call), the epoch those slots belong to (a release from an earlier epoch, whose
-- slots already expired, is ignored), the last sequence number applied (a call at or below it is
-- stale and changes nothing), when the node was last seen, and which admissions of that last
-- call were admitted (a string of 1 and 0, '-' for none) and how many slots it granted to park:
-- what a lost call's resolution undoes.
--
-- Returns {status 1 applied | 2 past its deadline | 3 stale, corrupt, Redis' clock µs, slot epoch,
--          lost call 1 applied (its admissions released) | 0 not applied (its settlements applied
--                    now) | 2 already resolved | -1 none,
--          quota day, quota month (of the admissions; -1: no quota),
--          requests remaining, reset µs, tokens remaining, reset µs (after everything),
--          lease granted: start, end µs of each bucket (0 0: none), concurrency slots,
--          then 15 per admission: admitted 1|0, denial kind, limit, burst, used, requested,
--          retry after µs, never fits 1|0, requests remaining, reset µs, tokens remaining, reset µs,
--          where its charge starts in the tokens, input and output buckets' timelines (µs; 0: none),
--          the key's (with KEYS[2]: the team's) tokens of the month before it (-1: not tracked),
--          then the budgets' spend after the call: today, this month (nano-dollars; 0 without budgets),
--          then (with KEYS[2] only) the team's budgets' spend after the call: today, this month}
--   denial kinds: 1 requests 2 tokens 3 input tokens 4 output tokens 5 concurrency
--                 6 daily tokens 7 monthly tokens 8 USD per day 9 USD per month
--                 the same + 10 (11..19) when the team's limit denied
--   quota day and month are those of the token quotas and the budgets alike (the same calendar).

local node = ARGV[1]
local sequence = tonumber(ARGV[2])
local now, seconds = redisNow()
local nowMillis = math.floor(now / 1000)

local deadline = tonumber(ARGV[3]) or 0
if deadline > 0 and now > deadline then return { 2, 0, now } end

local fields = readState(KEYS[1])

-- This node's entry and everyone's slots.
local leaseTTL, stateTTL = tonumber(ARGV[15]), tonumber(ARGV[16])
local function parseEntry(raw)
  local slots, expiry, epoch, ack, seen, admitted, granted = string.match(raw, '^(%d+) (%d+) (%d+) (%d+) (%d+) ([01%-]+) (%d+)$')
  if slots == nil then return nil end
  return { slots = tonumber(slots), expiry = tonumber(expiry), epoch = tonumber(epoch), ack = tonumber(ack),
           seen = tonumber(seen), admitted = admitted, granted = tonumber(granted) }
end
local mineName = 'n:' .. node
local mine = { slots = 0, expiry = 0, epoch = 0, ack = 0, seen = 0, admitted = '-', granted = 0 }
if fields[mineName] ~= nil then
  local parsed = parseEntry(fields[mineName])
  if parsed == nil then corrupt = 1 else mine = parsed end
end
if sequence <= mine.ack then return { 3, corrupt, now } end
-- Slots count while their lease runs; an expiry beyond any this script writes is not ours.
local function live(entry)
  return entry.slots > 0 and entry.expiry > nowMillis and entry.expiry <= nowMillis + 2 * leaseTTL
end
if not live(mine) then mine.slots = 0 end
local othersInFlight = 0
local forgotten = {}
-- Other nodes' entries matter for the concurrency count; without a concurrency limit they are
-- looked at one call in 64, to forget nodes gone for good.
local maxConcurrent = tonumber(ARGV[12])
local scanEntries = maxConcurrent > 0 or sequence % 64 == 0
for name, raw in pairs(fields) do
  if scanEntries and string.sub(name, 1, 2) == 'n:' and name ~= mineName then
    local entry = parseEntry(raw)
    if entry == nil then
      corrupt = 1
      forgotten[#forgotten + 1] = name
    elseif live(entry) then
      othersInFlight = othersInFlight + entry.slots
    elseif entry.seen + stateTTL < nowMillis then
      forgotten[#forgotten + 1] = name
    end
  end
end

-- The key's team (KEYS[2]): its limits and state, decided with the key's in this call. Its hash has
-- no sequence numbers of its own: the key's node entry (above) makes each call apply once, and the
-- team's hash changes only inside such calls. The node's concurrency slots for this key are
-- mirrored into it (m:<node>:<key> = "slots leaseExpiryMs seenMs"), so the team counts the slots
-- of all its keys on all nodes.
local team = nil
local variableStart = 48
if #KEYS >= 2 then
  variableStart = 62
  team = { fields = readState(KEYS[2]), buckets = {}, deltas = {}, readDeltas = {},
           maxConcurrent = tonumber(ARGV[56]), perDay = tonumber(ARGV[57]), perMonth = tonumber(ARGV[58]),
           usdPerDay = tonumber(ARGV[59]), usdPerMonth = tonumber(ARGV[60]),
           mirror = 'm:' .. node .. ':' .. ARGV[61], othersInFlight = 0, forgotten = {},
           dayUsed = 0, monthUsed = 0, dayCost = 0, monthCost = 0, quotaChanged = false, budgetChanged = false }
  team.hasQuota = team.perDay > 0 or team.perMonth > 0
  team.hasBudget = team.usdPerDay > 0 or team.usdPerMonth > 0
  if team.maxConcurrent > 0 or sequence % 64 == 0 then
    for name, raw in pairs(team.fields) do
      if string.sub(name, 1, 2) == 'm:' and name ~= team.mirror then
        local slots, expiry, seen = string.match(raw, '^(%d+) (%d+) (%d+)$')
        if slots == nil then
          corrupt = 1
          team.forgotten[#team.forgotten + 1] = name
        elseif live({ slots = tonumber(slots), expiry = tonumber(expiry) }) then
          team.othersInFlight = team.othersInFlight + tonumber(slots)
        elseif tonumber(seen) + stateTTL < nowMillis then
          team.forgotten[#team.forgotten + 1] = name
        end
      end
    end
  end
end
-- Slots are counted in the node's entry when the key or its team limits concurrency.
local countsSlots = maxConcurrent > 0 or (team ~= nil and team.maxConcurrent > 0)

-- Buckets and quotas as they stand.
local buckets, deltas, marks, readDeltas = {}, {}, {}, {}
for index = 1, 4 do
  local bucket = bucketAt(4 + (index - 1) * 2)
  if bucket ~= nil then
    buckets[index] = bucket
    local corruptBefore = corrupt
    corrupt = 0
    deltas[index] = stateDelta(fields, BUCKET_FIELDS[index], bucket, now)
    -- An unreadable field is rewritten whatever happens (NaN never equals the delta).
    if corrupt == 1 then readDeltas[index] = 0 / 0 else readDeltas[index] = deltas[index] end
    corrupt = math.max(corrupt, corruptBefore)
    marks[index] = stateInteger(fields, LEASE_MARKS[index]) or 0
  end
end
local marksChanged = false
if team ~= nil then
  for index = 1, 4 do
    local bucket = bucketAt(48 + (index - 1) * 2)
    if bucket ~= nil then
      team.buckets[index] = bucket
      local corruptBefore = corrupt
      corrupt = 0
      team.deltas[index] = stateDelta(team.fields, BUCKET_FIELDS[index], bucket, now)
      if corrupt == 1 then team.readDeltas[index] = 0 / 0 else team.readDeltas[index] = team.deltas[index] end
      corrupt = math.max(corrupt, corruptBefore)
    end
  end
end

-- A refund moves the TAT back, but never below the end of a slice some node may still hold (the
-- mark): the nodes' slices must stay inside [now, TAT], or the bucket would refill behind them and
-- hand their capacity out twice.
local function refund(index, amount)
  deltas[index] = math.max(bucketRefund(buckets[index], amount, deltas[index]), marks[index] - now)
end
local perDay, perMonth = tonumber(ARGV[13]), tonumber(ARGV[14])
local hasQuota = perDay > 0 or perMonth > 0
-- Budgets (nano-dollars) count in the same periods, in their own fields: bd bdu bm bmu.
local usdPerDay, usdPerMonth = tonumber(ARGV[45]), tonumber(ARGV[46])
local hasBudget = usdPerDay > 0 or usdPerMonth > 0
-- (Keys without quotas or budgets skip the calendar: no settlement's period matches -2.)
local today, thisMonth, nextDay, nextMonthDay = -2, -2, -2, -2
local dayUsed, monthUsed = 0, 0
local dayCost, monthCost = 0, 0
-- The key's tokens of the month, for requests priced by their position in it (volume tiers, plans).
-- A key in a team counts the team's month instead (its keys' volume earns the price breaks): the
-- counter is then read from and written to the team's hash, and the key's hash has none.
local tracking = tonumber(ARGV[47]) == 1
local monthTokens = 0
local monthTokensChanged = false
local teamCalendar = team ~= nil and (team.hasQuota or team.hasBudget)
if hasQuota or hasBudget or tracking or teamCalendar then
  today, thisMonth, nextDay, nextMonthDay = quotaPeriods(seconds)
  dayUsed, monthUsed = stateQuota(fields, today, thisMonth)
  if stateInteger(fields, 'bd') == today then dayCost = stateInteger(fields, 'bdu') or 0 end
  if stateInteger(fields, 'bm') == thisMonth then monthCost = stateInteger(fields, 'bmu') or 0 end
  local monthFields = fields
  if team ~= nil then monthFields = team.fields end
  if stateInteger(monthFields, 'pm') == thisMonth then monthTokens = stateInteger(monthFields, 'pmu') or 0 end
  if teamCalendar then
    team.dayUsed, team.monthUsed = stateQuota(team.fields, today, thisMonth)
    if stateInteger(team.fields, 'bd') == today then team.dayCost = stateInteger(team.fields, 'bdu') or 0 end
    if stateInteger(team.fields, 'bm') == thisMonth then team.monthCost = stateInteger(team.fields, 'bmu') or 0 end
  end
end
local function addMonthTokens(month, amount)
  if month == thisMonth and amount ~= 0 then
    monthTokens = math.max(monthTokens + amount, 0)
    monthTokensChanged = true
  end
end
local quotaChanged = false
local budgetChanged = false

-- The differences a settlement applies (refund what was reserved and not used, charge what was
-- used beyond), and the admission a lost call may have made, undone.
local function reconcile(index, reserved, actual)
  local bucket = buckets[index]
  if bucket == nil or actual == reserved then return end
  if actual < reserved then
    refund(index, reserved - actual)
  else
    deltas[index] = bucketCharge(bucket, actual - reserved, deltas[index])
  end
end
local function addQuota(day, month, amount)
  if day == today then dayUsed = math.max(dayUsed + amount, 0) quotaChanged = true end
  if month == thisMonth then monthUsed = math.max(monthUsed + amount, 0) quotaChanged = true end
end
local function addBudget(day, month, amount)
  if not hasBudget or amount == 0 then return end
  if day == today then dayCost = math.max(dayCost + amount, 0) budgetChanged = true end
  if month == thisMonth then monthCost = math.max(monthCost + amount, 0) budgetChanged = true end
end
-- The team's share of a settlement or release: the same differences, on its buckets and counters
-- (its TATs need no lease marks: keys in a team are never leased).
local function teamCorrect(reservedPrompt, reservedOutput, actualPrompt, actualCompletion, day, month, costDifference)
  if team == nil then return end
  local reserved = { 0, reservedPrompt + reservedOutput, reservedPrompt, reservedOutput }
  local actual = { 0, actualPrompt + actualCompletion, actualPrompt, actualCompletion }
  for index = 2, 4 do
    local bucket = team.buckets[index]
    if bucket ~= nil and actual[index] ~= reserved[index] then
      if actual[index] < reserved[index] then
        team.deltas[index] = bucketRefund(bucket, reserved[index] - actual[index], team.deltas[index])
      else
        team.deltas[index] = bucketCharge(bucket, actual[index] - reserved[index], team.deltas[index])
      end
    end
  end
  local tokens = actual[2] - reserved[2]
  if team.hasQuota and tokens ~= 0 then
    if day == today then team.dayUsed = math.max(team.dayUsed + tokens, 0) team.quotaChanged = true end
    if month == thisMonth then team.monthUsed = math.max(team.monthUsed + tokens, 0) team.quotaChanged = true end
  end
  if team.hasBudget and costDifference ~= 0 then
    if day == today then team.dayCost = math.max(team.dayCost + costDifference, 0) team.budgetChanged = true end
    if month == thisMonth then team.monthCost = math.max(team.monthCost + costDifference, 0) team.budgetChanged = true end
  end
end
local function settle(at)
  local reservedPrompt, reservedOutput = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local actualPrompt, actualCompletion = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  reconcile(2, reservedPrompt + reservedOutput, actualPrompt + actualCompletion)
  reconcile(3, reservedPrompt, actualPrompt)
  reconcile(4, reservedOutput, actualCompletion)
  addQuota(tonumber(ARGV[at + 4]), tonumber(ARGV[at + 5]), actualPrompt + actualCompletion - reservedPrompt - reservedOutput)
  addBudget(tonumber(ARGV[at + 4]), tonumber(ARGV[at + 5]), tonumber(ARGV[at + 8]) - tonumber(ARGV[at + 7]))
  if tonumber(ARGV[at + 9]) == 1 then
    addMonthTokens(tonumber(ARGV[at + 5]), actualPrompt + actualCompletion - reservedPrompt - reservedOutput)
  end
  teamCorrect(reservedPrompt, reservedOutput, actualPrompt, actualCompletion, tonumber(ARGV[at + 4]), tonumber(ARGV[at + 5]),
              tonumber(ARGV[at + 8]) - tonumber(ARGV[at + 7]))
  local epoch = tonumber(ARGV[at + 6])
  if epoch ~= 0 and epoch == mine.epoch and mine.slots > 0 then mine.slots = mine.slots - 1 end
end
local function release(at)
  local prompt, output = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  if buckets[1] ~= nil then
    refund(1, 1)
  end
  reconcile(2, prompt + output, 0)
  reconcile(3, prompt, 0)
  reconcile(4, output, 0)
  if hasQuota then addQuota(today, thisMonth, -(prompt + output)) end
  addBudget(today, thisMonth, -tonumber(ARGV[at + 2]))
  if tonumber(ARGV[at + 3]) == 1 then addMonthTokens(thisMonth, -(prompt + output)) end
  if team ~= nil then
    if team.buckets[1] ~= nil then team.deltas[1] = bucketRefund(team.buckets[1], 1, team.deltas[1]) end
    teamCorrect(prompt, output, 0, 0, today, thisMonth, -tonumber(ARGV[at + 2]))
  end
  if countsSlots and mine.slots > 0 then mine.slots = mine.slots - 1 end
end

local lostSeq, firstResolution = tonumber(ARGV[18]), tonumber(ARGV[19])
local lostAdmissions, lostSettlements = tonumber(ARGV[20]), tonumber(ARGV[21])
local settlements, admissions = tonumber(ARGV[22]), tonumber(ARGV[23])
local at = variableStart
local lost = -1
if lostSeq > 0 then
  if mine.ack >= firstResolution then
    lost = 2
  elseif mine.ack >= lostSeq then
    lost = 1
    for index = 0, lostAdmissions - 1 do
      if string.sub(mine.admitted, index + 1, index + 1) == '1' then release(at + index * 4) end
    end
    -- The slots it parked on the node never reached it.
    mine.slots = math.max(mine.slots - mine.granted, 0)
  else
    lost = 0
    for index = 0, lostSettlements - 1 do settle(at + lostAdmissions * 4 + index * 10) end
    if tonumber(ARGV[43]) > 0 and tonumber(ARGV[44]) == mine.epoch then
      mine.slots = math.max(mine.slots - tonumber(ARGV[43]), 0)
    end
  end
end
at = at + lostAdmissions * 4 + lostSettlements * 10

-- A lease comes back: the unused tail [tailStart, end) of a slice that is still the last thing its
-- bucket handed out returns to the bucket (exactly: nothing was handed out after it); a slice with
-- others after it stays charged until time passes it.
for index = 1, 4 do
  local sliceEnd, tailStart = tonumber(ARGV[28 + (index - 1) * 2]), tonumber(ARGV[29 + (index - 1) * 2])
  if buckets[index] ~= nil and sliceEnd > 0 and now + deltas[index] == sliceEnd then
    deltas[index] = math.max(tailStart - now, 0)
    if marks[index] == sliceEnd then
      marks[index] = tailStart
      marksChanged = true
    end
  end
end

-- Parked concurrency slots come back (those of the current epoch: older ones already expired).
local slotsReturned, slotsEpoch = tonumber(ARGV[37]), tonumber(ARGV[38])
if slotsReturned > 0 and slotsEpoch == mine.epoch then mine.slots = math.max(mine.slots - slotsReturned, 0) end

for index = 0, settlements - 1 do settle(at + index * 10) end
at = at + settlements * 10

-- Admissions, each against everything the previous ones left.
local function snapshotValues(out)
  local requestsRemaining, requestsReset = headerValues(buckets[1], deltas[1] or 0)
  local tokensRemaining, tokensReset = headerValues(buckets[2], deltas[2] or 0)
  out[#out + 1] = requestsRemaining
  out[#out + 1] = requestsReset
  out[#out + 1] = tokensRemaining
  out[#out + 1] = tokensReset
end
local results = {}
local admittedFlags = {}
local slotsWanted = tonumber(ARGV[36])
if (admissions > 0 or slotsWanted > 0) and countsSlots
    and (mine.epoch == 0 or (mine.slots == 0 and not live({ slots = 1, expiry = mine.expiry }))) then
  -- A new epoch: slots of an earlier one (expired) can never be released into this one. Epoch 0
  -- means "no slot" to the node: an entry first written by a call without admissions (a settlement
  -- after Redis came back empty) gets its epoch here, never slots under 0.
  mine.epoch = now
end
for index = 0, admissions - 1 do
  local prompt, output = tonumber(ARGV[at + index * 4]), tonumber(ARGV[at + index * 4 + 1])
  local money = tonumber(ARGV[at + index * 4 + 2])
  local tracks = tonumber(ARGV[at + index * 4 + 3]) == 1
  local costs = { 1, prompt + output, prompt, output }
  local denial = nil
  -- RateLimitDenial.outranks: a request that never fits wins, then the longest wait.
  local function consider(kind, limit, burst, used, requested, retryAfter, neverFits)
    if denial ~= nil then
      local wins
      if neverFits ~= denial[7] then wins = neverFits == 1 else wins = retryAfter > denial[6] end
      if not wins then return end
    end
    denial = { kind, limit, burst, used, requested, retryAfter, neverFits }
  end
  local newDeltas = {}
  for b = 1, 4 do
    local bucket = buckets[b]
    if bucket ~= nil then
      local limit, burst = tonumber(ARGV[4 + (b - 1) * 2]), tonumber(ARGV[5 + (b - 1) * 2])
      local verdict, value = bucketAdmit(bucket, costs[b], deltas[b])
      if verdict == 'allowed' then
        newDeltas[b] = value
      elseif verdict == 'denied' then
        consider(b, limit, burst, bucketUsed(bucket, deltas[b]), costs[b], value, 0)
      else
        consider(b, limit, burst, bucketUsed(bucket, deltas[b]), costs[b], 0, 1)
      end
    end
  end
  if maxConcurrent > 0 then
    local inFlight = othersInFlight + mine.slots
    if inFlight >= maxConcurrent then consider(5, maxConcurrent, maxConcurrent, inFlight, 1, tonumber(ARGV[17]), 0) end
  end
  local quotaCost = prompt + output
  if perDay > 0 and dayUsed + quotaCost > perDay then
    if quotaCost > perDay then consider(6, perDay, perDay, dayUsed, quotaCost, 0, 1)
    else consider(6, perDay, perDay, dayUsed, quotaCost, nextDay * DAY_SECONDS * 1000000 - now, 0) end
  end
  if perMonth > 0 and monthUsed + quotaCost > perMonth then
    if quotaCost > perMonth then consider(7, perMonth, perMonth, monthUsed, quotaCost, 0, 1)
    else consider(7, perMonth, perMonth, monthUsed, quotaCost, nextMonthDay * DAY_SECONDS * 1000000 - now, 0) end
  end
  if usdPerDay > 0 and dayCost + money > usdPerDay then
    if money > usdPerDay then consider(8, usdPerDay, usdPerDay, dayCost, money, 0, 1)
    else consider(8, usdPerDay, usdPerDay, dayCost, money, nextDay * DAY_SECONDS * 1000000 - now, 0) end
  end
  if usdPerMonth > 0 and monthCost + money > usdPerMonth then
    if money > usdPerMonth then consider(9, usdPerMonth, usdPerMonth, monthCost, money, 0, 1)
    else consider(9, usdPerMonth, usdPerMonth, monthCost, money, nextMonthDay * DAY_SECONDS * 1000000 - now, 0) end
  end
  -- The team's limits, on the same request: denials reported as the team's (kind + 10).
  local teamDeltas = {}
  if team ~= nil then
    for b = 1, 4 do
      local bucket = team.buckets[b]
      if bucket ~= nil then
        local limit, burst = tonumber(ARGV[48 + (b - 1) * 2]), tonumber(ARGV[49 + (b - 1) * 2])
        local verdict, value = bucketAdmit(bucket, costs[b], team.deltas[b])
        if verdict == 'allowed' then
          teamDeltas[b] = value
        elseif verdict == 'denied' then
          consider(10 + b, limit, burst, bucketUsed(bucket, team.deltas[b]), costs[b], value, 0)
        else
          consider(10 + b, limit, burst, bucketUsed(bucket, team.deltas[b]), costs[b], 0, 1)
        end
      end
    end
    if team.maxConcurrent > 0 then
      local inFlight = team.othersInFlight + mine.slots
      if inFlight >= team.maxConcurrent then consider(15, team.maxConcurrent, team.maxConcurrent, inFlight, 1, tonumber(ARGV[17]), 0) end
    end
    local function calendarLimit(kind, limit, used, cost, renewsDay)
      if limit > 0 and used + cost > limit then
        if cost > limit then consider(kind, limit, limit, used, cost, 0, 1)
        else consider(kind, limit, limit, used, cost, renewsDay * DAY_SECONDS * 1000000 - now, 0) end
      end
    end
    calendarLimit(16, team.perDay, team.dayUsed, quotaCost, nextDay)
    calendarLimit(17, team.perMonth, team.monthUsed, quotaCost, nextMonthDay)
    calendarLimit(18, team.usdPerDay, team.dayCost, money, nextDay)
    calendarLimit(19, team.usdPerMonth, team.monthCost, money, nextMonthDay)
  end
  local starts = { 0, 0, 0 }
  local position = -1
  if denial == nil then
    if team ~= nil then
      for b = 1, 4 do
        if team.buckets[b] ~= nil then team.deltas[b] = teamDeltas[b] end
      end
      if team.hasQuota then
        team.dayUsed = team.dayUsed + quotaCost
        team.monthUsed = team.monthUsed + quotaCost
        team.quotaChanged = true
      end
      if team.hasBudget and money > 0 then
        team.dayCost = team.dayCost + money
        team.monthCost = team.monthCost + money
        team.budgetChanged = true
      end
    end
    for b = 1, 4 do
      if buckets[b] ~= nil then
        if b > 1 then starts[b - 1] = now + math.max(deltas[b], 0) end
        deltas[b] = newDeltas[b]
      end
    end
    if hasQuota then
      dayUsed = dayUsed + quotaCost
      monthUsed = monthUsed + quotaCost
      quotaChanged = true
    end
    if hasBudget and money > 0 then
      dayCost = dayCost + money
      monthCost = monthCost + money
      budgetChanged = true
    end
    position = -1
    if tracks then
      position = monthTokens
      addMonthTokens(thisMonth, prompt + output)
    end
    if countsSlots then mine.slots = mine.slots + 1 end
    admittedFlags[#admittedFlags + 1] = '1'
    for _, v in ipairs({ 1, 0, 0, 0, 0, 0, 0, 0 }) do results[#results + 1] = v end
  else
    admittedFlags[#admittedFlags + 1] = '0'
    results[#results + 1] = 0
    for k = 1, 7 do results[#results + 1] = denial[k] end
  end
  snapshotValues(results)
  for k = 1, 3 do results[#results + 1] = starts[k] end
  results[#results + 1] = position
end

-- A lease taken: of each bucket, what the node asked for or what is left if less, as an interval
-- of the bucket's timeline [start, end) that the node admits against by itself (batch.lua's twin
-- in Swift: LimiterLease); and free concurrency slots, parked on the node (counted in its entry
-- like the slots in use, so never more than the limit in flight across nodes). Keys with quotas
-- are never leased.
local granted = { 0, 0, 0, 0, 0, 0, 0, 0, 0 }
-- All or nothing: a lease is only of use if every configured bucket gives at least a request's
-- worth (a lease admits a request only when all its buckets cover it).
local sliceUnits = {}
local leasing = false
for index = 1, 4 do
  local wanted = tonumber(ARGV[24 + index - 1])
  if buckets[index] ~= nil and wanted > 0 then
    leasing = true
    local units = math.min(wanted, bucketRemaining(buckets[index], deltas[index]))
    if units < math.max(tonumber(ARGV[39 + index - 1]), 1) then
      leasing = false
      break
    end
    sliceUnits[index] = units
  end
end
if leasing then
  for index = 1, 4 do
    local units = sliceUnits[index]
    if units ~= nil then
      local bucket = buckets[index]
      local start = now + math.max(deltas[index], 0)
      deltas[index] = math.max(deltas[index], 0) + refillMicros(bucket, units)
      granted[(index - 1) * 2 + 1] = start
      granted[(index - 1) * 2 + 2] = now + deltas[index]
      marks[index] = now + deltas[index]
      marksChanged = true
    end
  end
end

if slotsWanted > 0 and maxConcurrent > 0 then
  local free = maxConcurrent - othersInFlight - mine.slots
  if free > 0 then
    granted[9] = math.min(slotsWanted, free)
    mine.slots = mine.slots + granted[9]
  end
end

-- Write what changed, in one HSET.
local writes = {}
local function put(name, value)
  writes[#writes + 1] = name
  writes[#writes + 1] = value
end
local expiresAt = nowMillis + stateTTL
for index = 1, 4 do
  -- Only what moved: a bucket left as read keeps its field (and the expiry it was given).
  if buckets[index] ~= nil and deltas[index] ~= readDeltas[index] then
    if deltas[index] > 0 then
      put(BUCKET_FIELDS[index], int(now + deltas[index]))
      expiresAt = math.max(expiresAt, math.floor((now + deltas[index]) / 1000) + 1)
    elseif fields[BUCKET_FIELDS[index]] ~= nil then
      put(BUCKET_FIELDS[index], '0')
    end
  end
end
if marksChanged then
  for index = 1, 4 do
    if buckets[index] ~= nil then put(LEASE_MARKS[index], int(marks[index])) end
  end
end
if quotaChanged then
  if perDay > 0 then
    put('qd', int(today))
    put('qdu', int(dayUsed))
  end
  if perMonth > 0 then
    put('qm', int(thisMonth))
    put('qmu', int(monthUsed))
  end
end
if budgetChanged then
  if usdPerDay > 0 then
    put('bd', int(today))
    put('bdu', int(dayCost))
  end
  if usdPerMonth > 0 then
    put('bm', int(thisMonth))
    put('bmu', int(monthCost))
  end
end
local keyMonthTokensChanged = monthTokensChanged and team == nil
if keyMonthTokensChanged then
  put('pm', int(thisMonth))
  put('pmu', int(monthTokens))
end
if hasQuota or hasBudget or keyMonthTokensChanged then
  local endDay = nextDay
  if perMonth > 0 or usdPerMonth > 0 or keyMonthTokensChanged then endDay = nextMonthDay end
  expiresAt = math.max(expiresAt, (endDay + 1) * DAY_SECONDS * 1000)
end
local admittedText = table.concat(admittedFlags)
if admittedText == '' then admittedText = '-' end
put(mineName, table.concat({ int(mine.slots), int(nowMillis + leaseTTL), int(mine.epoch), int(sequence), int(nowMillis), admittedText, int(granted[9]) }, ' '))
-- The hash lives until its last TAT, quota period and node entry no longer matter; PEXPIRE runs
-- only when that moves past the expiry last set, which is then set a state TTL further.
local expiry = stateInteger(fields, 'exp') or 0
if expiresAt > expiry then
  expiry = expiresAt + stateTTL
  put('exp', int(expiry))
end
redis.call('HSET', KEYS[1], unpack(writes))
if #forgotten > 0 then redis.call('HDEL', KEYS[1], unpack(forgotten)) end
if expiry ~= (stateInteger(fields, 'exp') or 0) then redis.call('PEXPIRE', KEYS[1], int(expiry - nowMillis)) end

if team ~= nil then
  local teamWrites = {}
  local function teamPut(name, value)
    teamWrites[#teamWrites + 1] = name
    teamWrites[#teamWrites + 1] = value
  end
  local teamExpiresAt = nowMillis + stateTTL
  for index = 1, 4 do
    if team.buckets[index] ~= nil and team.deltas[index] ~= team.readDeltas[index] then
      if team.deltas[index] > 0 then
        teamPut(BUCKET_FIELDS[index], int(now + team.deltas[index]))
        teamExpiresAt = math.max(teamExpiresAt, math.floor((now + team.deltas[index]) / 1000) + 1)
      elseif team.fields[BUCKET_FIELDS[index]] ~= nil then
        teamPut(BUCKET_FIELDS[index], '0')
      end
    end
  end
  if team.quotaChanged then
    if team.perDay > 0 then teamPut('qd', int(today)) teamPut('qdu', int(team.dayUsed)) end
    if team.perMonth > 0 then teamPut('qm', int(thisMonth)) teamPut('qmu', int(team.monthUsed)) end
  end
  if team.budgetChanged then
    if team.usdPerDay > 0 then teamPut('bd', int(today)) teamPut('bdu', int(team.dayCost)) end
    if team.usdPerMonth > 0 then teamPut('bm', int(thisMonth)) teamPut('bmu', int(team.monthCost)) end
  end
  if monthTokensChanged then
    teamPut('pm', int(thisMonth))
    teamPut('pmu', int(monthTokens))
  end
  if team.hasQuota or team.hasBudget or monthTokensChanged then
    local endDay = nextDay
    if team.perMonth > 0 or team.usdPerMonth > 0 or monthTokensChanged then endDay = nextMonthDay end
    teamExpiresAt = math.max(teamExpiresAt, (endDay + 1) * DAY_SECONDS * 1000)
  end
  -- The mirror of the node's slots for this key: written while the team limits concurrency (or
  -- to clear one left from when it did).
  if team.maxConcurrent > 0 or team.fields[team.mirror] ~= nil then
    teamPut(team.mirror, table.concat({ int(mine.slots), int(nowMillis + leaseTTL), int(nowMillis) }, ' '))
  end
  local teamExpiry = stateInteger(team.fields, 'exp') or 0
  local oldTeamExpiry = teamExpiry
  if #teamWrites > 0 and teamExpiresAt > teamExpiry then
    teamExpiry = teamExpiresAt + stateTTL
    teamPut('exp', int(teamExpiry))
  end
  if #teamWrites > 0 then redis.call('HSET', KEYS[2], unpack(teamWrites)) end
  if #team.forgotten > 0 then redis.call('HDEL', KEYS[2], unpack(team.forgotten)) end
  if teamExpiry ~= oldTeamExpiry then redis.call('PEXPIRE', KEYS[2], int(teamExpiry - nowMillis)) end
end

local quotaDay, quotaMonth = -1, -1
-- The periods a settlement corrects: the key's and its team's share one calendar.
if perDay > 0 or usdPerDay > 0 or (teamCalendar and (team.perDay > 0 or team.usdPerDay > 0)) then quotaDay = today end
if perMonth > 0 or usdPerMonth > 0 or tracking or (teamCalendar and (team.perMonth > 0 or team.usdPerMonth > 0)) then quotaMonth = thisMonth end
local out = { 1, corrupt, now, mine.epoch, lost, quotaDay, quotaMonth }
snapshotValues(out)
for _, v in ipairs(granted) do out[#out + 1] = v end
for _, v in ipairs(results) do out[#out + 1] = v end
-- Last, the budgets' spend after the call (today, this month; 0 without budgets): their headers.
out[#out + 1] = dayCost
out[#out + 1] = monthCost
-- With a team, then the team's budgets' spend after the call: its headers.
if team ~= nil then
  out[#out + 1] = team.dayCost
  out[#out + 1] = team.monthCost
end
return out

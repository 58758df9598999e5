-- renew.lua: extends the concurrency leases of requests still in flight on this node
-- (RedisLimiterStore.renewLeases). Requires gcra.lua before it.
--
-- KEYS  1 concurrency leases (zset: member request id, score expiry ms)
-- ARGV  1 lease TTL ms   2.. request ids
-- Returns the number of leases renewed. A lease already gone (settled, expired, or the database
-- was flushed) is not written again: XX only updates members that exist.

local now = redisNow()
local ttl = tonumber(ARGV[1])
local expiry = int(math.floor(now / 1000) + ttl)
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[i])
end
if renewed > 0 then
  redis.call('PEXPIRE', KEYS[1], int(ttl + 1000))
end
return renewed

-- Node heartbeat: registers this node as live until now + ttl, forgets nodes whose heartbeat
-- expired, and returns how many nodes are live. Uses Redis TIME so node clocks don't matter.
-- KEYS[1] = sluice:nodes (sorted set: member = node id, score = expiry in ms)
-- ARGV[1] = node id, ARGV[2] = ttl in ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2]) or 6000
if redis.call('TYPE', KEYS[1]).ok ~= 'zset' and redis.call('EXISTS', KEYS[1]) == 1 then
  -- Not ours or corrupted: start over rather than fail every heartbeat.
  redis.call('DEL', KEYS[1])
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 10)
return redis.call('ZCARD', KEYS[1])

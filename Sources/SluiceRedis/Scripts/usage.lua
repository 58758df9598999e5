-- usage.lua: a node's usage records for one API key and UTC day, accumulated on the node and
-- flushed in one call per key per interval (RedisLimiterStore.flushUsage). Requires gcra.lua.
--
-- KEYS  1 the day's usage hash (<model>:prompt, <model>:completion, <model>:requests, and with
--         prices <model>:cost_nanos (the known costs, nano-dollars) and <model>:cost_unknown (requests
--         whose cost was unknown))
--       2 the usage stream (only written when ARGV 3 > 0)
-- ARGV  1 usage TTL ms   2 stream max length (approximate trimming)   3 stream entries
--       4 models, then 6 per model: model, prompt tokens, completion tokens, requests, cost
--         (nano-dollars), requests of unknown cost
--       then 6 per stream entry: request id, model, prompt, completion, reserved prompt, reserved output
-- Returns corrupt 1|0. A usage hash of the wrong type, or a field that is not an integer, is
-- replaced rather than failing the flush.

local ttl, maxLength, entries, models = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local function isWrongType(reply)
  return type(reply) == 'table' and reply.err ~= nil and string.find(reply.err, 'WRONGTYPE', 1, true) ~= nil
end
local function add(field, amount)
  if amount == '0' and not string.find(field, ':requests', 1, true) then return end
  local reply = redis.pcall('HINCRBY', KEYS[1], field, amount)
  if type(reply) ~= 'table' then return end
  corrupt = 1
  if isWrongType(reply) then redis.call('DEL', KEYS[1]) end
  redis.call('HSET', KEYS[1], field, amount)
end
local at = 5
for _ = 1, models do
  local model = ARGV[at]
  add(model .. ':prompt', ARGV[at + 1])
  add(model .. ':completion', ARGV[at + 2])
  add(model .. ':requests', ARGV[at + 3])
  add(model .. ':cost_nanos', ARGV[at + 4])
  add(model .. ':cost_unknown', ARGV[at + 5])
  at = at + 6
end
if models > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end

if entries > 0 then
  local function append(i)
    return redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', maxLength, '*',
      'request_id', ARGV[i], 'model', ARGV[i + 1], 'prompt_tokens', ARGV[i + 2], 'completion_tokens', ARGV[i + 3],
      'reserved_prompt_tokens', ARGV[i + 4], 'reserved_output_tokens', ARGV[i + 5])
  end
  for _ = 1, entries do
    local appended = append(at)
    if isWrongType(appended) then
      redis.call('DEL', KEYS[2])
      corrupt = 1
      appended = append(at)
    end
    if type(appended) == 'table' and appended.err ~= nil then return redis.error_reply(appended.err) end
    at = at + 6
  end
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return corrupt

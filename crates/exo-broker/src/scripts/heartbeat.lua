-- heartbeat.lua: a worker's periodic tick, in one round trip.
--
-- ARGV[8]  worker id (also its consumer name)
-- ARGV[9]  heartbeat TTL in seconds
-- ARGV[10] number of heartbeat fields N
-- ARGV[11 .. 10+2N]  field, value pairs
-- then triples (entry id, task id, attempt) of the tasks the worker runs.
--
-- Writes the heartbeat hash with its TTL and records the worker in the
-- registry; renews the lease on the worker's running entries (XCLAIM to
-- itself resets their idle time, so the reaper leaves them alone); and
-- reports which of them were cancelled or are no longer this attempt.
-- Returns {cancelled task ids, lost task ids}.

local worker_id, ttl, field_count = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local worker = worker_key(worker_id)
local fields = {}
for i = 11, 10 + 2 * field_count do table.insert(fields, ARGV[i]) end
if #fields > 0 then redis.call('HSET', worker, unpack(fields)) end
redis.call('EXPIRE', worker, ttl)
redis.call('ZADD', REGISTRY, NOW, worker_id)
redis.call('ZREMRANGEBYSCORE', REGISTRY, '-inf', tonumber(NOW) - 86400)

local cancelled, lost, entries = {}, {}, {}
for i = 11 + 2 * field_count, #ARGV, 3 do
  local entry_id, task_id, attempt = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  table.insert(entries, entry_id)
  local state = redis.call('HMGET', task_key(task_id), 'status', 'attempt')
  if state[2] ~= attempt then
    table.insert(lost, task_id)
  elseif state[1] == 'cancelled' then
    table.insert(cancelled, task_id)
  end
end
if #entries > 0 then
  local args = { QUEUE, GROUP, worker_id, 0 }
  for _, entry_id in ipairs(entries) do table.insert(args, entry_id) end
  table.insert(args, 'JUSTID')
  redis.call('XCLAIM', unpack(args))
end
return { cancelled, lost }

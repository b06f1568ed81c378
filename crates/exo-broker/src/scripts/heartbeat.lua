-- heartbeat.lua: a worker's periodic tick, in one round trip.
--
-- ARGV[8]  worker id (also its consumer name)
-- ARGV[9]  heartbeat TTL in seconds
-- ARGV[10] ms after which an entry pending on this worker that it does not
--          run is an orphan (a claim whose reply was lost)
-- ARGV[11] number of heartbeat fields N
-- ARGV[12 .. 11+2N]  field, value pairs
-- then triples (entry id, task id, attempt) of the tasks the worker runs.
--
-- Writes the heartbeat hash with its TTL and records the worker in the
-- registry; renews the lease on the worker's running entries (XCLAIM to
-- itself resets their idle time, so the reaper leaves them alone); hands
-- orphans back to the queue without charging a retry; and reports which
-- running tasks were cancelled or are no longer this attempt.
-- Returns {cancelled task ids, lost task ids, orphans handed back}.

local worker_id, ttl, orphan_ms, field_count = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local worker = worker_key(worker_id)
local fields = {}
for i = 12, 11 + 2 * field_count do table.insert(fields, ARGV[i]) end
if #fields > 0 then redis.call('HSET', worker, unpack(fields)) end
redis.call('EXPIRE', worker, ttl)
redis.call('ZADD', REGISTRY, NOW, worker_id)
redis.call('ZREMRANGEBYSCORE', REGISTRY, '-inf', tonumber(NOW) - 86400)

local cancelled, lost, entries, running = {}, {}, {}, {}
for i = 12 + 2 * field_count, #ARGV, 3 do
  local entry_id, task_id, attempt = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  table.insert(entries, entry_id)
  running[entry_id] = true
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
-- Orphans: pending here, idle, and not run by this worker.
local handed_back = 0
for _, pending in ipairs(redis.call('XPENDING', QUEUE, GROUP, 'IDLE', orphan_ms, '-', '+', 100, worker_id)) do
  local entry_id = pending[1]
  if not running[entry_id] then
    local found = redis.call('XRANGE', QUEUE, entry_id, entry_id)
    local payload = found[1] and entry_payload(found[1][2])
    local task_id = payload and payload_task_id(payload)
    if task_id then
      local key = task_key(task_id)
      local state = redis.call('HMGET', key, 'status', 'entry')
      local status, owner = state[1], state[2]
      if owner == entry_id and status == 'running' then
        -- Claimed and marked running, but the worker never got the reply.
        redis.call('HINCRBY', key, 'attempt', 1)
        redis.call('HDEL', key, 'worker_id', 'started_at', 'entry')
        write_task(task_id, 'status', 'pending')
        redis.call('XADD', QUEUE, '*', 'payload', payload)
        ack(entry_id)
        handed_back = handed_back + 1
      elseif owner ~= entry_id and (not status or status == 'pending' or status == 'retrying') then
        -- Read by a blocking claim that never marked it: back in line as
        -- it is.
        redis.call('XADD', QUEUE, '*', 'payload', payload)
        ack(entry_id)
        handed_back = handed_back + 1
      elseif owner and owner ~= entry_id then
        -- A stray duplicate of a task another entry owns.
        ack(entry_id)
      end
      -- Anything else (its own task ended or cancelled) is the reaper's.
    end
  end
end
return { cancelled, lost, handed_back }

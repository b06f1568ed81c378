-- reap.lua: recover tasks whose worker died or stopped renewing its lease.
--
-- ARGV[8]  the calling worker's id
-- ARGV[9]  lease in ms: an entry idle this long is stuck
-- ARGV[10] max entries to handle per call
-- ARGV[11] default max retries
-- ARGV[12] ms an entry of a dead worker must be idle before it is taken
--          (so a heartbeat that is only late does not cost running tasks)
--
-- Also promotes due retries. A stuck entry is one pending on a consumer whose
-- heartbeat key is gone, or idle past the lease. Its task gets a new attempt
-- number (so the old worker's late writes are refused) and, within its
-- retry budget, goes straight back onto the queue as `retrying`; past the
-- budget it fails into the dead letter. Entries of tasks already finished or
-- cancelled are cleaned up, and so are stray entries that do not own their
-- task's current attempt (a duplicate): those never touch the task. Consumers of dead workers with nothing left
-- pending are removed from the group.
-- Returns {promoted, requeued, failed, cleaned}.

local me, lease_ms, limit, default_max = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11]
local dead_idle_ms = tonumber(ARGV[12]) or 0
local promoted = promote_due(limit)

local stuck, order, dead_consumers = {}, {}, {}
local function mark(entry_id, reason)
  if not stuck[entry_id] then
    stuck[entry_id] = reason
    table.insert(order, entry_id)
  end
end

local summary = redis.call('XPENDING', QUEUE, GROUP)
if summary[4] then
  for _, pair in ipairs(summary[4]) do
    local consumer = pair[1]
    if consumer ~= me and redis.call('EXISTS', worker_key(consumer)) == 0 then
      table.insert(dead_consumers, consumer)
      for _, pending in ipairs(redis.call('XPENDING', QUEUE, GROUP, 'IDLE', dead_idle_ms, '-', '+', limit, consumer)) do
        mark(pending[1], 'worker ' .. consumer .. ' stopped sending heartbeats')
      end
    end
  end
end
for _, pending in ipairs(redis.call('XPENDING', QUEUE, GROUP, 'IDLE', lease_ms, '-', '+', limit)) do
  mark(pending[1], 'worker ' .. pending[2] .. ' did not renew its lease for ' .. pending[3] .. ' ms')
end

local requeued, failed, cleaned = 0, 0, 0
for _, entry_id in ipairs(order) do
  local found = redis.call('XRANGE', QUEUE, entry_id, entry_id)
  local payload = found[1] and entry_payload(found[1][2])
  local task_id, _, problem = nil, nil, 'queue entry has no `payload` field'
  if payload then task_id, _, problem = payload_task_id(payload) end
  if not found[1] then
    redis.call('XACK', QUEUE, GROUP, entry_id)
    cleaned = cleaned + 1
  elseif problem then
    reject(entry_id, task_id, payload, problem)
    failed = failed + 1
  else
    local key = task_key(task_id)
    local state = redis.call('HMGET', key, 'status', 'attempt', 'retries', 'max_retries', 'ended', 'agent_name', 'entry')
    local status, agent = state[1], state[6]
    if state[7] and state[7] ~= entry_id then
      -- A stray entry: another entry owns the task's current attempt.
      ack(entry_id)
      cleaned = cleaned + 1
    elseif status == 'cancelled' then
      ack(entry_id)
      if state[5] ~= '1' then end_stream(task_id, { status_event('cancelled', agent, 'Task cancelled') }) end
      cleaned = cleaned + 1
    elseif status == 'completed' or status == 'failed' then
      ack(entry_id)
      cleaned = cleaned + 1
    else
      redis.call('HINCRBY', key, 'attempt', 1)
      local retries = tonumber(state[3] or '0')
      local max_retries = tonumber(state[4] or default_max)
      local message = 'attempt ' .. (state[2] or '?') .. ' lost: ' .. stuck[entry_id]
      ack(entry_id)
      if retries < max_retries then
        write_task(task_id, 'status', 'retrying', 'retries', retries + 1, 'error', message, 'completed_at', NOW)
        redis.call('XADD', QUEUE, '*', 'payload', payload)
        append_events(task_id, { error_event(message, 'WorkerLost', agent, true) })
        requeued = requeued + 1
      else
        write_task(task_id, 'status', 'failed', 'error', message, 'completed_at', NOW)
        dead_letter(task_id, payload, message, state[2])
        end_stream(task_id, { error_event(message, 'WorkerLost', agent, false), status_event('error', agent, message) })
        failed = failed + 1
      end
    end
  end
end

for _, consumer in ipairs(dead_consumers) do
  local left = redis.call('XPENDING', QUEUE, GROUP, '-', '+', 1, consumer)
  if #left == 0 then redis.call('XGROUP', 'DELCONSUMER', QUEUE, GROUP, consumer) end
end
return { promoted, requeued, failed, cleaned }

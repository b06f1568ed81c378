-- submit.lua: enqueue a task in one round trip.
--
-- ARGV[7]  task id
-- ARGV[8]  payload JSON (the queue entry's single `payload` field)
-- ARGV[9]  agent name ("" when unknown)
-- ARGV[10] max retries ("" for the worker default)
-- ARGV[11] idempotency key ("" for none)
-- ARGV[12] tenant ("" for none; the extension field `tenant`)
-- ARGV[13] run at (Unix ms; "" for now)
--
-- Refuses an invalid task id (see valid_task_id) with an error reply.
-- Writes the queue entry, the task hash with status `pending` (its `entry`
-- names the queue entry), the index set and the timeline, and trims index
-- entries older than the task TTL. A task due later waits in the delayed
-- set (no queue entry yet; the hash says `scheduled_for`) until a claim or
-- a reap promotes it.
-- Returns {task_id, created}: created is 0 when the idempotency key was seen
-- before (task_id is then the first submission's id) or when a task with
-- this id exists already (it is left as it is).

local task_id, payload, agent_name = ARGV[7], ARGV[8], ARGV[9]
local max_retries, idempotency, tenant = ARGV[10], ARGV[11], ARGV[12]
local run_at_ms = tonumber(ARGV[13]) or 0
if not valid_task_id(task_id) then
  return redis.error_reply('ERR invalid task id: 1 to 128 letters, digits, `_`, `-`, `.` or `:`, and not `index` or `timeline`')
end

if idempotency ~= '' then
  local idem_key = idempotency_key(idempotency)
  local existing = redis.call('GET', idem_key)
  if existing then return { existing, 0 } end
  redis.call('SET', idem_key, task_id, 'EX', TASK_TTL)
end

-- A repeated submit (a retry after a lost reply, say) must not reset a task
-- that exists: it is the same task.
if redis.call('EXISTS', task_key(task_id)) == 1 then
  if idempotency ~= '' then redis.call('DEL', idempotency_key(idempotency)) end
  return { task_id, 0 }
end
local key
if run_at_ms > now_ms() then
  redis.call('ZADD', DELAYED, run_at_ms, task_id)
  redis.call('HSET', DELAYED_PAYLOADS, task_id, payload)
  key = write_task(task_id, 'status', 'pending', 'created_at', NOW, 'agent_name', agent_name,
    'scheduled_for', string.format('%.3f', run_at_ms / 1000))
else
  local entry_id = redis.call('XADD', QUEUE, '*', 'payload', payload)
  key = write_task(task_id, 'status', 'pending', 'created_at', NOW, 'agent_name', agent_name, 'entry', entry_id)
end
if max_retries ~= '' then redis.call('HSET', key, 'max_retries', max_retries) end
if tenant ~= '' then redis.call('HSET', key, 'tenant', tenant) end
redis.call('ZADD', TIMELINE, NOW, task_id)
trim_index(100)
return { task_id, 1 }

-- submit.lua: enqueue a task in one round trip.
--
-- ARGV[7]  task id
-- ARGV[8]  payload JSON (the queue entry's single `payload` field)
-- ARGV[9]  agent name ("" when unknown)
-- ARGV[10] max retries ("" for the worker default)
-- ARGV[11] idempotency key ("" for none)
-- ARGV[12] tenant ("" for none; the extension field `tenant`)
-- ARGV[13] run at (Unix ms; "" for now)
-- ARGV[14] priority, 1 to 10 ("" for none; see priority_score)
-- ARGV[15] concurrency key ("" for none)
-- ARGV[16] multitask strategy of a conversation (the concurrency key's
--          tasks): reject | enqueue | interrupt | rollback ("" for none)
--
-- Refuses an invalid task id (see valid_task_id) with an error reply.
-- Writes the queue entry, the task hash with status `pending` (its `entry`
-- names the queue entry; `payload_checked` says exo's client built the
-- payload, so a claim need not decode it), the index set and the
-- timeline, and trims index
-- entries older than the task TTL. A task due later waits in the delayed
-- set (no queue entry yet; the hash says `scheduled_for`) until a claim or
-- a reap promotes it. A task with a priority joins the prioritized set
-- when tasks are already waiting (else it goes on the stream at once: no
-- one waits to be passed).
-- A task of a conversation whose earlier tasks have not ended: `reject`
-- refuses it, `enqueue` queues it (the conversation runs one task at a
-- time), `interrupt` cancels the earlier tasks first (what they wrote to
-- memory stays), `rollback` cancels them and marks them `rollback` (their
-- workers delete what they wrote to memory).
-- Returns {task_id, created}: created is 0 when the idempotency key was seen
-- before (task_id is then the first submission's id) or when a task with
-- this id exists already (it is left as it is); 2 when the conversation
-- is busy and the strategy is `reject` (task_id is then the busy task).

local task_id, payload, agent_name = ARGV[7], ARGV[8], ARGV[9]
local max_retries, idempotency, tenant = ARGV[10], ARGV[11], ARGV[12]
local run_at_ms = tonumber(ARGV[13]) or 0
local priority, ckey, strategy = ARGV[14] or '', ARGV[15] or '', ARGV[16] or ''
if not valid_task_id(task_id) then
  return redis.error_reply('ERR invalid task id: 1 to 128 letters, digits, `_`, `-`, `.` or `:`, and not `index` or `timeline`')
end
if ckey ~= '' and not valid_concurrency_key(ckey) then
  return redis.error_reply('ERR invalid concurrency key: 1 to 128 letters, digits, `_`, `.`, `:`, `@`, `/` or `-`')
end

local idem_key = idempotency ~= '' and idempotency_key(idempotency)
if idem_key then
  local existing = rcall('GET', idem_key)
  if existing then return { existing, 0 } end
end

-- A repeated submit (a retry after a lost reply, say) must not reset a task
-- that exists: it is the same task.
if rcall('EXISTS', task_key(task_id)) == 1 then
  return { task_id, 0 }
end

if ckey ~= '' and strategy ~= '' then
  local tasks = key_tasks(ckey)
  local busy = {}
  for _, other in ipairs(rcall('SMEMBERS', tasks)) do
    local state = rcall('HMGET', task_key(other), 'status', 'agent_name', 'waiting_for')
    if not state[1] or TERMINAL[state[1]] then
      rcall('SREM', tasks, other)
    else
      table.insert(busy, { other, state })
    end
  end
  if #busy > 0 then
    if strategy == 'reject' then return { busy[1][1], 2 } end
    if strategy == 'interrupt' or strategy == 'rollback' then
      for _, task in ipairs(busy) do
        if strategy == 'rollback' then rcall('HSET', task_key(task[1]), 'rollback', '1') end
        cancel_task(task[1], task[2][1], task[2][2], task[2][3])
      end
    end
  end
  rcall('SADD', tasks, task_id)
  rcall('EXPIRE', tasks, TASK_TTL)
end

if idem_key then rcall('SET', idem_key, task_id, 'EX', TASK_TTL) end
local key
if run_at_ms > now_ms() then
  rcall('ZADD', DELAYED, run_at_ms, task_id)
  rcall('HSET', DELAYED_PAYLOADS, task_id, payload)
  key = write_task(task_id, 'status', 'pending', 'created_at', NOW, 'agent_name', agent_name,
    'payload_checked', '1', 'scheduled_for', string.format('%.3f', run_at_ms / 1000))
elseif priority ~= '' and (rcall('EXISTS', PRIORITIZED) == 1 or undelivered() > 0) then
  prioritize(task_id, payload, priority_score(priority, now_ms()))
  key = write_task(task_id, 'status', 'pending', 'created_at', NOW, 'agent_name', agent_name,
    'payload_checked', '1')
else
  local entry_id = rcall('XADD', QUEUE, '*', 'payload', payload)
  key = write_task(task_id, 'status', 'pending', 'created_at', NOW, 'agent_name', agent_name,
    'payload_checked', '1', 'entry', entry_id)
end
if max_retries ~= '' then rcall('HSET', key, 'max_retries', max_retries) end
if tenant ~= '' then rcall('HSET', key, 'tenant', tenant) end
if priority ~= '' then rcall('HSET', key, 'priority', priority) end
if ckey ~= '' then rcall('HSET', key, 'concurrency_key', ckey) end
rcall('ZADD', TIMELINE, NOW, task_id)
trim_index(100)
return { task_id, 1 }

-- finish.lua: end one attempt (completed, failed or cancelled), fenced.
--
-- ARGV[7]  task id
-- ARGV[8]  queue entry id
-- ARGV[9]  the fence from claim ("<attempt>:<token>"; see fence_holds)
-- ARGV[10] outcome: completed | failed | cancelled | waiting
-- ARGV[11] completed: the result JSON; failed: the error message; waiting:
--          the approval request JSON (the tool call that waits)
-- ARGV[12] failed: "1" when the failure may be retried
-- ARGV[13] failed: backoff before the retry, in ms; waiting: how long the
--          wait may last, in ms
-- ARGV[14] failed: the raw payload, used for the retry or the dead letter
--          only when the queue entry is gone (its exact bytes are preferred)
-- ARGV[15] the terminal status event JSON (used when the task ends); for
--          waiting, the `waiting_for_tool` status event
-- ARGV[16] the status event JSON that announces a retry
-- ARGV[17] default max retries
-- ARGV[18] retries the executor spent inside this attempt (added to
--          `retries`; Temporal retries activities itself)
-- ARGV[19] tasks to claim for this worker once this attempt has ended (0
--          for none): a worker's slot goes on to the next task in the same
--          round trip
-- ARGV[20] the consumer (worker id) that claims them
-- ARGV[21] that claim's random token (see fence_holds)
-- ARGV[22] the most retries a payload may ask for (the worker's cap)
-- ARGV[23] the worker whose heartbeat hash counts this ending ("" for none)
-- ARGV[24] what that hash shows as `current_task_id` once the attempt has
--          ended (a task the worker still runs, or ""), unless a task is
--          claimed here (then that one)
-- ARGV[25] "1" when ARGV[24] is to be written
-- ARGV[26] the claiming worker's concurrency rules (JSON; see claim.lua)
-- ARGV[27] what the attempt's model calls used: JSON [[model, input
--          tokens, output tokens, calls, cost in millionths of a dollar],
--          ...] ("" for none); see record_usage
-- ARGV[28] n, the number of step-journal records that follow
-- ARGV[29...28+n] step-journal records not yet written (kept for a retry
--          or a wait; a task that ends drops its journal)
-- ARGV[29+n...] events of the run not yet published
--
-- `waiting` (the run stopped at a tool call that needs a person's
-- approval): the task goes back to `pending` with no queue entry, its
-- payload kept in the delayed payloads and its id in the approvals set
-- (scored by the wait's deadline), its hash showing `waiting_for` =
-- `approval`, `approval` and `approval_deadline`. The slot is free; a
-- decision (decide.lua, or the reaper at the deadline) puts it back on the
-- queue.
--
-- When the attempt ends here (not in a repeated call) and the worker's
-- heartbeat hash exists, its `tasks_processed` (completed) or
-- `tasks_failed` (failed or retrying) goes up by one in the same round
-- trip, so a fleet listing is right before the next heartbeat.
--
-- The write lands only if the attempt is still current. Returns one of
-- {"completed"}, {"cancelled"}, {"failed"}, {"retrying", retries, due_ms},
-- {"cancel_requested"} (a completion or failure refused because the task was
-- cancelled; finish it as cancelled), {"stale", status, attempt}.
-- Calling it again with the same arguments after it landed returns the same
-- outcome, so a retry after a lost reply is safe (the caller asks for no
-- claim when it repeats a call). When ARGV[19] asks for tasks, the reply is
-- {that outcome, claim reply} (see claim.lua), and the claim happens only
-- when the attempt ended here (completed, cancelled, failed or retrying).

local ended_here = false
-- The concurrency key of the task whose attempt ends (read with its state).
local attempt_key = nil

local function finish_attempt()
  local task_id, entry_id, fence, outcome = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
  local attempt = string.match(fence, '^(%d+)') or ''
  local key = task_key(task_id)
  local state = redis.call('HMGET', key, 'status', 'attempt', 'retries', 'max_retries', 'ended', 'agent_name', 'lease', 'error', 'concurrency_key')
  local status = state[1]
  attempt_key = state[9]

  if not fence_matches(fence, state[2], state[7]) then
    return { 'stale', status or '', state[2] or '' }
  end
  -- A repeat of a call that already landed.
  if outcome == 'failed' and status == 'retrying' then
    return { 'retrying', tonumber(state[3] or '0'), -1 }
  end
  if (status == 'completed' or status == 'failed') and status == outcome then
    return { status }
  end
  if outcome == 'waiting' and status == 'pending' then
    return { 'waiting' }
  end
  if status == 'cancelled' and outcome == 'cancelled' and state[5] == '1' then
    ack(entry_id)
    return { 'cancelled' }
  end
  -- A client cancelled the task while it ran.
  if status == 'cancelled' and outcome ~= 'cancelled' then
    return { 'cancel_requested' }
  end
  if status ~= 'running' and status ~= 'cancelled' then
    return { 'stale', status or '', state[2] or '' }
  end

  local journal_count = tonumber(ARGV[28]) or 0
  local journal = {}
  for i = 29, 28 + journal_count do table.insert(journal, ARGV[i]) end
  local events = {}
  for i = 29 + journal_count, #ARGV do table.insert(events, ARGV[i]) end
  -- The payload exactly as queued, for a retry or the dead letter.
  local function queued_payload()
    local found = redis.call('XRANGE', QUEUE, entry_id, entry_id)
    local payload = found[1] and entry_payload(found[1][2])
    if payload then return payload end
    return ARGV[14]
  end
  local reply
  local inner_retries = tonumber(ARGV[18]) or 0
  if inner_retries > 0 then
    redis.call('HSET', key, 'retries', tonumber(state[3] or '0') + inner_retries)
    state[3] = tostring(tonumber(state[3] or '0') + inner_retries)
  end

  -- The task was claimed here, so exo indexed it: `update_task`. The
  -- stream's end (`ended`) is written with the final state.
  if outcome == 'waiting' then
    local payload = queued_payload()
    local deadline = now_ms() + (tonumber(ARGV[13]) or 0)
    redis.call('HDEL', key, 'entry')
    update_task(task_id, 'status', 'pending', 'waiting_for', 'approval', 'approval', ARGV[11],
      'approval_deadline', string.format('%.3f', deadline / 1000))
    redis.call('ZADD', APPROVALS, deadline, task_id)
    redis.call('HSET', DELAYED_PAYLOADS, task_id, payload)
    append_journal(task_id, journal)
    table.insert(events, ARGV[15])
    ack(entry_id)
    append_events(task_id, events)
    ended_here = true
    return { 'waiting' }
  end

  if outcome == 'completed' then
    if state[8] then redis.call('HDEL', key, 'error') end
    update_task(task_id, 'status', 'completed', 'completed_at', NOW, 'result', ARGV[11], 'ended', '1')
    table.insert(events, ARGV[15])
    reply = { 'completed' }
  elseif outcome == 'cancelled' then
    if status ~= 'cancelled' then
      update_task(task_id, 'status', 'cancelled', 'completed_at', NOW, 'ended', '1')
    elseif state[5] ~= '1' then
      redis.call('HSET', key, 'ended', '1')
    end
    if state[5] ~= '1' then table.insert(events, ARGV[15]) end
    reply = { 'cancelled' }
  else
    local retries = tonumber(state[3] or '0')
    local max_retries = tonumber(state[4] or ARGV[17])
    if ARGV[12] == '1' and retries < max_retries then
      local due = now_ms() + tonumber(ARGV[13])
      local payload = queued_payload()
      -- Waiting in the delayed set now: no entry carries it until promoted.
      redis.call('HDEL', key, 'entry')
      update_task(task_id, 'status', 'retrying', 'retries', retries + 1, 'error', ARGV[11], 'completed_at', NOW)
      redis.call('ZADD', DELAYED, due, task_id)
      redis.call('HSET', DELAYED_PAYLOADS, task_id, payload)
      append_journal(task_id, journal)
      table.insert(events, ARGV[16])
      ack(entry_id)
      append_events(task_id, events)
      ended_here = true
      return { 'retrying', retries + 1, due }
    end
    update_task(task_id, 'status', 'failed', 'error', ARGV[11], 'completed_at', NOW, 'ended', '1')
    dead_letter(task_id, queued_payload(), ARGV[11], attempt)
    table.insert(events, ARGV[15])
    reply = { 'failed' }
  end

  ack(entry_id)
  append_events(task_id, events)
  redis.call('DEL', journal_key(task_id))
  ended_here = true
  return reply
end

-- The usage ledger: what the attempt's model calls used goes into the
-- task hash (`usage_input_tokens`, `usage_output_tokens`, `usage_calls`,
-- `usage_cost_micros`, summed over attempts) and into the ledger's bucket
-- of the minute (kept 2 days) and of the hour (kept 35 days), counted by
-- model, tenant and agent.
local USAGE_METRICS = { 'input', 'output', 'calls', 'cost' }
local function record_usage(task_id)
  local text = ARGV[27]
  if not text or text == '' then return end
  local ok, spent = pcall(cjson.decode, text)
  if not ok or type(spent) ~= 'table' then return end
  local key = task_key(task_id)
  local owner = redis.call('HMGET', key, 'tenant', 'agent_name')
  local minute = math.floor(NOW_MS / 60000)
  local buckets = {
    { USAGE_FAMILY .. 'm:' .. minute, 2 * 86400 },
    { USAGE_FAMILY .. 'h:' .. math.floor(minute / 60), 35 * 86400 },
  }
  local hash_fields = { 'usage_input_tokens', 'usage_output_tokens', 'usage_calls', 'usage_cost_micros' }
  for _, row in ipairs(spent) do
    if type(row) == 'table' and type(row[1]) == 'string' then
      local names = { 'model|' .. row[1], 'tenant|' .. (owner[1] or ''), 'agent|' .. (owner[2] or '') }
      for m = 1, 4 do
        local amount = math.floor(tonumber(row[m + 1]) or 0)
        if amount > 0 then
          redis.call('HINCRBY', key, hash_fields[m], amount)
          for _, bucket in ipairs(buckets) do
            for _, name in ipairs(names) do
              redis.call('HINCRBY', bucket[1], name .. '|' .. USAGE_METRICS[m], amount)
            end
          end
        end
      end
    end
  end
  for _, bucket in ipairs(buckets) do redis.call('EXPIRE', bucket[1], bucket[2]) end
end

-- The worker's counters and current task, in its heartbeat hash.
local function note_on_worker(outcome)
  local worker_id = ARGV[23]
  if worker_id == '' then return end
  local worker = worker_key(worker_id)
  if redis.call('EXISTS', worker) == 0 then return end
  if outcome == 'completed' then
    redis.call('HINCRBY', worker, 'tasks_processed', 1)
  elseif outcome == 'failed' or outcome == 'retrying' then
    redis.call('HINCRBY', worker, 'tasks_failed', 1)
  end
  if ARGV[25] == '1' then
    redis.call('HSET', worker, 'current_task_id', ARGV[24])
  end
end

local reply = finish_attempt()
if ended_here then
  note_on_worker(reply[1])
  record_usage(ARGV[7])
  -- The attempt no longer holds a slot of its concurrency key.
  free_slot(ARGV[7], attempt_key)
end
local claim_count = tonumber(ARGV[19]) or 0
if claim_count <= 0 then return reply end
local ended = { completed = true, cancelled = true, failed = true, retrying = true, waiting = true }
if not ended[reply[1]] then return { reply, { -1, {}, {}, now_ms() } } end
return { reply, claim_batch(ARGV[20], claim_count, ARGV[17], tonumber(ARGV[22]), ARGV[21], {}, ARGV[26]) }

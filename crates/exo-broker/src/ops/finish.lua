-- finish.lua: end attempts (completed, failed, cancelled or waiting),
-- each fenced, and claim the next tasks for the worker's freed slots, in
-- one call. A worker's slots that end together share one call: the
-- keys, the clock, the worker's counters and the claim are paid once, and
-- the queue acknowledgements and the active set's changes go as one
-- command each.
--
-- ARGV[7]  n, the number of attempts that end here (blocks below)
-- ARGV[8]  the consumer (worker id) that claims the next tasks
-- ARGV[9]  that claim's random token (see fence_holds)
-- ARGV[10] the most retries a payload may ask for (the worker's cap)
-- ARGV[11] the claiming worker's concurrency rules (JSON; see claim.lua)
-- ARGV[12] default max retries
-- ARGV[13] the worker whose heartbeat hash counts these endings ("" for
--          none)
-- ARGV[14] what that hash shows as `current_task_id` once the attempts
--          have ended (a task the worker still runs, or ""), unless a task
--          is claimed here (then that one)
-- ARGV[15] "1" when ARGV[14] is to be written
-- ARGV[16...] n blocks, each its field count m, then m fields:
--   1  task id
--   2  queue entry id
--   3  the fence from claim ("<attempt>:<token>"; see fence_holds)
--   4  outcome: completed | failed | cancelled | waiting
--   5  completed: the result JSON; failed: the error message; waiting: the
--      approval request JSON (the tool call that waits)
--   6  failed: "1" when the failure may be retried
--   7  failed: backoff before the retry, in ms; waiting: how long the wait
--      may last, in ms
--   8  failed: the raw payload, used for the retry or the dead letter only
--      when the queue entry is gone (its exact bytes are preferred)
--   9  the terminal status event JSON (used when the task ends); for
--      waiting, the `waiting_for_tool` status event
--   10 the status event JSON that announces a retry
--   11 retries the executor spent inside this attempt (added to
--      `retries`; Temporal retries activities itself)
--   12 what the attempt's model calls used: JSON [[model, input tokens,
--      output tokens, calls, cost in millionths of a dollar], ...] ("" for
--      none); see record_usage
--   13 tasks to claim for this slot once its attempt has ended (0 for
--      none): the slot goes on to its next task in the same round trip
--   14 j, the number of step-journal records that follow
--   15...14+j step-journal records not yet written (kept for a retry or a
--      wait; a task that ends drops its journal)
--   15+j... events of the run not yet published
--
-- `waiting` (the run stopped at a tool call that needs a person's
-- approval): the task goes back to `pending` with no queue entry, its
-- payload kept in the delayed payloads and its id in the approvals set
-- (scored by the wait's deadline), its hash showing `waiting_for` =
-- `approval`, `approval` and `approval_deadline`. The slot is free; a
-- decision (decide.lua, or the reaper at the deadline) puts it back on the
-- queue.
--
-- When an attempt ends here (not in a repeated call) and the worker's
-- heartbeat hash exists, its `tasks_processed` (completed) or
-- `tasks_failed` (failed or retrying) goes up in the same round trip, so a
-- fleet listing is right before the next heartbeat.
--
-- Each write lands only if its attempt is still current. Returns {replies,
-- claim, asked}: replies holds, block by block, one of "completed",
-- "cancelled", "failed", "waiting", {"retrying", retries, due_ms},
-- "cancel_requested" (a completion or failure refused because the task
-- was cancelled; finish it as cancelled), {"stale", status, attempt}, or
-- {"error", message} (that block met an error, a key of the wrong type
-- say; the other blocks are not affected). Calling it again with the same
-- arguments after it landed returns the same outcomes, so a retry after a
-- lost reply is safe (the caller asks for no claim when it repeats a
-- call). claim is 0 when no block asked for tasks, else a claim reply
-- (see claim.lua) for the blocks whose attempt ended here, with a fifth
-- element, the claim's error message, when the claim failed; asked holds,
-- block by block, how many of its rows are that block's (in block order;
-- a block whose attempt did not end here gets none, and the claim may
-- have found fewer tasks than asked).

local DEFAULT_MAX = ARGV[12]

-- The payload exactly as queued, for a retry or the dead letter; the
-- worker's copy (`fallback`) when the entry is gone.
local function queued_payload(entry_id, fallback)
  local found = rcall('XRANGE', QUEUE, entry_id, entry_id)
  local payload = found[1] and entry_payload(found[1][2])
  if payload then return payload end
  return fallback
end

-- Ends one attempt: its block's field k is ARGV[b + k], and the block has
-- `size` fields (read where they are: no table per block). Returns its
-- reply (a word, or a table for a reply with values), whether it ended
-- here, and the concurrency key of its task.
local function finish_attempt(b, size)
  local task_id, entry_id, fence, outcome = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local key = task_key(task_id)
  -- What every ending reads; the rest (retries, max_retries, ended) only
  -- a slow path needs (see below).
  local state = rcall('HMGET', key, 'status', 'attempt', 'lease', 'concurrency_key', 'journal', 'error')
  local status = state[1]
  -- The concurrency key of the task whose attempt ends.
  local attempt_key = state[4]

  local attempt = fence_matches(fence, state[2], state[3])
  if not attempt then
    return { 'stale', status or '', state[2] or '' }
  end
  local inner_retries = number_of(ARGV[b + 11]) or 0
  -- A running task that completes with no retries inside its attempt (the
  -- usual ending) needs none of them.
  local retries, max_retries, ended
  if outcome ~= 'completed' or status ~= 'running' or inner_retries > 0 then
    local more = rcall('HMGET', key, 'retries', 'max_retries', 'ended')
    retries, max_retries, ended = more[1], more[2], more[3]
  end
  -- A repeat of a call that already landed.
  -- (A call that ended before its acknowledgements were sent, aborted by
  -- a passing error, sends them now.)
  if outcome == 'failed' and status == 'retrying' then
    ack_later(entry_id)
    return { 'retrying', tonumber(retries or '0'), -1 }
  end
  if (status == 'completed' or status == 'failed') and status == outcome then
    ack_later(entry_id)
    return status
  end
  if outcome == 'waiting' and status == 'pending' then
    return 'waiting'
  end
  if status == 'cancelled' and outcome == 'cancelled' and ended == '1' then
    ack_later(entry_id)
    return 'cancelled'
  end
  -- A client cancelled the task while it ran.
  if status == 'cancelled' and outcome ~= 'cancelled' then
    return 'cancel_requested'
  end
  if status ~= 'running' and status ~= 'cancelled' then
    return { 'stale', status or '', state[2] or '' }
  end

  -- Journal records are ARGV[b + 15 .. b + 14 + j]; the run's events
  -- follow, up to the block's end.
  local journal_last = math.min(b + 14 + (number_of(ARGV[b + 14]) or 0), b + size)
  local events_first, events_last = journal_last + 1, b + size
  if inner_retries > 0 then
    retries = tostring(tonumber(retries or '0') + inner_retries)
    rcall('HSET', key, 'retries', retries)
  end

  -- The task was claimed here, so exo indexed it: `update_task`. The
  -- stream's end (`ended`) is written with the final state.
  if outcome == 'waiting' then
    local payload = queued_payload(entry_id, ARGV[b + 8])
    local deadline = now_ms() + (tonumber(ARGV[b + 7]) or 0)
    rcall('HDEL', key, 'entry')
    update_task(task_id, 'status', 'pending', 'waiting_for', 'approval', 'approval', ARGV[b + 5],
      'approval_deadline', string.format('%.3f', deadline / 1000))
    rcall('ZADD', APPROVALS, deadline, task_id)
    rcall('HSET', DELAYED_PAYLOADS, task_id, payload)
    append_journal_range(task_id, ARGV, b + 15, journal_last)
    ack_later(entry_id)
    append_event_range(task_id, ARGV, events_first, events_last, ARGV[b + 9])
    return 'waiting', true, attempt_key
  end

  local reply, final
  if outcome == 'completed' then
    if state[6] then rcall('HDEL', key, 'error') end
    update_task(task_id, 'status', 'completed', 'completed_at', NOW, 'result', ARGV[b + 5], 'ended', '1')
    final = ARGV[b + 9]
    reply = 'completed'
  elseif outcome == 'cancelled' then
    if status ~= 'cancelled' then
      update_task(task_id, 'status', 'cancelled', 'completed_at', NOW, 'ended', '1')
    elseif ended ~= '1' then
      rcall('HSET', key, 'ended', '1')
    end
    if ended ~= '1' then final = ARGV[b + 9] end
    reply = 'cancelled'
  else
    local spent = tonumber(retries or '0')
    if ARGV[b + 6] == '1' and spent < tonumber(max_retries or DEFAULT_MAX) then
      local due = now_ms() + tonumber(ARGV[b + 7])
      local payload = queued_payload(entry_id, ARGV[b + 8])
      -- Waiting in the delayed set now: no entry carries it until promoted.
      rcall('HDEL', key, 'entry')
      update_task(task_id, 'status', 'retrying', 'retries', spent + 1, 'error', ARGV[b + 5], 'completed_at', NOW)
      rcall('ZADD', DELAYED, due, task_id)
      rcall('HSET', DELAYED_PAYLOADS, task_id, payload)
      append_journal_range(task_id, ARGV, b + 15, journal_last)
      ack_later(entry_id)
      append_event_range(task_id, ARGV, events_first, events_last, ARGV[b + 10])
      return { 'retrying', spent + 1, due }, true, attempt_key
    end
    update_task(task_id, 'status', 'failed', 'error', ARGV[b + 5], 'completed_at', NOW, 'ended', '1')
    dead_letter(task_id, queued_payload(entry_id, ARGV[b + 8]), ARGV[b + 5], attempt)
    final = ARGV[b + 9]
    reply = 'failed'
  end

  ack_later(entry_id)
  append_event_range(task_id, ARGV, events_first, events_last, final)
  -- (A journal written before the hash said so expires with the hash.)
  if state[5] then rcall('DEL', journal_key(task_id)) end
  return reply, true, attempt_key
end

-- The usage ledger: what the attempt's model calls used goes into the
-- task hash (`usage_input_tokens`, `usage_output_tokens`, `usage_calls`,
-- `usage_cost_micros`, summed over attempts) and into the ledger's bucket
-- of the minute (kept 2 days) and of the hour (kept 35 days), counted by
-- model, tenant and agent. The buckets' counts of every attempt of the
-- call are summed first and written once per counter (`write_ledger`).
local USAGE_METRICS = { 'input', 'output', 'calls', 'cost' }
local USAGE_FIELDS = { 'usage_input_tokens', 'usage_output_tokens', 'usage_calls', 'usage_cost_micros' }
-- Bucket key -> {ttl, counters (name -> amount), names in first-seen order}.
local LEDGER, LEDGER_ORDER = {}, {}
local function count_in_bucket(bucket, ttl, name, amount)
  local entry = LEDGER[bucket]
  if not entry then
    entry = { ttl = ttl, counters = {}, names = {} }
    LEDGER[bucket] = entry
    table.insert(LEDGER_ORDER, bucket)
  end
  if not entry.counters[name] then table.insert(entry.names, name) end
  entry.counters[name] = (entry.counters[name] or 0) + amount
end

local function record_usage(task_id, text)
  if not text or text == '' then return end
  local ok, spent = pcall(cjson.decode, text)
  if not ok or type(spent) ~= 'table' then return end
  local key = task_key(task_id)
  local owner = rcall('HMGET', key, 'tenant', 'agent_name')
  local minute = math.floor(NOW_MS / 60000)
  local buckets = {
    { USAGE_FAMILY .. 'm:' .. minute, 2 * 86400 },
    { USAGE_FAMILY .. 'h:' .. math.floor(minute / 60), 35 * 86400 },
  }
  for _, row in ipairs(spent) do
    if type(row) == 'table' and type(row[1]) == 'string' then
      local names = { 'model|' .. row[1], 'tenant|' .. (owner[1] or ''), 'agent|' .. (owner[2] or '') }
      for m = 1, 4 do
        local amount = math.floor(tonumber(row[m + 1]) or 0)
        if amount > 0 then
          rcall('HINCRBY', key, USAGE_FIELDS[m], amount)
          for _, bucket in ipairs(buckets) do
            for _, name in ipairs(names) do
              count_in_bucket(bucket[1], bucket[2], name .. '|' .. USAGE_METRICS[m], amount)
            end
          end
        end
      end
    end
  end
end

local function write_ledger()
  for _, bucket in ipairs(LEDGER_ORDER) do
    local entry = LEDGER[bucket]
    for _, name in ipairs(entry.names) do
      rcall('HINCRBY', bucket, name, entry.counters[name])
    end
    rcall('EXPIRE', bucket, entry.ttl)
  end
end

-- `finish_attempt`, then the attempt's usage and its concurrency slot.
local function end_attempt(b, size)
  local reply, ended, attempt_key = finish_attempt(b, size)
  if ended then
    record_usage(ARGV[b + 1], ARGV[b + 12])
    -- The attempt no longer holds a slot of its concurrency key.
    free_slot(ARGV[b + 1], attempt_key)
  end
  return reply, ended
end

-- One block under pcall: an error (a key of the wrong type, say) becomes
-- that block's reply and the others go on. A passing error (see
-- PASSING_ERRORS) ends the call, so the caller retries it whole.
local function finish_block(b, size)
  if size < 14 then return { 'error', 'a block has at least 14 fields, this one ' .. size }, false end
  local ok, reply, ended = pcall(end_attempt, b, size)
  if ok then return reply, ended end
  return { 'error', caught(reply) }, false
end

local COUNTED = { completed = 'completed', failed = 'failed', retrying = 'failed' }

return with_deferred_writes(function()
  local replies, given = {}, {}
  local counts = { completed = 0, failed = 0 }
  local claim_count, asked = 0, false
  local at = 16
  for i = 1, tonumber(ARGV[7]) or 0 do
    -- The block's fields are ARGV[at + 1 .. at + size].
    local size = number_of(ARGV[at]) or 0
    local reply, ended = finish_block(at, size)
    local wanted = size >= 13 and number_of(ARGV[at + 13]) or 0
    at = at + size + 1
    asked = asked or wanted > 0
    given[i] = 0
    if ended then
      local counted = COUNTED[type(reply) == 'table' and reply[1] or reply]
      if counted then counts[counted] = counts[counted] + 1 end
      claim_count = claim_count + wanted
      given[i] = wanted
    end
    -- (An outcome of one word goes as that word: a table costs the reply
    -- more.)
    replies[i] = reply
  end
  -- The ledger is bookkeeping: a bucket Redis refuses (a key of another
  -- type) does not undo the endings.
  local ledger_ok, ledger_error = pcall(write_ledger)
  if not ledger_ok then caught(ledger_error) end
  local claim = 0
  if asked then
    claim = { -1, {}, {}, now_ms() }
    if claim_count > 0 then
      local ok, taken = pcall(claim_batch, ARGV[8], claim_count, DEFAULT_MAX, tonumber(ARGV[10]), ARGV[9], {}, ARGV[11])
      if ok then
        claim = taken
      else
        table.insert(claim, caught(taken))
      end
    end
  end
  local current = last_claimed(claim ~= 0 and claim or nil)
  if not current and ARGV[15] == '1' then current = ARGV[14] end
  -- The worker's hash is bookkeeping too (the next heartbeat rewrites it).
  local noted, note_error = pcall(note_on_worker, ARGV[13], counts.completed, counts.failed, current,
    claimed_count(claim ~= 0 and claim or nil) - (tonumber(ARGV[7]) or 0))
  if not noted then caught(note_error) end
  return { replies, claim, given }
end)

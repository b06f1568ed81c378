-- reap.lua: recover tasks whose worker died or stopped renewing its lease,
-- and reconcile tasks that nothing carries any more.
--
-- ARGV[7]  the calling worker's id
-- ARGV[8]  lease in ms: an entry idle this long is stuck
-- ARGV[9]  max entries to handle per call
-- ARGV[10] default max retries
-- ARGV[11] ms an entry of a dead worker must be idle before it is taken
--          (so a heartbeat that is only late does not cost running tasks)
-- ARGV[12] heartbeat TTL in ms (for the fleet clock; see heartbeat.lua)
--
-- Also promotes due retries, lets overdue prioritized tasks and held
-- tasks of concurrency keys with room through, and trims expired ids from
-- the index. A stuck
-- entry is one pending on a consumer whose heartbeat key is gone, or idle
-- past the lease. What happens to it depends on its task (each entry under
-- pcall, so one bad entry never stops a pass):
--   running on this entry: a new attempt number (the old worker's late
--     writes are refused) and, within its retry budget, straight back onto
--     the queue as `retrying`; past the budget, failed into the dead letter;
--   running on another entry: a stray, acknowledged;
--   pending, retrying or without a hash (read, never marked): back on the
--     queue as it is, no retry charged (unless another live entry carries
--     it: then it is a stray copy);
--   ended: acknowledged (a cancelled task's stream is ended).
-- Reconciliation walks the active set (tasks not yet ended, idle over a
-- lease) and ends, with the reason, any task that nothing carries: a
-- waiting task whose entry was trimmed or evicted, a retry whose payload
-- was lost, a running task whose entry is gone and whose worker is dead
-- (see below for how carefully "nothing" is checked).
-- Consumers of dead workers with nothing pending are removed from the
-- group. While the fleet clock says the server (or every worker) was
-- stalled, nothing is reclaimed for one TTL.
-- Waits for approval past their deadline end here as denied (by `exo`,
-- with the reason), so the run goes on and its model is told.
-- Returns {promoted, requeued, failed, cleaned, reconciled, quiet (0/1),
-- approvals expired}.

local me, lease_ms, limit, default_max = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
local dead_idle_ms = tonumber(ARGV[11]) or 0
local ttl_ms = tonumber(ARGV[12]) or 30000
local promoted = promote_due(limit)
trim_index(100)
-- Prioritized tasks passed over for a minute past their turn join the
-- stream's line (so tasks without a priority cannot starve them), and
-- concurrency keys with held tasks let them through when slots freed
-- without a final write (a worker lost, a task cancelled while held).
release_prioritized(NOW_MS - PRIORITY_OVERDUE_MS, limit)
local held_keys = rcall('HRANDFIELD', KEYS_HELD, 100, 'WITHVALUES')
for i = 1, #held_keys, 2 do
  pcall(admit_held, held_keys[i], tonumber(held_keys[i + 1]) or 1)
end

local expired_approvals = 0
for _, task_id in ipairs(rcall('ZRANGEBYSCORE', APPROVALS, '-inf', NOW_MS, 'LIMIT', 0, limit)) do
  local ok = pcall(function()
    local state = rcall('HMGET', task_key(task_id), 'status', 'waiting_for', 'approval')
    if state[1] == 'pending' and state[2] == 'approval' and state[3] then
      decide(task_id, state[3], false, 'exo', 'no decision before the approval deadline', nil)
      expired_approvals = expired_approvals + 1
    else
      rcall('ZREM', APPROVALS, task_id)
    end
  end)
  if not ok then rcall('ZREM', APPROVALS, task_id) end
end

-- The fleet clock: no heartbeat for half a TTL means the server or the
-- whole fleet was stopped; everyone's keys look expired, so wait one TTL.
local beat_key, quiet_key = FLEET_BEAT, FLEET_QUIET_UNTIL
local last_beat = tonumber(rcall('GET', beat_key) or '')
local quiet = false
if last_beat and NOW_MS - last_beat > ttl_ms / 2 then
  rcall('SET', quiet_key, NOW_MS + ttl_ms, 'PX', ttl_ms * 2)
  quiet = true
elseif NOW_MS < (tonumber(rcall('GET', quiet_key) or '0') or 0) then
  quiet = true
end
if quiet then return { promoted, 0, 0, 0, 0, 1, expired_approvals } end

local stuck, order, dead_consumers = {}, {}, {}
local function mark(entry_id, reason)
  if not stuck[entry_id] then
    stuck[entry_id] = reason
    table.insert(order, entry_id)
  end
end

local summary = rcall('XPENDING', QUEUE, GROUP)
if summary[4] then
  for _, pair in ipairs(summary[4]) do
    local consumer = pair[1]
    if consumer ~= me and rcall('EXISTS', worker_key(consumer)) == 0 then
      table.insert(dead_consumers, consumer)
      for _, pending in ipairs(rcall('XPENDING', QUEUE, GROUP, 'IDLE', dead_idle_ms, '-', '+', limit, consumer)) do
        mark(pending[1], 'worker ' .. consumer .. ' stopped sending heartbeats')
      end
    end
  end
end
for _, pending in ipairs(rcall('XPENDING', QUEUE, GROUP, 'IDLE', lease_ms, '-', '+', limit)) do
  mark(pending[1], 'worker ' .. pending[2] .. ' did not renew its lease for ' .. pending[3] .. ' ms')
end

local requeued, failed, cleaned = 0, 0, 0

-- Ends a task that can never run again, with the reason.
local function fail_task(task_id, payload, message, error_type, attempt, agent)
  rcall('HDEL', task_key(task_id), 'entry')
  write_task(task_id, 'status', 'failed', 'error', message, 'completed_at', NOW)
  dead_letter(task_id, payload, message, attempt)
  end_stream(task_id, { error_event(message, error_type, agent, false), status_event('error', agent, message) })
  failed = failed + 1
end

for _, entry_id in ipairs(order) do
  local found = rcall('XRANGE', QUEUE, entry_id, entry_id)
  local payload = found[1] and entry_payload(found[1][2])
  local ok = guarded(entry_id, payload, function()
    if not found[1] then
      rcall('XACK', QUEUE, GROUP, entry_id)
      cleaned = cleaned + 1
      return
    end
    if not payload then
      reject(entry_id, nil, payload, 'queue entry has no `payload` field')
      failed = failed + 1
      return
    end
    local task_id, _, problem = payload_task_id(payload)
    if problem then
      reject(entry_id, task_id, payload, problem)
      failed = failed + 1
      return
    end
    local key = task_key(task_id)
    local state = rcall('HMGET', key, 'status', 'attempt', 'retries', 'max_retries', 'ended', 'agent_name', 'entry')
    local status, agent, carrier = state[1], state[6], state[7]
    if status == 'cancelled' then
      ack(entry_id)
      if state[5] ~= '1' then end_stream(task_id, { status_event('cancelled', agent, 'Task cancelled') }) end
      cleaned = cleaned + 1
    elseif status == 'completed' or status == 'failed' then
      ack(entry_id)
      cleaned = cleaned + 1
    elseif status == 'running' and carrier and carrier ~= entry_id then
      -- A stray entry: another entry owns the task's current attempt.
      ack(entry_id)
      cleaned = cleaned + 1
    elseif status ~= 'running' then
      if carrier and carrier ~= entry_id and entry_exists(carrier) then
        ack(entry_id)
        cleaned = cleaned + 1
      else
        -- Read by a claim that never marked it: back in line, no retry
        -- charged (it never started).
        enqueue(status and task_id, payload)
        ack(entry_id)
        requeued = requeued + 1
      end
    else
      rcall('HINCRBY', key, 'attempt', 1)
      local retries = tonumber(state[3] or '0')
      local max_retries = tonumber(state[4] or default_max)
      local message = 'attempt ' .. (state[2] or '?') .. ' lost: ' .. stuck[entry_id]
      if retries < max_retries then
        write_task(task_id, 'status', 'retrying', 'retries', retries + 1, 'error', message, 'completed_at', NOW)
        enqueue(task_id, payload)
        ack(entry_id)
        append_events(task_id, { error_event(message, ERROR_TYPES.WORKER_LOST, agent, true) })
        requeued = requeued + 1
      else
        fail_task(task_id, payload, message, ERROR_TYPES.WORKER_LOST, state[2], agent)
        ack(entry_id)
      end
    end
  end)
  if not ok then failed = failed + 1 end
end

-- Reconciliation: a bounded walk of the active set, from where the last
-- pass stopped. A task is ended only when nothing can carry it: not the
-- delayed set, not the entry its hash names, and not any entry in the queue
-- (writers that do not keep `entry`, such as reference workers or an older
-- exo during an upgrade, re-queue by XADD alone), and, when it runs, only
-- once its worker's heartbeat is gone. The queue scan is skipped, and so is
-- every ending, when the queue is too long to scan in one pass.

local SCAN_LIMIT = 5000
local offset = tonumber(rcall('GET', ACTIVE_SWEEP) or '0') or 0
local candidates = rcall('ZRANGEBYSCORE', ACTIVE, '-inf', NOW_MS - lease_ms, 'LIMIT', offset, limit)
if #candidates < limit then offset = 0 else offset = offset + #candidates end
rcall('SET', ACTIVE_SWEEP, offset)
local reconciled = 0
local carried = nil
local function queue_carries(task_id)
  if carried == nil then
    if rcall('XLEN', QUEUE) > SCAN_LIMIT then
      carried = false
    else
      carried = {}
      for _, entry in ipairs(rcall('XRANGE', QUEUE, '-', '+', 'COUNT', SCAN_LIMIT)) do
        local payload = entry_payload(entry[2])
        if payload then
          for id in string.gmatch(string.sub(payload, 1, 65536), '"task_id"%s*:%s*"([%w_.:-]+)"') do
            carried[id] = true
          end
        end
      end
    end
  end
  -- Unknown (too long to scan) counts as carried: never end on a guess.
  return carried == false or carried[task_id] == true
end
for _, task_id in ipairs(candidates) do
  pcall(function()
    local key = task_key(task_id)
    local state = rcall('HMGET', key, 'status', 'entry', 'worker_id', 'attempt', 'agent_name')
    local status, carrier, worker = state[1], state[2], state[3]
    if not status or TERMINAL[status] then
      rcall('ZREM', ACTIVE, task_id)
      return
    end
    if rcall('ZSCORE', DELAYED, task_id) then return end
    if rcall('ZSCORE', PRIORITIZED, task_id) then return end
    if carrier and entry_exists(carrier) then return end
    if status == 'pending' and not carrier then return end
    if status == 'running' and worker and rcall('EXISTS', worker_key(worker)) == 1 then return end
    if queue_carries(task_id) then return end
    local reason
    if status == 'running' then
      -- A new attempt number, so the old worker's heartbeat reports the
      -- task lost and its writes are refused.
      rcall('HINCRBY', key, 'attempt', 1)
      reason = 'its queue entry was removed (trimmed or evicted) while it ran on ' .. (worker or '?')
        .. ', which is gone; the payload cannot be recovered'
    else
      reason = 'its queue entry was removed (trimmed or evicted) before it ran; the payload cannot be recovered'
    end
    rcall('HDEL', key, 'entry')
    write_task(task_id, 'status', 'failed', 'error', reason, 'completed_at', NOW)
    dead_letter(task_id, '', reason, state[4])
    end_stream(task_id, { error_event(reason, ERROR_TYPES.LOST_ENTRY, state[5], false), status_event('error', state[5], reason) })
    reconciled = reconciled + 1
  end)
end

for _, consumer in ipairs(dead_consumers) do
  local left = rcall('XPENDING', QUEUE, GROUP, '-', '+', 1, consumer)
  if #left == 0 then rcall('XGROUP', 'DELCONSUMER', QUEUE, GROUP, consumer) end
end
-- Consumers of workers killed while idle: nothing pending, no heartbeat,
-- idle past the lease.
local ok_info, consumers = pcall(rcall, 'XINFO', 'CONSUMERS', QUEUE, GROUP)
if ok_info then
  local removed = 0
  for _, consumer in ipairs(consumers) do
    if removed >= limit then break end
    local info = {}
    for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
    local name = info['name']
    if name and name ~= me and tonumber(info['pending']) == 0 and tonumber(info['idle'] or 0) > lease_ms
      and rcall('EXISTS', worker_key(name)) == 0 then
      rcall('XGROUP', 'DELCONSUMER', QUEUE, GROUP, name)
      removed = removed + 1
    end
  end
end
return { promoted, requeued, failed, cleaned, reconciled, 0, expired_approvals }

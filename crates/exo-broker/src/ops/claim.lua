-- claim.lua: take up to COUNT tasks for a worker and mark them running.
--
-- ARGV[7]  consumer (the worker id)
-- ARGV[8]  count
-- ARGV[9]  default max retries
-- ARGV[10] the most retries a payload may ask for (the worker's cap)
-- ARGV[11] this claim's random token (see fence_holds)
-- ARGV[12...] entry ids already read by a blocking XREADGROUP (optional);
--             without them the script reads new entries itself.
--
-- First promotes due retries onto the queue. Then, per entry (each under
-- pcall, so one bad entry never aborts the batch): a payload that is too
-- large, cannot be decoded or carries an invalid task id goes to the dead
-- letter (and its hash, when it is this entry's, to `failed`); a task
-- already cancelled or finished is acknowledged and skipped; an entry of a
-- task running on another entry is a stray and acknowledged; the running
-- task's own entry delivered again (the group was re-created) is left
-- pending for its worker's heartbeat or the reaper; every other task gets
-- attempt+1 (the fencing token), status `running`, and `entry`.
--
-- Returns {next_due_ms, rows, rejected, server_now_ms} where rows is a flat
-- list of (entry id, task id, payload, attempt, retries, max retries) (the
-- fence is "<attempt>:<token>") and
-- rejected a flat list of (entry id, task id or "", reason). The server's
-- clock comes back so that the worker waits for the next retry by the same
-- clock.

local consumer, count = ARGV[7], tonumber(ARGV[8])
local default_max, retries_cap, token = ARGV[9], tonumber(ARGV[10]), ARGV[11]

promote_due(100)

local entries = {}
if #ARGV >= 12 then
  for i = 12, #ARGV do
    local found = redis.call('XRANGE', QUEUE, ARGV[i], ARGV[i])
    if #found > 0 then
      table.insert(entries, found[1])
    else
      redis.call('XACK', QUEUE, GROUP, ARGV[i])
    end
  end
else
  local read = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', count, 'STREAMS', QUEUE, '>')
  if read and read[1] then entries = read[1][2] end
end

local rows, rejected = {}, {}
local function refuse(entry_id, task_id, reason)
  table.insert(rejected, entry_id)
  table.insert(rejected, task_id or '')
  table.insert(rejected, reason)
end

for _, entry in ipairs(entries) do
  local entry_id = entry[1]
  local payload = entry_payload(entry[2])
  local ok, failure = guarded(entry_id, payload, function()
    if not payload then
      local reason = 'queue entry has no `payload` field'
      reject(entry_id, nil, payload, reason)
      refuse(entry_id, nil, reason)
      return
    end
    local task_id, decoded, problem = payload_task_id(payload)
    if problem then
      reject(entry_id, task_id, payload, problem)
      refuse(entry_id, task_id, problem)
      return
    end
    local key = task_key(task_id)
    local state = redis.call('HMGET', key, 'status', 'ended', 'agent_name', 'entry')
    local status, owner = state[1], state[4]
    if status == 'running' then
      -- Its own entry delivered again (the group was re-created) stays
      -- pending: the worker running it renews it, or the reaper recovers it.
      if owner ~= entry_id then ack(entry_id) end
      return
    end
    if status == 'cancelled' or status == 'completed' or status == 'failed' then
      ack(entry_id)
      if status == 'cancelled' and state[2] ~= '1' then
        end_stream(task_id, { status_event('cancelled', state[3], 'Task cancelled before it started') })
      end
      return
    end
    if status == 'retrying' then
      -- Claimed from a copy before its retry was due: the delayed retry
      -- must not add another entry later.
      redis.call('ZREM', DELAYED, task_id)
      redis.call('HDEL', DELAYED_PAYLOADS, task_id)
    end
    local attempt = redis.call('HINCRBY', key, 'attempt', 1)
    local fields = redis.call('HMGET', key, 'retries', 'max_retries', 'created_at', 'agent_name')
    local max_retries = fields[2]
    if not max_retries then
      max_retries = default_max
      if type(decoded.max_retries) == 'number' and decoded.max_retries >= 0 then
        max_retries = tostring(math.floor(decoded.max_retries))
      end
    end
    max_retries = tostring(math.min(tonumber(max_retries) or tonumber(default_max), retries_cap))
    redis.call('HSET', key, 'max_retries', max_retries)
    if not fields[3] and type(decoded.created_at) == 'number' then
      redis.call('HSET', key, 'created_at', string.format('%.17g', decoded.created_at))
    end
    if not fields[4] and type(decoded.agent_config) == 'table' and type(decoded.agent_config.name) == 'string' then
      redis.call('HSET', key, 'agent_name', decoded.agent_config.name)
    end
    redis.call('HDEL', key, 'completed_at', 'result')
    write_task(task_id, 'status', 'running', 'worker_id', consumer, 'started_at', NOW, 'entry', entry_id, 'lease', token)
    table.insert(rows, entry_id)
    table.insert(rows, task_id)
    table.insert(rows, payload)
    table.insert(rows, attempt)
    table.insert(rows, fields[1] or '0')
    table.insert(rows, max_retries)
  end)
  if not ok then refuse(entry_id, nil, failure) end
end
return { next_due(), rows, rejected, now_ms() }

-- claim.lua: take up to COUNT tasks for a worker and mark them running.
--
-- ARGV[8]  consumer (the worker id)
-- ARGV[9]  count
-- ARGV[10] default max retries
-- ARGV[11] payload size limit in bytes (0 for none)
-- ARGV[12...] entry ids already read by a blocking XREADGROUP (optional);
--             without them the script reads new entries itself.
--
-- First promotes due retries onto the queue. Then, per entry: a payload that
-- cannot be decoded goes to the dead letter (and its hash, when an id can be
-- read, to `failed`); a task already cancelled or finished is acknowledged
-- and skipped; every other task gets attempt+1 (the fencing token), status
-- `running`, and `entry` (the queue entry that owns the attempt).
--
-- Returns {next_due_ms, rows, rejected, server_now_ms} where rows is a flat
-- list of (entry id, task id, payload, attempt, retries, max retries) and
-- rejected a flat list of (entry id, reason). The server's clock comes back
-- so that the worker waits for the next retry by the same clock.

local consumer, count = ARGV[8], tonumber(ARGV[9])
local default_max, size_limit = ARGV[10], tonumber(ARGV[11])

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
for _, entry in ipairs(entries) do
  local entry_id = entry[1]
  local payload = entry_payload(entry[2])
  local task_id, decoded, problem = nil, nil, nil
  if not payload then
    problem = 'queue entry has no `payload` field'
  else
    task_id, decoded, problem = payload_task_id(payload)
    if not problem and size_limit > 0 and #payload > size_limit then
      problem = 'payload of ' .. #payload .. ' bytes exceeds the limit of ' .. size_limit .. ' bytes'
    end
  end
  if problem then
    reject(entry_id, task_id, payload, problem)
    table.insert(rejected, entry_id)
    table.insert(rejected, problem)
  else
    local key = task_key(task_id)
    local state = redis.call('HMGET', key, 'status', 'ended', 'agent_name')
    local status = state[1]
    if status == 'cancelled' or status == 'completed' or status == 'failed' or status == 'running' then
      ack(entry_id)
      if status == 'cancelled' and state[2] ~= '1' then
        end_stream(task_id, { status_event('cancelled', state[3], 'Task cancelled before it started') })
      end
    else
      local attempt = redis.call('HINCRBY', key, 'attempt', 1)
      local fields = redis.call('HMGET', key, 'retries', 'max_retries', 'created_at', 'agent_name')
      local max_retries = fields[2]
      if not max_retries then
        max_retries = default_max
        if type(decoded.max_retries) == 'number' then max_retries = tostring(decoded.max_retries) end
        redis.call('HSET', key, 'max_retries', max_retries)
      end
      if not fields[3] and type(decoded.created_at) == 'number' then
        redis.call('HSET', key, 'created_at', string.format('%.17g', decoded.created_at))
      end
      if not fields[4] and type(decoded.agent_config) == 'table' and type(decoded.agent_config.name) == 'string' then
        redis.call('HSET', key, 'agent_name', decoded.agent_config.name)
      end
      redis.call('HDEL', key, 'completed_at', 'result')
      write_task(task_id, 'status', 'running', 'worker_id', consumer, 'started_at', NOW, 'entry', entry_id)
      redis.call('ZADD', TIMELINE, 'NX', fields[3] or NOW, task_id)
      table.insert(rows, entry_id)
      table.insert(rows, task_id)
      table.insert(rows, payload)
      table.insert(rows, attempt)
      table.insert(rows, fields[1] or '0')
      table.insert(rows, max_retries)
    end
  end
end
return { next_due(), rows, rejected, now_ms() }

-- common.lua: the prelude of every exo script (prepended at build time).
--
-- Every script is called with the same key and argument header, so the
-- helpers below can name every exo key:
--
-- KEYS[1] queue stream          KEYS[5] task index (set)
-- KEYS[2] delayed (zset)        KEYS[6] task timeline (zset)
-- KEYS[3] delayed payloads      KEYS[7] worker registry (zset)
-- KEYS[4] dead-letter stream
--
-- ARGV[1] now (Unix seconds, client clock)   ARGV[5] event stream TTL (s)
-- ARGV[2] key prefix, e.g. "exo:"            ARGV[6] event stream max length
-- ARGV[3] consumer group                     ARGV[7] dead-letter max length
-- ARGV[4] task hash TTL (s)
--
-- Script-specific arguments start at ARGV[8].
--
-- Per-task keys (task hash, event stream) are built from the prefix. Under
-- Redis Cluster the prefix and the queue carry one hash tag, so every key a
-- script touches lives in the slot of KEYS[1]; the broker checks this when
-- it connects.

local QUEUE, DELAYED, DELAYED_PAYLOADS, DEAD = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local INDEX, TIMELINE, REGISTRY = KEYS[5], KEYS[6], KEYS[7]
local NOW, PREFIX, GROUP = ARGV[1], ARGV[2], ARGV[3]
local TASK_TTL, EVENT_TTL = tonumber(ARGV[4]), tonumber(ARGV[5])
local EVENT_MAXLEN, DEAD_MAXLEN = tonumber(ARGV[6]), tonumber(ARGV[7])

local function task_key(task_id) return PREFIX .. 'task:' .. task_id end
local function worker_key(worker_id) return PREFIX .. 'workers:' .. worker_id end

local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- Appends event JSON strings to the task's stream and publishes each one for
-- pub/sub readers; refreshes the stream's TTL once per batch.
local function append_events(task_id, events)
  if #events == 0 then return end
  local stream = PREFIX .. 'stream:' .. task_id
  local channel = PREFIX .. 'events:' .. task_id
  for i = 1, #events do
    redis.call('XADD', stream, 'MAXLEN', '~', EVENT_MAXLEN, '*', 'event', events[i])
    redis.call('PUBLISH', channel, events[i])
  end
  redis.call('EXPIRE', stream, EVENT_TTL)
end

local function status_event(status, agent_name, message)
  return '{"type": "status", "status": ' .. cjson.encode(status)
    .. ', "agent_name": ' .. cjson.encode(agent_name or '')
    .. ', "message": ' .. cjson.encode(message or '') .. '}'
end

local function error_event(message, error_type, agent_name, recoverable)
  return '{"type": "error", "error": ' .. cjson.encode(message)
    .. ', "error_type": ' .. cjson.encode(error_type)
    .. ', "agent_name": ' .. cjson.encode(agent_name or '')
    .. ', "step_number": null, "recoverable": ' .. (recoverable and 'true' or 'false') .. '}'
end

-- Acknowledges a queue entry and deletes it, so the stream holds only
-- entries that are still waiting or running.
local function ack(entry_id)
  redis.call('XACK', QUEUE, GROUP, entry_id)
  redis.call('XDEL', QUEUE, entry_id)
end

local function dead_letter(task_id, payload, reason, attempts)
  redis.call('XADD', DEAD, 'MAXLEN', '~', DEAD_MAXLEN, '*',
    'task_id', task_id or '', 'payload', payload or '', 'reason', reason,
    'attempts', tostring(attempts or 0), 'failed_at', NOW)
end

-- Writes hash fields and keeps the reference's bookkeeping: TTL refreshed on
-- every write, task id in the index set.
local function write_task(task_id, ...)
  local key = task_key(task_id)
  redis.call('HSET', key, 'task_id', task_id, ...)
  redis.call('EXPIRE', key, TASK_TTL)
  redis.call('SADD', INDEX, task_id)
  return key
end

-- Ends a task's event stream with its one terminal status event.
local function end_stream(task_id, events)
  append_events(task_id, events)
  redis.call('HSET', task_key(task_id), 'ended', '1')
end

-- Fails a task that can never run (bad payload): dead letter, failed hash,
-- terminal events.
local function reject(entry_id, task_id, payload, reason)
  dead_letter(task_id, payload, reason, 0)
  if entry_id then ack(entry_id) end
  if task_id then
    local key = write_task(task_id, 'status', 'failed', 'error', reason, 'completed_at', NOW)
    local agent = redis.call('HGET', key, 'agent_name') or ''
    end_stream(task_id, { error_event(reason, 'InvalidPayload', agent, false), status_event('error', agent, reason) })
  end
end

-- Moves retries whose backoff has elapsed back onto the queue.
local function promote_due(limit)
  local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now_ms(), 'LIMIT', 0, limit)
  for _, task_id in ipairs(due) do
    local payload = redis.call('HGET', DELAYED_PAYLOADS, task_id)
    redis.call('ZREM', DELAYED, task_id)
    redis.call('HDEL', DELAYED_PAYLOADS, task_id)
    if payload then
      redis.call('XADD', QUEUE, '*', 'payload', payload)
    else
      -- The payload was removed behind exo's back: end the task instead of
      -- leaving it `retrying` forever.
      local state = redis.call('HMGET', task_key(task_id), 'status', 'agent_name')
      if state[1] == 'retrying' then
        local reason = 'the payload of the retry was lost'
        local key = write_task(task_id, 'status', 'failed', 'error', reason, 'completed_at', NOW)
        dead_letter(task_id, '', reason, redis.call('HGET', key, 'attempt'))
        end_stream(task_id, { error_event(reason, 'LostPayload', state[2], false), status_event('error', state[2], reason) })
      end
    end
  end
  return #due
end

local function next_due()
  local first = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
  if #first == 0 then return -1 end
  return tonumber(first[2])
end

-- Reads the payload of a queue entry and the task id inside it.
local function entry_payload(fields)
  if not fields then return nil end
  for i = 1, #fields, 2 do
    if fields[i] == 'payload' then return fields[i + 1] end
  end
  return nil
end

local function payload_task_id(payload)
  local ok, decoded = pcall(cjson.decode, payload)
  if not ok or type(decoded) ~= 'table' then return nil, nil, 'payload is not valid JSON' end
  if type(decoded.task_id) ~= 'string' or decoded.task_id == '' then
    return nil, decoded, 'payload has no task_id'
  end
  return decoded.task_id, decoded, nil
end


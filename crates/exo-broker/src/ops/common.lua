-- common.lua: the prelude of every exo script (prepended when the broker
-- builds its scripts, after the event templates; see `ops/mod.rs`).
--
-- Every script gets the same keys, built in Rust from `Keys` (so every key
-- a script touches is declared, and under Redis Cluster the slot check at
-- connect covers each one); once the library has them, a call may name
-- only the queue and the task family (see `setup`). Keys of one task or
-- one worker are families: the script appends the id to the family's
-- prefix, because the ids are found inside the script (entries read from
-- the queue, pending entries).
--
-- KEYS[1] queue stream             KEYS[10] fleet quiet-until (string)
-- KEYS[2] delayed (zset)           KEYS[11] active sweep cursor (string)
-- KEYS[3] delayed payloads (hash)  KEYS[12] family: task hash
-- KEYS[4] dead-letter stream       KEYS[13] family: event stream
-- KEYS[5] task index (set)         KEYS[14] family: event channel
-- KEYS[6] task timeline (zset)     KEYS[15] family: cancel channel
-- KEYS[7] worker registry (zset)   KEYS[16] family: worker heartbeat hash
-- KEYS[8] active tasks (zset)      KEYS[17] family: idempotency key
-- KEYS[9] fleet beat (string)      KEYS[18] tasks waiting for approval (zset)
--                                  KEYS[19] family: step journal (list)
--                                  KEYS[20] family: model rate-limit rule
--                                  KEYS[21] schedules (hash)
--                                  KEYS[22] schedules due (zset)
--                                  KEYS[23] prioritized tasks (zset)
--                                  KEYS[24] family: concurrency key
--                                  KEYS[25] concurrency keys held back (hash)
--                                  KEYS[26] family: usage ledger bucket
--
-- ARGV[1] payload size limit (bytes; 0 for none)  ARGV[4] event stream TTL (s)
-- ARGV[2] consumer group                          ARGV[5] event stream max length
-- ARGV[3] task hash TTL (s)                       ARGV[6] dead-letter max length
--
-- Script-specific arguments start at ARGV[7].
--
-- Events are never written by hand here: `STATUS_CANCELLED`, `STATUS_ERROR`,
-- `ERROR_FATAL` and `ERROR_RECOVERABLE` are rendered by serde in Rust with
-- placeholder strings, and `fill` puts the JSON-encoded values in their place.
-- `ERROR_TYPES` holds the failure kinds scripts write, from `ErrorType`.

-- Set per call by `setup` (the prelude is loaded once as a function
-- library, or runs at the top of each script; see `ops/mod.rs`).
-- `rcall` is `redis.call`, kept where a read costs no look-up (a global
-- goes through the function environment's index at every use, and a
-- library has no `redis.call` while it loads).
local rcall
local QUEUE, DELAYED, DELAYED_PAYLOADS, DEAD
local INDEX, TIMELINE, REGISTRY, ACTIVE
local FLEET_BEAT, FLEET_QUIET_UNTIL, ACTIVE_SWEEP
local TASK_FAMILY, STREAM_FAMILY, CHANNEL_FAMILY
local CANCEL_FAMILY, WORKER_FAMILY, IDEMPOTENCY_FAMILY
local APPROVALS, JOURNAL_FAMILY, LIMIT_FAMILY
local SCHEDULES, SCHEDULES_DUE
local PRIORITIZED, CONCURRENCY_FAMILY, KEYS_HELD
local USAGE_FAMILY
local SIZE_LIMIT, GROUP
local TASK_TTL, EVENT_TTL
local EVENT_MAXLEN, DEAD_MAXLEN
-- Every timestamp comes from the server's clock, so a client whose clock is
-- off can neither trim live tasks nor confuse the bookkeeping.
local NOW_MS, NOW, NOW_MS_TEXT
-- The task TTL as a number, read when first needed in a call.
local TASK_TTL_SECONDS
-- Writes a call gathers and sends as one command each at its end (see
-- `defer_writes`): nil when every write goes at once.
local ACKS_LATER, ACTIVE_LATER, ACTIVE_ORDER

-- The key layouts this library was given whole, by queue key, then task
-- family: a call that names only those two keys (KEYS[1] and KEYS[12]) gets
-- the rest from here, and one the library has not seen is refused with
-- NOLAYOUT before it does anything (its caller sends every key). In a
-- function library this lives as long as the library; a script (EVALSHA)
-- always gets every key.
local LAYOUTS = {}

-- Reads the keys and shared settings of one call, and the server's clock.
local function setup(keys, argv)
  rcall = redis.call
  if #keys == 2 then
    local layouts = LAYOUTS[keys[1]]
    keys = layouts and layouts[keys[2]]
    if not keys then
      error({ err = 'NOLAYOUT this key layout is not known here yet: call again with every key' })
    end
  else
    local layouts = LAYOUTS[keys[1]]
    if not layouts then
      layouts = {}
      LAYOUTS[keys[1]] = layouts
    end
    if layouts[keys[12]] == nil then
      local copy = {}
      for i = 1, #keys do copy[i] = keys[i] end
      layouts[keys[12]] = copy
    end
  end
  QUEUE, DELAYED, DELAYED_PAYLOADS, DEAD = keys[1], keys[2], keys[3], keys[4]
  INDEX, TIMELINE, REGISTRY, ACTIVE = keys[5], keys[6], keys[7], keys[8]
  FLEET_BEAT, FLEET_QUIET_UNTIL, ACTIVE_SWEEP = keys[9], keys[10], keys[11]
  TASK_FAMILY, STREAM_FAMILY, CHANNEL_FAMILY = keys[12], keys[13], keys[14]
  CANCEL_FAMILY, WORKER_FAMILY, IDEMPOTENCY_FAMILY = keys[15], keys[16], keys[17]
  APPROVALS, JOURNAL_FAMILY, LIMIT_FAMILY = keys[18], keys[19], keys[20]
  SCHEDULES, SCHEDULES_DUE = keys[21], keys[22]
  PRIORITIZED, CONCURRENCY_FAMILY, KEYS_HELD = keys[23], keys[24], keys[25]
  USAGE_FAMILY = keys[26]
  SIZE_LIMIT, GROUP = tonumber(argv[1]) or 0, argv[2]
  -- Kept as the strings they came as: a Lua number passed to redis.call
  -- is formatted anew each time.
  TASK_TTL, EVENT_TTL = argv[3], argv[4]
  EVENT_MAXLEN, DEAD_MAXLEN = argv[5], argv[6]
  ACKS_LATER, ACTIVE_LATER, ACTIVE_ORDER = nil, nil, nil
  TASK_TTL_SECONDS = nil
  -- Seconds and microseconds, as text: the three forms of the clock are
  -- cut from them (formatting numbers costs more).
  local time = rcall('TIME')
  local micros = time[2]
  if #micros < 6 then micros = string.rep('0', 6 - #micros) .. micros end
  NOW = time[1] .. '.' .. micros
  NOW_MS_TEXT = time[1] .. string.sub(micros, 1, 3)
  NOW_MS = tonumber(NOW_MS_TEXT)
end

-- An integer as text; from -1000 to 1000 each is formatted once (a Lua
-- number passed to redis.call is formatted anew each time).
local INT_TEXTS = {}
local function int_text(n)
  local text = INT_TEXTS[n]
  if text then return text end
  text = string.format('%d', n)
  if n >= -1000 and n <= 1000 then INT_TEXTS[n] = text end
  return text
end

-- The number a short text (3 characters at most: a count, an attempt) is,
-- each text parsed once: Lua's `tonumber` parses a string twice with
-- strtod, where a table look-up costs a tenth of that.
local NUMBERS = {}
local function number_of(text)
  local n = NUMBERS[text]
  if n ~= nil then return n end
  n = tonumber(text)
  if n and type(text) == 'string' and #text <= 3 then NUMBERS[text] = n end
  return n
end

local function task_key(task_id) return TASK_FAMILY .. task_id end
local function stream_key(task_id) return STREAM_FAMILY .. task_id end
local function channel_key(task_id) return CHANNEL_FAMILY .. task_id end
local function cancel_channel(task_id) return CANCEL_FAMILY .. task_id end
local function worker_key(worker_id) return WORKER_FAMILY .. worker_id end
local function idempotency_key(key) return IDEMPOTENCY_FAMILY .. key end
local function journal_key(task_id) return JOURNAL_FAMILY .. task_id end
-- A concurrency key's tasks that hold its slots (a set), the tasks held
-- back until a slot frees (a list, oldest first), and, for a conversation
-- (a key with a multitask strategy), its tasks not yet ended (a set).
local function key_running(ckey) return CONCURRENCY_FAMILY .. ckey .. ':running' end
local function key_waiting(ckey) return CONCURRENCY_FAMILY .. ckey .. ':waiting' end
local function key_tasks(ckey) return CONCURRENCY_FAMILY .. ckey .. ':tasks' end

local function now_ms() return NOW_MS end

-- Task ids: what the key layout can hold. Letters, digits, `_`, `-`, `.`
-- and `:`, at most 128 characters, and never a name the task keys already
-- use.
local RESERVED_IDS = { index = true, timeline = true }
local function valid_task_id(task_id)
  return type(task_id) == 'string' and #task_id > 0 and #task_id <= 128
    and task_id:match('^[%w_.:-]+$') ~= nil and not RESERVED_IDS[task_id]
end

-- Appends event JSON strings to the task's stream and publishes each one for
-- pub/sub readers; refreshes the stream's TTL once per batch. The events
-- are `list[first..last]`, then `final` when given (so a caller whose
-- events sit in its arguments copies none of them into a table).
local function append_event_range(task_id, list, first, last, final)
  if last < first and not final then return end
  local stream = stream_key(task_id)
  local channel = channel_key(task_id)
  for i = first, last do
    rcall('XADD', stream, 'MAXLEN', '~', EVENT_MAXLEN, '*', 'event', list[i])
    rcall('PUBLISH', channel, list[i])
  end
  if final then
    rcall('XADD', stream, 'MAXLEN', '~', EVENT_MAXLEN, '*', 'event', final)
    rcall('PUBLISH', channel, final)
  end
  rcall('EXPIRE', stream, EVENT_TTL)
end

local function append_events(task_id, events)
  append_event_range(task_id, events, 1, #events)
end

-- Appends step-journal records (JSON strings) to the task's journal. It is
-- bounded: past JOURNAL_MAX records, or for a record over the payload size
-- limit, nothing is kept (those steps run again on a later attempt, which
-- is what happens without a journal). It lives as long as the task hash,
-- whose `journal` field says that it has one (so that a task that ends
-- without one deletes nothing).
local JOURNAL_MAX = 2000
-- The records are `list[first..last]`.
local function append_journal_range(task_id, list, first, last)
  if last < first then return end
  rcall('HSET', task_key(task_id), 'journal', '1')
  local key = journal_key(task_id)
  local room = JOURNAL_MAX - rcall('LLEN', key)
  for i = first, last do
    if room <= 0 then break end
    if SIZE_LIMIT == 0 or #list[i] <= SIZE_LIMIT then
      rcall('RPUSH', key, list[i])
      room = room - 1
    end
  end
  rcall('EXPIRE', key, TASK_TTL)
end

-- Replaces the placeholder string `slot` (with its quotes) in an event
-- template by `value`, JSON-encoded.
local function fill(template, slot, value)
  local first, last = string.find(template, '"' .. slot .. '"', 1, true)
  if not first then return template end
  return string.sub(template, 1, first - 1) .. cjson.encode(value or '') .. string.sub(template, last + 1)
end

local function status_event(status, agent_name, message)
  local template = status == 'cancelled' and STATUS_CANCELLED or STATUS_ERROR
  return fill(fill(template, '\\u0001agent', agent_name), '\\u0001message', message)
end

local function error_event(message, error_type, agent_name, recoverable)
  local template = recoverable and ERROR_RECOVERABLE or ERROR_FATAL
  template = fill(template, '\\u0001error_type', error_type)
  return fill(fill(template, '\\u0001agent', agent_name), '\\u0001message', message)
end

-- Acknowledges a queue entry and deletes it, so the stream holds only
-- entries that are still waiting or running.
local function ack(entry_id)
  rcall('XACK', QUEUE, GROUP, entry_id)
  rcall('XDEL', QUEUE, entry_id)
end

-- Runs `command` with `fixed` arguments followed by `items`, 500 items per
-- command (Lua's `unpack` has a limit).
local function call_in_chunks(command, fixed, items)
  if #items <= 500 and #fixed == 1 then return rcall(command, fixed[1], unpack(items)) end
  if #items <= 500 and #fixed == 2 then return rcall(command, fixed[1], fixed[2], unpack(items)) end
  for first = 1, #items, 500 do
    local args = { unpack(fixed) }
    for i = first, math.min(first + 499, #items) do table.insert(args, items[i]) end
    rcall(command, unpack(args))
  end
end

-- From here to `flush_writes`, acknowledgements made with `ack_later` and
-- the active set's changes (see `track_status`) are gathered, and sent as
-- one XACK, one XDEL, one ZREM and one ZADD. Nothing in between reads
-- them back: the claim reads only new entries, and only the reaper reads
-- the active set.
local function defer_writes()
  ACKS_LATER, ACTIVE_LATER, ACTIVE_ORDER = {}, {}, {}
end

local function ack_later(entry_id)
  if ACKS_LATER then
    table.insert(ACKS_LATER, entry_id)
  else
    ack(entry_id)
  end
end

local function flush_writes()
  local acks, later, order = ACKS_LATER, ACTIVE_LATER, ACTIVE_ORDER
  ACKS_LATER, ACTIVE_LATER, ACTIVE_ORDER = nil, nil, nil
  if acks and #acks > 0 then
    call_in_chunks('XACK', { QUEUE, GROUP }, acks)
    call_in_chunks('XDEL', { QUEUE }, acks)
  end
  if later then
    local gone, added = {}, {}
    for _, task_id in ipairs(order) do
      local score = later[task_id]
      if score then
        table.insert(added, score)
        table.insert(added, task_id)
      else
        table.insert(gone, task_id)
      end
    end
    if #gone > 0 then call_in_chunks('ZREM', { ACTIVE }, gone) end
    for first = 1, #added, 1000 do
      rcall('ZADD', ACTIVE, unpack(added, first, math.min(first + 999, #added)))
    end
  end
end

-- Dead-letter entries keep the payload's exact bytes; one over the size
-- limit keeps only its first 64 KiB (the reason says so), so the dead letter
-- cannot hold what the queue refused. Entries older than 7 days go.
local DEAD_PREFIX_BYTES = 65536
local DEAD_MAX_AGE_MS = 7 * 24 * 3600 * 1000
local function dead_letter(task_id, payload, reason, attempts)
  payload = payload or ''
  local size = #payload
  if SIZE_LIMIT > 0 and size > SIZE_LIMIT then
    payload = string.sub(payload, 1, DEAD_PREFIX_BYTES)
  end
  rcall('XADD', DEAD, 'MAXLEN', '~', DEAD_MAXLEN, '*',
    'task_id', task_id or '', 'payload', payload, 'reason', reason,
    'attempts', tostring(attempts or 0), 'failed_at', NOW, 'payload_bytes', tostring(size))
  rcall('XTRIM', DEAD, 'MINID', '~', tostring(NOW_MS - DEAD_MAX_AGE_MS))
end

-- Writes hash fields and keeps the reference's bookkeeping: TTL refreshed on
-- every write, task id in the index set.
-- The timeline gets the id too (NX keeps the first time), so every id in
-- the index is trimmed once its hash has expired.
-- Tasks not yet ended are also in the active set (scored by their last
-- transition), which the reaper's reconciliation walks.
-- (Every write names the status first, when it changes it.)
local TERMINAL = { completed = true, failed = true, cancelled = true }
local function track_status(task_id, field, status)
  if field ~= 'status' then return end
  local ended = TERMINAL[status]
  if ACTIVE_LATER then
    if ACTIVE_LATER[task_id] == nil then table.insert(ACTIVE_ORDER, task_id) end
    ACTIVE_LATER[task_id] = (not ended) and NOW_MS_TEXT
  elseif ended then
    rcall('ZREM', ACTIVE, task_id)
  else
    rcall('ZADD', ACTIVE, NOW_MS_TEXT, task_id)
  end
end

local function write_task(task_id, ...)
  local key = task_key(task_id)
  rcall('HSET', key, 'task_id', task_id, ...)
  rcall('EXPIRE', key, TASK_TTL)
  rcall('SADD', INDEX, task_id)
  rcall('ZADD', TIMELINE, 'NX', NOW, task_id)
  track_status(task_id, ...)
  return key
end

-- `write_task` for a task exo already indexed (its hash names the queue
-- entry that carries it, which only exo's own writes set): the index and
-- the timeline have it, so only the hash, its TTL and the active set change.
local function update_task(task_id, ...)
  local key = task_key(task_id)
  rcall('HSET', key, ...)
  rcall('EXPIRE', key, TASK_TTL)
  track_status(task_id, ...)
  return key
end

-- `update_task` without the TTL's refresh, for a claim of a task created
-- less than 10 minutes (and half the task TTL) ago (`created_at`, Unix
-- seconds): every write since its creation set the whole TTL, so its hash
-- has the rest of it left (a client with a TTL shorter than 10 minutes
-- would be needed to cut that short), and while it runs its worker's
-- heartbeat refreshes it.
local FRESH_SECONDS = 600
local function fresh(created_at)
  local created = tonumber(created_at)
  if not created then return false end
  TASK_TTL_SECONDS = TASK_TTL_SECONDS or tonumber(TASK_TTL)
  local age = NOW_MS / 1000 - created
  return age < FRESH_SECONDS and age * 2 < TASK_TTL_SECONDS
end
local function update_task_in_ttl(task_id, ...)
  rcall('HSET', task_key(task_id), ...)
  track_status(task_id, ...)
end

-- Drops up to `limit` ids older than the task TTL from the index and the
-- timeline (their hashes have expired, unless written since: those are
-- added back on their next write).
local function trim_index(limit)
  local expired = rcall('ZRANGEBYSCORE', TIMELINE, '-inf', NOW_MS / 1000 - TASK_TTL, 'LIMIT', 0, limit)
  for _, task_id in ipairs(expired) do
    rcall('ZREM', TIMELINE, task_id)
    if rcall('EXISTS', task_key(task_id)) == 1 then
      rcall('ZADD', TIMELINE, NOW, task_id)
    else
      rcall('SREM', INDEX, task_id)
    end
  end
  return #expired
end

-- Ends a task's event stream with its one terminal status event. Its
-- journal goes: nothing will run it again.
local function end_stream(task_id, events)
  append_events(task_id, events)
  rcall('HSET', task_key(task_id), 'ended', '1')
  rcall('DEL', journal_key(task_id))
  rcall('ZREM', APPROVALS, task_id)
end

-- Fails a task that can never run (bad payload): dead letter, and, when
-- the id is valid and the hash is this entry's own (or there is none, as
-- after a raw XADD), a failed hash and terminal events. A bad entry that
-- names another entry's task never touches that task.
local function reject(entry_id, task_id, payload, reason)
  dead_letter(task_id, payload, reason, 0)
  if entry_id then ack(entry_id) end
  if task_id and valid_task_id(task_id) then
    local key = task_key(task_id)
    local state = rcall('HMGET', key, 'status', 'entry', 'agent_name')
    local owns = (not state[1]) or state[2] == entry_id
      or (state[1] == 'pending' and not state[2])
    if owns and state[1] ~= 'completed' and state[1] ~= 'failed' and state[1] ~= 'cancelled' then
      rcall('HDEL', key, 'entry')
      write_task(task_id, 'status', 'failed', 'error', reason, 'completed_at', NOW)
      local agent = state[3] or ''
      end_stream(task_id, { error_event(reason, ERROR_TYPES.INVALID_PAYLOAD, agent, false), status_event('error', agent, reason) })
    end
  end
end

-- Puts a payload back on the queue as a new entry that carries the task
-- (`entry` always names the entry a waiting or running task is on).
local function enqueue(task_id, payload)
  local entry_id = rcall('XADD', QUEUE, '*', 'payload', payload)
  if task_id then rcall('HSET', task_key(task_id), 'entry', entry_id) end
  return entry_id
end

-- A fence names one claim of one attempt: "<attempt>:<claim token>". The
-- attempt number alone could be issued twice when Redis loses a claim (an
-- AOF tail lost in a crash, an asynchronous failover): the next claim would
-- hand out the same number. The token is random per claim, so a rolled-back
-- claim's worker is refused. A fence with no token checks the attempt only.
-- Returns the fence's attempt (as text) when it holds, else false.
local function fence_matches(fence, attempt_now, lease_now)
  local attempt, token = string.match(fence or '', '^(%d+):?(.*)$')
  if not attempt then return false end
  if attempt_now ~= attempt then return false end
  return (token == '' or lease_now == token) and attempt
end

local function fence_holds(key, fence)
  local state = rcall('HMGET', key, 'attempt', 'lease')
  return fence_matches(fence, state[1], state[2])
end

local function entry_exists(entry_id)
  return entry_id and #rcall('XRANGE', QUEUE, entry_id, entry_id) > 0
end

-- Ends a task whose payload was removed behind exo's back, with the reason.
local function lose(task_id, reason)
  local key = task_key(task_id)
  local state = rcall('HMGET', key, 'agent_name', 'attempt')
  rcall('HDEL', key, 'entry', 'waiting_for')
  write_task(task_id, 'status', 'failed', 'error', reason, 'completed_at', NOW)
  dead_letter(task_id, '', reason, state[2])
  end_stream(task_id, { error_event(reason, ERROR_TYPES.LOST_PAYLOAD, state[1], false), status_event('error', state[1], reason) })
end

-- Priorities (extension field `priority`, 1 to 10; 1 runs first). A task
-- with a priority waits in the prioritized set, scored by its run order:
-- arrival time plus a minute per level below the first, so a task of a
-- lower level is passed by newer ones for at most that long and never
-- starves. Tasks without a priority (the reference's, among them) stay on
-- the stream and go first, as in BullMQ; a prioritized task that has
-- waited a minute past its score joins the stream's line (see reap.lua).
local PRIORITY_STEP_MS = 60000
local PRIORITY_OVERDUE_MS = 60000
local function priority_score(priority, since_ms)
  return since_ms + (math.max(1, math.min(10, math.floor(tonumber(priority) or 1))) - 1) * PRIORITY_STEP_MS
end

local function prioritize(task_id, payload, score)
  rcall('ZADD', PRIORITIZED, score, task_id)
  rcall('HSET', DELAYED_PAYLOADS, task_id, payload)
  rcall('HDEL', task_key(task_id), 'entry')
end

-- Moves up to `limit` prioritized tasks scored at most `max_score` onto the
-- queue, first in run order. Returns how many went.
local function release_prioritized(max_score, limit)
  local moved = 0
  for _, task_id in ipairs(rcall('ZRANGEBYSCORE', PRIORITIZED, '-inf', max_score, 'LIMIT', 0, limit)) do
    rcall('ZREM', PRIORITIZED, task_id)
    local payload = rcall('HGET', DELAYED_PAYLOADS, task_id)
    rcall('HDEL', DELAYED_PAYLOADS, task_id)
    local status = rcall('HGET', task_key(task_id), 'status')
    if status == 'pending' or status == 'retrying' then
      if payload then
        enqueue(task_id, payload)
        moved = moved + 1
      else
        lose(task_id, 'the payload of the prioritized task was lost')
      end
    end
  end
  return moved
end

-- Moves retries whose backoff has elapsed back onto the queue.
local function promote_due(limit)
  local due = rcall('ZRANGEBYSCORE', DELAYED, '-inf', now_ms(), 'LIMIT', 0, limit)
  for _, task_id in ipairs(due) do
    local payload = rcall('HGET', DELAYED_PAYLOADS, task_id)
    rcall('ZREM', DELAYED, task_id)
    rcall('HDEL', DELAYED_PAYLOADS, task_id)
    if payload then
      local state = rcall('HMGET', task_key(task_id), 'status', 'priority')
      local status = state[1]
      if status == 'retrying' or status == 'pending' then
        rcall('HDEL', task_key(task_id), 'scheduled_for')
        if state[2] then
          -- A task with a priority waits its turn among the prioritized.
          prioritize(task_id, payload, priority_score(state[2], now_ms()))
        else
          enqueue(task_id, payload)
        end
      elseif status ~= 'completed' and status ~= 'failed' and status ~= 'cancelled' then
        enqueue(nil, payload)
      end
    else
      -- The payload was removed behind exo's back: end the task instead of
      -- leaving it `retrying` forever.
      if rcall('HGET', task_key(task_id), 'status') == 'retrying' then
        lose(task_id, 'the payload of the retry was lost')
      end
    end
  end
  return #due
end

local function next_due()
  local first = rcall('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
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

-- Decodes a payload and reads its task id. Returns (task id, decoded,
-- problem). An oversized payload is never decoded (its id, when one can be
-- read off its start, comes back so its hash can be failed); one Lua cannot
-- decode (nested too deep, say) gets its id the same way.
local function id_from_text(payload)
  local head = string.sub(payload, 1, 4096)
  local task_id = head:match('^%s*{%s*"task_id"%s*:%s*"([%w_.:-]+)"')
  if valid_task_id(task_id) then return task_id end
  return nil
end

local function payload_task_id(payload)
  if SIZE_LIMIT > 0 and #payload > SIZE_LIMIT then
    return id_from_text(payload), nil,
      'payload of ' .. #payload .. ' bytes exceeds the limit of ' .. SIZE_LIMIT .. ' bytes'
  end
  local ok, decoded = pcall(cjson.decode, payload)
  if not ok or type(decoded) ~= 'table' then
    return id_from_text(payload), nil, 'payload is not valid JSON (or nested too deep)'
  end
  if type(decoded.task_id) ~= 'string' or decoded.task_id == '' then
    return nil, decoded, 'payload has no task_id'
  end
  if not valid_task_id(decoded.task_id) then
    return nil, decoded, 'task_id `' .. string.sub(decoded.task_id, 1, 64)
      .. '` is not a valid task id (1 to 128 letters, digits, `_`, `-`, `.` or `:`; not `index` or `timeline`)'
  end
  return decoded.task_id, decoded, nil
end

-- Error codes that pass by themselves (memory, a replica, a failover, a
-- reshard): an entry that meets one is left as it is for the next pass,
-- never dead-lettered.
local PASSING_ERRORS = { OOM = true, READONLY = true, MASTERDOWN = true, NOREPLICAS = true,
  MISCONF = true, LOADING = true, TRYAGAIN = true, CLUSTERDOWN = true, BUSY = true }

-- The message of an error a pcall caught. A passing error is raised
-- again: the call ends, and its caller retries it whole.
local function caught(problem)
  local message = tostring(type(problem) == 'table' and problem.err or problem)
  if PASSING_ERRORS[string.match(message, '^%-?(%u+)')] then error(problem) end
  return message
end

-- Runs `work` for one entry under pcall: an error (a key of the wrong type,
-- say) dead-letters that entry with the reason instead of aborting the
-- whole batch. A passing error aborts the script instead, so the entry
-- stays where it is. The entry is acknowledged only once its dead letter
-- is written. Returns true when the entry was handled without an error.
-- (`work` gets the arguments after it: a function made once, not a
-- closure per entry, which would cost an allocation per captured value.)
local function guarded(entry_id, payload, work, ...)
  local ok, problem = pcall(work, ...)
  if ok then return true end
  local message = caught(problem)
  local reason = 'could not process queue entry: ' .. message
  local task_id = payload and payload_task_id(payload)
  if pcall(dead_letter, task_id, payload, reason, 0) then pcall(ack, entry_id) end
  return false, reason
end

-- Messages sent to the stream's undelivered part: entries no consumer has
-- read yet (the stream holds only waiting and running entries; exo deletes
-- what it acknowledges).
local function undelivered()
  local ok, summary = pcall(rcall, 'XPENDING', QUEUE, GROUP)
  local pending = ok and tonumber(summary[1]) or 0
  return rcall('XLEN', QUEUE) - pending
end

-- Concurrency keys (extension fields `concurrency_key`,
-- `concurrency_limit`): at most `limit` tasks of one key hold a slot at a
-- time. A task over its key's limit is held back (status `pending`,
-- `waiting_for` = `concurrency`, no queue entry, payload kept) in its key's
-- list, so it blocks no other key; when a slot of the key frees, the
-- oldest held task goes to the back of the line, which serves the keys
-- round-robin.
local function valid_concurrency_key(ckey)
  return type(ckey) == 'string' and #ckey > 0 and #ckey <= 128 and ckey:match('^[%w_.:@/-]+$') ~= nil
end

-- Whether a member of a key's running set still holds its slot: it runs,
-- or it was let through and waits in line (an entry, or the prioritized
-- set), or it was cancelled while running and its worker has not stopped.
local function holds_slot(task_id)
  local state = rcall('HMGET', task_key(task_id), 'status', 'entry', 'ended', 'waiting_for')
  local status = state[1]
  if status == 'running' then return true end
  if status == 'pending' and not state[4] then
    return state[2] ~= false or rcall('ZSCORE', PRIORITIZED, task_id) ~= false
  end
  return status == 'cancelled' and state[3] ~= '1' and state[2] ~= false
end

-- The slots of a key in use; checks the holders only when they seem to
-- fill the limit (a task that ended without freeing its slot is dropped).
local function slots_used(ckey, limit)
  local set = key_running(ckey)
  local used = rcall('SCARD', set)
  if used < limit then return used end
  for _, task_id in ipairs(rcall('SMEMBERS', set)) do
    if not holds_slot(task_id) then
      rcall('SREM', set, task_id)
      used = used - 1
    end
  end
  return used
end

-- Lets held tasks of a key through while it has room: each goes to the
-- back of the line holding its slot already. Forgets the key once none
-- wait.
local function admit_held(ckey, limit)
  local waiting = key_waiting(ckey)
  local used = slots_used(ckey, limit)
  while used < limit do
    local task_id = rcall('LPOP', waiting)
    if not task_id then break end
    local key = task_key(task_id)
    local state = rcall('HMGET', key, 'status', 'waiting_for', 'priority')
    if state[1] == 'pending' and state[2] == 'concurrency' then
      local payload = rcall('HGET', DELAYED_PAYLOADS, task_id)
      rcall('HDEL', DELAYED_PAYLOADS, task_id)
      rcall('HDEL', key, 'waiting_for')
      if payload then
        rcall('SADD', key_running(ckey), task_id)
        if state[3] then
          prioritize(task_id, payload, priority_score(state[3], NOW_MS))
        else
          enqueue(task_id, payload)
        end
        used = used + 1
      else
        lose(task_id, 'the payload of the task held back by its concurrency key was lost')
      end
    end
  end
  if rcall('LLEN', waiting) == 0 then
    rcall('HDEL', KEYS_HELD, ckey)
  else
    rcall('HSET', KEYS_HELD, ckey, limit)
  end
end

-- Holds a claimed entry's task back until its key has room.
local function hold(task_id, entry_id, payload, ckey, limit)
  ack(entry_id)
  rcall('HDEL', task_key(task_id), 'entry')
  write_task(task_id, 'status', 'pending', 'waiting_for', 'concurrency', 'concurrency_key', ckey)
  rcall('HSET', DELAYED_PAYLOADS, task_id, payload)
  rcall('RPUSH', key_waiting(ckey), task_id)
  rcall('HSET', KEYS_HELD, ckey, limit)
end

-- Frees the slot a task of `ckey` held (its attempt ended) and lets the
-- next held task of the key through.
local function free_slot(task_id, ckey)
  if not ckey then return end
  rcall('SREM', key_running(ckey), task_id)
  local limit = tonumber(rcall('HGET', KEYS_HELD, ckey) or '')
  if limit then admit_held(ckey, limit) end
end

-- The key and limit of a decoded payload under the claiming worker's
-- rules ({default, max, keys}): a rule for the key, else the payload's
-- limit, else the default, capped by max. A conversation (a payload with a
-- multitask strategy) runs one task at a time. Returns (key, limit or nil
-- for no limit, problem).
local function concurrency_of(decoded, rules)
  local ckey = decoded.concurrency_key
  if ckey == nil or ckey == cjson.null then return nil end
  if not valid_concurrency_key(ckey) then
    return nil, nil, 'concurrency_key must be 1 to 128 letters, digits, `_`, `.`, `:`, `@`, `/` or `-`'
  end
  local limit
  local strategy = decoded.multitask_strategy
  if type(strategy) == 'string' then
    limit = 1
  else
    local rule = rules.keys and rules.keys[ckey]
    if type(rule) == 'number' then
      limit = rule
    elseif type(decoded.concurrency_limit) == 'number' and decoded.concurrency_limit >= 1 then
      limit = math.floor(decoded.concurrency_limit)
    elseif type(rules.default) == 'number' and rules.default >= 1 then
      limit = rules.default
    end
    if type(rules.max) == 'number' and rules.max >= 1 then
      limit = math.min(limit or rules.max, rules.max)
    end
  end
  return ckey, limit, nil
end

-- Cancels a task that has not ended (see cancel.lua): marks it cancelled
-- and signals its worker; one that was not running can never start and
-- its stream ends here. Returns "cancelled" or "cancelling" (it runs).
local function cancel_task(task_id, status, agent_name, waiting_for)
  local key = task_key(task_id)
  write_task(task_id, 'status', 'cancelled', 'completed_at', NOW, 'cancel_requested_at', NOW)
  rcall('PUBLISH', cancel_channel(task_id), 'cancel')
  if status == 'running' then return 'cancelling' end
  rcall('ZREM', DELAYED, task_id)
  rcall('ZREM', PRIORITIZED, task_id)
  rcall('HDEL', DELAYED_PAYLOADS, task_id)
  rcall('HDEL', key, 'scheduled_for')
  if waiting_for == 'approval' then
    rcall('HDEL', key, 'waiting_for')
    end_stream(task_id, { status_event('cancelled', agent_name, 'Task cancelled while waiting for approval') })
  else
    if waiting_for then rcall('HDEL', key, 'waiting_for') end
    end_stream(task_id, { status_event('cancelled', agent_name, 'Task cancelled before it started') })
  end
  return 'cancelled'
end

-- Takes up to `count` tasks for `consumer` and marks them running (see
-- claim.lua for the rules); `entry_ids` are entries a blocking read already
-- delivered, or empty to read new ones. `rules_json` holds the worker's
-- concurrency rules ({default, max, keys}; "" for none). A task over its
-- concurrency key's limit is held back and the script reads on (at most
-- CLAIM_SCAN entries per call), so a backlog of one key never hides the
-- others' tasks. Once the stream has no unread entry, prioritized tasks go
-- onto it, first in run order, and are read in the same call. When it
-- takes a task, the consumer's heartbeat hash (if there is one) shows it
-- as `current_task_id`. Returns {next_due_ms, rows, rejected,
-- server_now_ms} (see claim.lua).
local CLAIM_SCAN = 500

-- What a claim reads of a task's hash: status, ended, agent_name, entry,
-- retries, max_retries, created_at, completed_at, attempt,
-- concurrency_key, payload_checked.
local function claim_state(key)
  return rcall('HMGET', key, 'status', 'ended', 'agent_name', 'entry',
    'retries', 'max_retries', 'created_at', 'completed_at', 'attempt', 'concurrency_key',
    'payload_checked')
end

-- The task id at the start of a payload (`{"task_id": "<id>", ...`, as
-- exo and the reference write it), read without decoding it; nil for a
-- payload over the size limit or one that does not start so. It is
-- trusted only when the task's hash says its payload was checked
-- (`payload_checked`: exo's client built it, or a claim decoded it) and
-- names this very entry as the one that carries it (`entry`, which only
-- exo's scripts write): the hash then holds what the payload would tell
-- (created_at, agent_name, max_retries). A task with a concurrency key is
-- decoded all the same.
local function quick_task_id(payload)
  if SIZE_LIMIT > 0 and #payload > SIZE_LIMIT then return nil end
  local task_id = string.match(payload, '^{%s*"task_id"%s*:%s*"([%w_.:-]+)"')
  if task_id and #task_id <= 128 and not RESERVED_IDS[task_id] then return task_id end
  return nil
end
local function claim_batch(consumer, count, default_max, retries_cap, token, entry_ids, rules_json)
  -- One look at the delayed set's first task: whether any is due (then
  -- they go onto the queue), and, unless that or the claim below changes
  -- the set, the reply's next_due_ms.
  local first_delayed = rcall('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
  local delayed_unchanged = true
  if #first_delayed > 0 and tonumber(first_delayed[2]) <= now_ms() then
    promote_due(100)
    delayed_unchanged = false
  end

  local drained = false
  local function read_new(wanted)
    local read = rcall('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', int_text(wanted), 'STREAMS', QUEUE, '>')
    local got = (read and read[1]) and read[1][2] or {}
    if #got < wanted then drained = true end
    return got
  end

  local entries = {}
  if #entry_ids > 0 then
    for _, entry_id in ipairs(entry_ids) do
      local found = rcall('XRANGE', QUEUE, entry_id, entry_id)
      if #found > 0 then
        table.insert(entries, found[1])
      else
        rcall('XACK', QUEUE, GROUP, entry_id)
      end
    end
  else
    entries = read_new(count)
  end

  local rows, rejected = {}, {}
  local claimed, held = 0, 0
  local function refuse(entry_id, task_id, reason)
    table.insert(rejected, entry_id)
    table.insert(rejected, task_id or '')
    table.insert(rejected, reason)
  end
  local rules = nil
  local function worker_rules()
    if rules == nil then
      rules = {}
      if rules_json and rules_json ~= '' then
        local ok, decoded = pcall(cjson.decode, rules_json)
        if ok and type(decoded) == 'table' then rules = decoded end
      end
    end
    return rules
  end

  local function take_entry(entry_id, payload)
    if not payload then
      local reason = 'queue entry has no `payload` field'
      reject(entry_id, nil, payload, reason)
      refuse(entry_id, nil, reason)
      return
    end
    -- The task's own entry, queued by exo, is read without decoding
    -- its payload (see quick_task_id); any other is decoded.
    local task_id = quick_task_id(payload)
    local key, state, decoded
    if task_id then
      key = task_key(task_id)
      state = claim_state(key)
    end
    if not task_id or state[4] ~= entry_id or state[11] ~= '1' or state[10] then
      local decoded_id, problem
      decoded_id, decoded, problem = payload_task_id(payload)
      if problem then
        reject(entry_id, decoded_id, payload, problem)
        refuse(entry_id, decoded_id, problem)
        return
      end
      if decoded_id ~= task_id then
        task_id = decoded_id
        key = task_key(task_id)
        state = claim_state(key)
      end
    end
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
      rcall('ZREM', DELAYED, task_id)
      rcall('HDEL', DELAYED_PAYLOADS, task_id)
      delayed_unchanged = false
    end
    local ckey, limit, key_problem
    if decoded then ckey, limit, key_problem = concurrency_of(decoded, worker_rules()) end
    if key_problem then
      reject(entry_id, task_id, payload, key_problem)
      refuse(entry_id, task_id, key_problem)
      return
    end
    if ckey and limit then
      local running = key_running(ckey)
      if rcall('SISMEMBER', running, task_id) == 0 then
        if rcall('LLEN', key_waiting(ckey)) > 0 then
          -- Others of the key wait already: this one goes behind them.
          hold(task_id, entry_id, payload, ckey, limit)
          admit_held(ckey, limit)
          held = held + 1
          return
        end
        if slots_used(ckey, limit) >= limit then
          hold(task_id, entry_id, payload, ckey, limit)
          held = held + 1
          return
        end
        rcall('SADD', running, task_id)
      end
    end
    -- The attempt number (the fencing token) goes up by one, written
    -- with the rest.
    local attempt = math.floor(number_of(state[9] or '0') or 0) + 1
    local max_retries = state[6]
    if not max_retries then
      max_retries = default_max
      if decoded and type(decoded.max_retries) == 'number' and decoded.max_retries >= 0 then
        max_retries = tostring(math.floor(decoded.max_retries))
      end
    end
    -- (A count within the cap keeps its text.)
    local retries_limit = number_of(max_retries)
    if not retries_limit or retries_limit > retries_cap then
      max_retries = tostring(math.min(retries_limit or tonumber(default_max), retries_cap))
    end
    -- The fields this write sets: what changes with every claim, then
    -- `entry` and `max_retries` unless the hash has them already (an
    -- exo-queued task's own entry), then what a decoded payload adds.
    local fields = { 'status', 'running', 'worker_id', consumer, 'started_at', NOW,
      'lease', token, 'attempt', int_text(attempt) }
    local n = 10
    if owner ~= entry_id then
      fields[n + 1], fields[n + 2] = 'entry', entry_id
      n = n + 2
    end
    if state[6] ~= max_retries then
      fields[n + 1], fields[n + 2] = 'max_retries', max_retries
      n = n + 2
    end
    if decoded then
      if not state[7] and type(decoded.created_at) == 'number' then
        fields[n + 1], fields[n + 2] = 'created_at', string.format('%.17g', decoded.created_at)
        n = n + 2
      end
      if not state[3] and type(decoded.agent_config) == 'table' and type(decoded.agent_config.name) == 'string' then
        fields[n + 1], fields[n + 2] = 'agent_name', decoded.agent_config.name
        n = n + 2
      end
    end
    if ckey then
      fields[n + 1], fields[n + 2] = 'concurrency_key', ckey
      n = n + 2
    end
    if state[11] ~= '1' then
      fields[n + 1], fields[n + 2] = 'payload_checked', '1'
      n = n + 2
    end
    -- A task that ran before (a retry) drops its last ending.
    if state[8] then rcall('HDEL', key, 'completed_at', 'result') end
    -- Only exo's own writes set `entry`: such a task is indexed already.
    local write = write_task
    if owner then write = fresh(state[7]) and update_task_in_ttl or update_task end
    write(task_id, unpack(fields, 1, n))
    local at = #rows
    rows[at + 1], rows[at + 2], rows[at + 3] = entry_id, task_id, payload
    rows[at + 4], rows[at + 5], rows[at + 6] = attempt, state[5] or '0', max_retries
    claimed = claimed + 1
  end

  local function take(entry)
    local entry_id = entry[1]
    local payload = entry_payload(entry[2])
    local ok, failure = guarded(entry_id, payload, take_entry, entry_id, payload)
    if not ok then refuse(entry_id, nil, failure) end
  end

  local examined = 0
  while true do
    local held_before = held
    for _, entry in ipairs(entries) do take(entry) end
    examined = examined + #entries
    local wanted = count - claimed
    if wanted <= 0 or examined >= CLAIM_SCAN then break end
    entries = {}
    -- Read on when held-back tasks made room, or when a blocking read's
    -- entries did not fill the claim.
    if not drained and (held > held_before or #entry_ids > 0) then
      entry_ids = {}
      entries = read_new(wanted)
    end
    if #entries == 0 and drained and rcall('EXISTS', PRIORITIZED) == 1 then
      -- Nothing else waits on the stream: prioritized tasks go next.
      if release_prioritized('+inf', wanted) > 0 then
        drained = false
        entries = read_new(wanted)
      end
    end
    if #entries == 0 then break end
  end
  local due = -1
  if not delayed_unchanged then
    due = next_due()
  elseif #first_delayed > 0 then
    due = tonumber(first_delayed[2])
  end
  return { due, rows, rejected, now_ms() }
end

-- The task a claim reply took last (rows of six, the task id second), or
-- nil.
local function last_claimed(claim)
  local rows = claim and claim[2]
  if rows and #rows > 0 then return rows[#rows - 4] end
  return nil
end

-- The worker's heartbeat hash (when it has one) counts attempts that ended
-- (completed, and failed or retrying), moves its busy slots
-- (`active_tasks`) by `busy_delta` (tasks claimed less attempts ended) and
-- names `current` as the task it runs, at once: a fleet listing is right
-- before the next heartbeat, and its current task and busy slots agree.
local function note_on_worker(worker_id, completed, failed, current, busy_delta)
  busy_delta = busy_delta or 0
  if worker_id == '' or (completed == 0 and failed == 0 and busy_delta == 0 and not current) then return end
  local worker = worker_key(worker_id)
  if rcall('EXISTS', worker) == 0 then return end
  if completed > 0 then rcall('HINCRBY', worker, 'tasks_processed', int_text(completed)) end
  if failed > 0 then rcall('HINCRBY', worker, 'tasks_failed', int_text(failed)) end
  if busy_delta ~= 0 and rcall('HEXISTS', worker, 'active_tasks') == 1 then
    -- A heartbeat computed before a claim may have written an older count;
    -- the next one sets it right, and it never shows below zero.
    if rcall('HINCRBY', worker, 'active_tasks', int_text(busy_delta)) < 0 then
      rcall('HSET', worker, 'active_tasks', 0)
    end
  end
  if current then rcall('HSET', worker, 'current_task_id', current) end
end

-- How many tasks a claim reply took (rows of six).
local function claimed_count(claim)
  local rows = claim and claim[2]
  if rows then return #rows / 6 end
  return 0
end

-- Runs `body` with writes deferred (see `defer_writes`) and sends them
-- after it, also when it raises (the error goes on).
local function with_deferred_writes(body)
  defer_writes()
  local ok, result = pcall(body)
  flush_writes()
  if not ok then error(result) end
  return result
end

-- A decision on the tool call a waiting task stopped at (`approval` in its
-- hash, JSON of an ApprovalRequest): the journal records it (the next
-- attempt replays it), the event stream says who decided what and when,
-- and the task goes back on the queue at once. Returns the tool's name.
local function decide(task_id, approval_json, approved, by, reason, arguments)
  local key = task_key(task_id)
  local approval = cjson.decode(approval_json)
  local record = { kind = 'decision', scope = approval.scope, call = approval.call,
    tool_call_id = approval.tool_call_id, approved = approved, by = by, at = tonumber(NOW) }
  if reason and reason ~= '' then record.reason = reason end
  if arguments and arguments ~= '' then record.arguments = arguments end
  -- The decision is written even into a full journal: without it the
  -- resumed run would wait for the same call again.
  rcall('RPUSH', journal_key(task_id), cjson.encode(record))
  rcall('EXPIRE', journal_key(task_id), TASK_TTL)
  local verdict = approved and 'approved' or 'denied'
  local message = "Tool '" .. tostring(approval.tool_name) .. "' " .. verdict .. ' by ' .. by
  if reason and reason ~= '' then message = message .. ': ' .. reason end
  local shown = { tool_name = approval.tool_name, tool_call_id = approval.tool_call_id,
    approved = approved, by = by, at = record.at, reason = record.reason, arguments = record.arguments }
  local event = fill(fill(fill(STATUS_DECIDED, '\\u0001agent', approval.agent_name or ''),
    '\\u0001message', message), '\\u0001approval', shown)
  append_events(task_id, { event })
  rcall('ZREM', APPROVALS, task_id)
  rcall('HDEL', key, 'waiting_for', 'approval', 'approval_deadline')
  rcall('HSET', key, 'approval_decision', cjson.encode(record), 'journal', '1')
  local payload = rcall('HGET', DELAYED_PAYLOADS, task_id)
  rcall('HDEL', DELAYED_PAYLOADS, task_id)
  if payload and payload ~= '' then
    update_task(task_id, 'status', 'pending')
    enqueue(task_id, payload)
  else
    local reason_lost = 'the payload of the task waiting for approval was lost'
    update_task(task_id, 'status', 'failed', 'error', reason_lost, 'completed_at', NOW)
    dead_letter(task_id, '', reason_lost, rcall('HGET', key, 'attempt'))
    end_stream(task_id, { error_event(reason_lost, ERROR_TYPES.LOST_PAYLOAD, approval.agent_name or '', false),
      status_event('error', approval.agent_name or '', reason_lost) })
  end
  return approval.tool_name
end

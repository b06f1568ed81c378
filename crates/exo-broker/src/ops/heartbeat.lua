-- heartbeat.lua: a worker's periodic tick, in one round trip.
--
-- ARGV[7]  worker id (also its consumer name)
-- ARGV[8]  heartbeat TTL in seconds
-- ARGV[9]  ms after which an entry pending on this worker that it does not
--          run is an orphan (a claim whose reply was lost)
-- ARGV[10] this process's nonce (two processes must not share a worker id)
-- ARGV[11] number of heartbeat fields N
-- ARGV[12 .. 11+2N]  field, value pairs
-- then triples (entry id, task id, fence) of the tasks the worker runs.
--
-- Refuses (returns {{}, {}, 0, "conflict", other nonce}) when the heartbeat
-- hash belongs to another live process with the same worker id. Otherwise
-- writes the heartbeat hash with its TTL and records the worker in the
-- registry; renews the lease on the worker's running entries (XCLAIM to
-- itself resets their idle time, so the reaper leaves them alone) and the
-- TTL of their task hashes and streams, so a run longer than the task TTL
-- keeps its state; hands orphans back to the queue without charging a
-- retry; and reports which running tasks were cancelled or are no longer
-- this attempt.
--
-- It also keeps the fleet clock: when no heartbeat of any worker has landed
-- for half a TTL (the server was stopped, or the whole fleet cut off), the
-- reaper stays quiet for one TTL, so a stall never looks like the death of
-- every worker.
-- Returns {cancelled task ids, lost task ids, orphans handed back, "ok"}.

local worker_id, ttl, orphan_ms = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local nonce, field_count = ARGV[10], tonumber(ARGV[11])
local worker = worker_key(worker_id)

local owner = rcall('HGET', worker, 'nonce')
if owner and owner ~= '' and owner ~= nonce then
  return { {}, {}, 0, 'conflict', owner }
end

local beat_key, quiet_key = FLEET_BEAT, FLEET_QUIET_UNTIL
local last_beat = tonumber(rcall('GET', beat_key) or '')
if last_beat and NOW_MS - last_beat > ttl * 500 then
  local quiet_until = NOW_MS + ttl * 1000
  if quiet_until > (tonumber(rcall('GET', quiet_key) or '0') or 0) then
    rcall('SET', quiet_key, quiet_until, 'PX', ttl * 2000)
  end
end
rcall('SET', beat_key, NOW_MS, 'PX', 24 * 3600 * 1000)

-- The counters never go back: a final write may have counted a task in
-- the hash (finish.lua) after this worker read its own counters.
local counters = { tasks_processed = true, tasks_failed = true }
local fields = { 'nonce', nonce }
for i = 12, 11 + 2 * field_count, 2 do
  local name, value = ARGV[i], ARGV[i + 1]
  if counters[name] then
    local stored = tonumber(rcall('HGET', worker, name) or '')
    if stored and stored > (tonumber(value) or 0) then value = tostring(stored) end
  end
  table.insert(fields, name)
  table.insert(fields, value)
end
rcall('HSET', worker, unpack(fields))
rcall('EXPIRE', worker, ttl)
rcall('ZADD', REGISTRY, NOW, worker_id)
rcall('ZREMRANGEBYSCORE', REGISTRY, '-inf', NOW_MS / 1000 - 3600)

local cancelled, lost, entries, running = {}, {}, {}, {}
for i = 12 + 2 * field_count, #ARGV, 3 do
  local entry_id, task_id, attempt = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  table.insert(entries, entry_id)
  running[entry_id] = true
  local key = task_key(task_id)
  local status = rcall('HGET', key, 'status')
  if not fence_holds(key, attempt) then
    table.insert(lost, task_id)
  else
    rcall('EXPIRE', key, TASK_TTL)
    rcall('EXPIRE', stream_key(task_id), EVENT_TTL)
    if status == 'cancelled' then table.insert(cancelled, task_id) end
  end
end
if #entries > 0 then
  local args = { QUEUE, GROUP, worker_id, 0 }
  for _, entry_id in ipairs(entries) do table.insert(args, entry_id) end
  table.insert(args, 'JUSTID')
  rcall('XCLAIM', unpack(args))
end

-- Orphans: pending here, idle, and not run by this worker.
local handed_back = 0
for _, pending in ipairs(rcall('XPENDING', QUEUE, GROUP, 'IDLE', orphan_ms, '-', '+', 100, worker_id)) do
  local entry_id = pending[1]
  if not running[entry_id] then
    local found = rcall('XRANGE', QUEUE, entry_id, entry_id)
    local payload = found[1] and entry_payload(found[1][2])
    guarded(entry_id, payload, function()
      if not found[1] then
        rcall('XACK', QUEUE, GROUP, entry_id)
        return
      end
      if not payload then
        reject(entry_id, nil, payload, 'queue entry has no `payload` field')
        return
      end
      local task_id, _, problem = payload_task_id(payload)
      if problem then
        reject(entry_id, task_id, payload, problem)
        return
      end
      local key = task_key(task_id)
      local state = rcall('HMGET', key, 'status', 'entry')
      local status, carrier = state[1], state[2]
      if status == 'running' and carrier == entry_id then
        -- Claimed and marked running, but the worker never got the reply.
        rcall('HINCRBY', key, 'attempt', 1)
        rcall('HDEL', key, 'worker_id', 'started_at')
        write_task(task_id, 'status', 'pending')
        enqueue(task_id, payload)
        ack(entry_id)
        handed_back = handed_back + 1
      elseif status == 'running' or status == 'completed' or status == 'failed' or status == 'cancelled' then
        -- A stray duplicate of a task another entry runs, or a task that
        -- has ended.
        ack(entry_id)
      elseif carrier and carrier ~= entry_id and entry_exists(carrier) then
        -- Waiting on another entry already: this one is a stray copy.
        ack(entry_id)
      else
        -- Read by a blocking claim that never marked it: back in line as
        -- it is.
        enqueue(status and task_id, payload)
        ack(entry_id)
        handed_back = handed_back + 1
      end
    end)
  end
end
return { cancelled, lost, handed_back, 'ok' }

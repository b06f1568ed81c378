-- release.lua: hand tasks back to the queue (a worker shutting down).
--
-- ARGV[7...] triples (entry id, task id, fence)
--
-- For each task still on this attempt and running: bump the attempt (so any
-- late write from this worker is refused), set it back to `pending` and put
-- its payload back on the queue as a new entry. Does not count a retry.
-- Returns the number of tasks handed back.

local released = 0
for i = 7, #ARGV, 3 do
  local entry_id, task_id, attempt = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = task_key(task_id)
  local state = rcall('HMGET', key, 'status', 'attempt', 'entry')
  local found = rcall('XRANGE', QUEUE, entry_id, entry_id)
  local payload = found[1] and entry_payload(found[1][2])
  local owner = (not state[3]) or state[3] == entry_id
  if state[1] == 'running' and fence_holds(key, attempt) and owner and payload then
    rcall('HINCRBY', key, 'attempt', 1)
    rcall('HDEL', key, 'worker_id', 'started_at')
    write_task(task_id, 'status', 'pending')
    enqueue(task_id, payload)
    ack(entry_id)
    released = released + 1
  end
end
return released

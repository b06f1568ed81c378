-- redrive.lua: put a dead-letter entry back on the queue.
--
-- ARGV[7]  dead-letter entry id
--
-- The task starts over: status `pending`, retries 0, its old event stream
-- removed (it already ended), the dead-letter entry deleted.
-- Returns {task id} or {"", reason}.

local found = rcall('XRANGE', DEAD, ARGV[7], ARGV[7])
if #found == 0 then return { '', 'no dead-letter entry ' .. ARGV[7] } end
local fields = {}
local raw = found[1][2]
for i = 1, #raw, 2 do fields[raw[i]] = raw[i + 1] end
local payload, task_id = fields['payload'], fields['task_id']
if not payload or payload == '' then return { '', 'the entry has no payload to run' } end
local parsed_id, _, problem = payload_task_id(payload)
if problem then return { '', 'the payload cannot run: ' .. problem } end
task_id = parsed_id
local key = task_key(task_id)
local status = rcall('HGET', key, 'status')
if status and status ~= 'failed' then
  return { '', 'task ' .. task_id .. ' is ' .. status .. ', not failed; only failed tasks can be re-driven' }
end
rcall('HINCRBY', key, 'attempt', 1)
-- The next claim decodes the payload again (its refusal may have been of
-- a field the hash does not show).
rcall('HDEL', key, 'error', 'completed_at', 'result', 'ended', 'worker_id', 'started_at', 'cancel_requested_at', 'entry',
  'payload_checked')
write_task(task_id, 'status', 'pending', 'retries', 0)
rcall('DEL', stream_key(task_id))
enqueue(task_id, payload)
rcall('XDEL', DEAD, ARGV[7])
return { task_id }

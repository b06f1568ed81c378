-- cancel.lua: cancel a task, whatever state it is in.
--
-- ARGV[7]  task id
--
-- Marks the hash `cancelled` (as reference clients do) and publishes the
-- cancel signal. A queued or delayed task can never start after this: it is
-- removed from the delayed and prioritized sets (a task held back by its
-- concurrency key is skipped when its turn comes), and claim skips its
-- queue entry; its event
-- stream is ended here. A running task's worker ends the stream when it has
-- stopped. Returns {"not_found"}, {"already", status}, {"cancelled"}
-- (queued task) or {"cancelling"} (running task).

local task_id = ARGV[7]
local key = task_key(task_id)
local state = rcall('HMGET', key, 'status', 'agent_name', 'waiting_for')
local status = state[1]
if not status then return { 'not_found' } end
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return { 'already', status }
end

return { cancel_task(task_id, status, state[2], state[3]) }

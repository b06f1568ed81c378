-- cancel.lua: cancel a task, whatever state it is in.
--
-- ARGV[7]  task id
--
-- Marks the hash `cancelled` (as reference clients do) and publishes the
-- cancel signal. A queued or delayed task can never start after this: it is
-- removed from the delayed set, and claim skips its queue entry; its event
-- stream is ended here. A running task's worker ends the stream when it has
-- stopped. Returns {"not_found"}, {"already", status}, {"cancelled"}
-- (queued task) or {"cancelling"} (running task).

local task_id = ARGV[7]
local key = task_key(task_id)
local state = redis.call('HMGET', key, 'status', 'agent_name', 'waiting_for')
local status = state[1]
if not status then return { 'not_found' } end
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return { 'already', status }
end

write_task(task_id, 'status', 'cancelled', 'completed_at', NOW, 'cancel_requested_at', NOW)
redis.call('PUBLISH', cancel_channel(task_id), 'cancel')
if status == 'running' then return { 'cancelling' } end

redis.call('ZREM', DELAYED, task_id)
redis.call('HDEL', DELAYED_PAYLOADS, task_id)
redis.call('HDEL', key, 'scheduled_for')
if state[3] == 'approval' then
  redis.call('HDEL', key, 'waiting_for')
  end_stream(task_id, { status_event('cancelled', state[2], 'Task cancelled while waiting for approval') })
else
  end_stream(task_id, { status_event('cancelled', state[2], 'Task cancelled before it started') })
end
return { 'cancelled' }

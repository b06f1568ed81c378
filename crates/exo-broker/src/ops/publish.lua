-- publish.lua: append a batch of events to a task's stream.
--
-- ARGV[7]  task id
-- ARGV[8]  the fence ("<attempt>:<token>", "" to skip the check)
-- ARGV[9...] event JSON strings, in order
--
-- One XADD and one PUBLISH per event, one EXPIRE per batch. With an attempt,
-- the batch is refused when the attempt is no longer current or the stream
-- has ended (a worker cut off from Redis must not mix its events into the
-- next attempt's); without one, only when the stream has ended. A fenced
-- batch refreshes the task hash's TTL. Returns the number of events written, or -1 if refused.

local task_id, attempt = ARGV[7], ARGV[8]
local state = redis.call('HMGET', task_key(task_id), 'attempt', 'ended')
-- Nothing is ever appended after the terminal event, fenced or not.
if state[2] == '1' then return -1 end
if attempt ~= '' then
  if not fence_holds(task_key(task_id), attempt) then return -1 end
  redis.call('EXPIRE', task_key(task_id), TASK_TTL)
end
local events = {}
for i = 9, #ARGV do table.insert(events, ARGV[i]) end
append_events(task_id, events)
return #events

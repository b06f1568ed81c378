-- publish.lua: append a batch of events to a task's stream.
--
-- ARGV[8]     task id
-- ARGV[9...]  event JSON strings, in order
--
-- One XADD and one PUBLISH per event, one EXPIRE per batch. Returns the
-- number of events written.

local task_id = ARGV[8]
local events = {}
for i = 9, #ARGV do table.insert(events, ARGV[i]) end
append_events(task_id, events)
return #events

-- decide.lua: a person's decision on the tool call a task waits at.
--
-- ARGV[7]  task id
-- ARGV[8]  "approve" or "deny"
-- ARGV[9]  who decides (recorded)
-- ARGV[10] why ("" for no reason)
-- ARGV[11] arguments (a JSON object as text) that replace the model's, or ""
-- ARGV[12] the tool call id the decision is for, or "" for the one waiting
--
-- Only a task that waits (`waiting_for` = `approval`) takes a decision: the
-- journal records it, the event stream gets a `status` event (`running`,
-- with the decision in the extension field `approval`), and the task goes
-- back on the queue; any worker resumes it from its journal (see decide in
-- common.lua). Returns {"resumed", tool name}, {"not_found"} or
-- {"not_waiting", status}.

local task_id = ARGV[7]
local key = task_key(task_id)
local state = rcall('HMGET', key, 'status', 'waiting_for', 'approval')
if not state[1] then return { 'not_found' } end
if state[1] ~= 'pending' or state[2] ~= 'approval' or not state[3] then
  return { 'not_waiting', state[1] }
end
if ARGV[12] ~= '' then
  local waiting = cjson.decode(state[3])
  if waiting.tool_call_id ~= ARGV[12] then return { 'not_waiting', state[1] } end
end
local tool = decide(task_id, state[3], ARGV[8] == 'approve', ARGV[9], ARGV[10], ARGV[11])
return { 'resumed', tool }

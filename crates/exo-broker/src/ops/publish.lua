-- publish.lua: append a batch of events to a task's stream.
--
-- ARGV[7]  task id
-- ARGV[8]  the fence ("<attempt>:<token>", "" to skip the check)
-- ARGV[9]  n, the number of step-journal records that follow
-- ARGV[10...9+n] step-journal records (JSON) to append to the task's journal
-- ARGV[10+n...] event JSON strings, in order
--
-- One XADD and one PUBLISH per event, one EXPIRE per batch; journal
-- records go in the same round trip as the events produced with them. With an attempt,
-- the batch is refused when the attempt is no longer current or the stream
-- has ended (a worker cut off from Redis must not mix its events into the
-- next attempt's); without one, only when the stream has ended. A fenced
-- batch refreshes the task hash's TTL. Returns the number of events written, or -1 if refused.

local task_id, attempt = ARGV[7], ARGV[8]
-- One read for both checks.
local state = rcall('HMGET', task_key(task_id), 'ended', 'attempt', 'lease')
-- Nothing is ever appended after the terminal event, fenced or not.
if state[1] == '1' then return -1 end
if attempt ~= '' then
  if not fence_matches(attempt, state[2], state[3]) then return -1 end
  rcall('EXPIRE', task_key(task_id), TASK_TTL)
end
-- Both are written from where they lie in ARGV.
local journal_last = math.min(9 + math.max(math.floor(number_of(ARGV[9]) or 0), 0), #ARGV)
append_journal_range(task_id, ARGV, 10, journal_last)
append_event_range(task_id, ARGV, journal_last + 1, #ARGV)
return #ARGV - journal_last

-- claim.lua: take up to COUNT tasks for a worker and mark them running.
--
-- ARGV[7]  consumer (the worker id)
-- ARGV[8]  count
-- ARGV[9]  default max retries
-- ARGV[10] the most retries a payload may ask for (the worker's cap)
-- ARGV[11] this claim's random token (see fence_holds)
-- ARGV[12] the worker's concurrency rules: JSON {"default": n, "max": n,
--          "keys": {key: n}} ("" for none); see concurrency_of
-- ARGV[13...] entry ids already read by a blocking XREADGROUP (optional);
--             without them the script reads new entries itself.
--
-- First promotes due retries onto the queue. Then, per entry (each under
-- pcall, so one bad entry never aborts the batch): a payload that is too
-- large, cannot be decoded or carries an invalid task id goes to the dead
-- letter (and its hash, when it is this entry's, to `failed`); a task
-- already cancelled or finished is acknowledged and skipped; an entry of a
-- task running on another entry is a stray and acknowledged; the running
-- task's own entry delivered again (the group was re-created) is left
-- pending for its worker's heartbeat or the reaper; every other task gets
-- attempt+1 (the fencing token), status `running`, and `entry`.
--
-- The worker's heartbeat hash (when it has one) names the task it took
-- last, at once.
--
-- Returns {next_due_ms, rows, rejected, server_now_ms} where rows is a flat
-- list of (entry id, task id, payload, attempt, retries, max retries) (the
-- fence is "<attempt>:<token>") and
-- rejected a flat list of (entry id, task id or "", reason). The server's
-- clock comes back so that the worker waits for the next retry by the same
-- clock.

local entry_ids = {}
for i = 13, #ARGV do table.insert(entry_ids, ARGV[i]) end
return with_deferred_writes(function()
  local claim = claim_batch(ARGV[7], tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10]), ARGV[11], entry_ids, ARGV[12])
  -- Bookkeeping: a hash Redis refuses does not undo the claim.
  local noted, note_error = pcall(note_on_worker, ARGV[7], 0, 0, last_claimed(claim), claimed_count(claim))
  if not noted then caught(note_error) end
  return claim
end)

-- deregister.lua: remove a stopping worker, in one round trip.
--
-- ARGV[7]  worker id
-- ARGV[8]  this process's nonce
--
-- Deletes the heartbeat hash only when it is this process's own (another
-- live process with the same worker id keeps its heartbeat), drops the
-- worker from the registry, and removes its consumer when nothing is
-- pending on it (pending entries stay for the reaper).
-- Returns {hash deleted (0/1), consumer removed (0/1)}.

local worker_id, nonce = ARGV[7], ARGV[8]
local worker = worker_key(worker_id)
local owner = rcall('HGET', worker, 'nonce')
if owner and owner ~= '' and owner ~= nonce then return { 0, 0 } end
rcall('DEL', worker)
rcall('ZREM', REGISTRY, worker_id)
local removed = 0
local ok, left = pcall(rcall, 'XPENDING', QUEUE, GROUP, '-', '+', 1, worker_id)
if ok and #left == 0 then
  removed = rcall('XGROUP', 'DELCONSUMER', QUEUE, GROUP, worker_id) >= 0 and 1 or 0
end
return { 1, removed }

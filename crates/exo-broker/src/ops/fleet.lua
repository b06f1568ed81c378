-- fleet.lua: every known worker with its heartbeat, in one round trip.
--
-- ARGV[7]  seconds a worker without a heartbeat stays listed (as dead)
-- ARGV[8...] ids of heartbeat hashes found by SCAN (see `Admin::fleet`)
--
-- Reads the registry (worker id -> last heartbeat time), which exo workers
-- keep. Reference workers write only their heartbeat hash, so the fleet
-- also enters, with the hash's `last_heartbeat`, every worker with a
-- heartbeat hash that the registry does not hold yet: the ids the caller
-- found by SCAN, and the consumers of the queue's group (a worker reads the
-- queue under its worker id). A listed worker whose hash has no `nonce`
-- (not an exo worker) has its time refreshed from the hash. From then on
-- such a worker is listed like an exo worker, as dead once its hash is
-- gone. A worker whose heartbeat hash is gone is returned with no fields,
-- and forgotten once it has been silent for ARGV[7] seconds.
-- Returns a flat list of (worker id, last seen, {field, value, ...}).

local keep = tonumber(ARGV[7])

local function seen_at(beat)
  local seen = tonumber(beat)
  if not seen or seen ~= seen then return NOW end
  return seen
end

local function enter(worker_id)
  if rcall('ZSCORE', REGISTRY, worker_id) then return end
  local beat = rcall('HGET', worker_key(worker_id), 'last_heartbeat')
  if beat then rcall('ZADD', REGISTRY, seen_at(beat), worker_id) end
end

for i = 8, #ARGV do enter(ARGV[i]) end
local ok_info, consumers = pcall(rcall, 'XINFO', 'CONSUMERS', QUEUE, GROUP)
if ok_info then
  for _, consumer in ipairs(consumers) do
    for i = 1, #consumer, 2 do
      if consumer[i] == 'name' then enter(consumer[i + 1]) end
    end
  end
end

local members = rcall('ZRANGE', REGISTRY, 0, -1, 'WITHSCORES')
local rows = {}
for i = 1, #members, 2 do
  local worker_id, score = members[i], members[i + 1]
  local fields = rcall('HGETALL', worker_key(worker_id))
  local nonce, beat
  for j = 1, #fields, 2 do
    if fields[j] == 'nonce' then nonce = fields[j + 1] end
    if fields[j] == 'last_heartbeat' then beat = fields[j + 1] end
  end
  if beat and not nonce then
    local seen = seen_at(beat)
    if seen > tonumber(score) then
      rcall('ZADD', REGISTRY, seen, worker_id)
      score = tostring(seen)
    end
  end
  if tonumber(score) >= NOW_MS / 1000 - keep then
    table.insert(rows, worker_id)
    table.insert(rows, score)
    table.insert(rows, fields)
  end
end
rcall('ZREMRANGEBYSCORE', REGISTRY, '-inf', NOW_MS / 1000 - keep)
return rows

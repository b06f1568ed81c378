-- fleet.lua: every known worker with its heartbeat, in one round trip.
--
-- ARGV[7]  seconds a worker without a heartbeat stays listed (as dead)
--
-- Reads the registry (worker id -> last heartbeat time); a worker whose
-- heartbeat hash is gone is returned with no fields, and forgotten once it
-- has been silent for ARGV[7] seconds.
-- Returns a flat list of (worker id, last seen, {field, value, ...}).

local keep = tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', REGISTRY, '-inf', NOW_MS / 1000 - keep)
local members = redis.call('ZRANGE', REGISTRY, 0, -1, 'WITHSCORES')
local rows = {}
for i = 1, #members, 2 do
  table.insert(rows, members[i])
  table.insert(rows, members[i + 1])
  table.insert(rows, redis.call('HGETALL', worker_key(members[i])))
end
return rows

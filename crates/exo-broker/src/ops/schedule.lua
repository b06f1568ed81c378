-- schedule.lua: cron schedules, fired by every worker with no leader.
--
-- A schedule is `SCHEDULES[name]` (its JSON, written by the caller) and
-- `SCHEDULES_DUE[name]` (when it fires next, Unix ms). Firing is two steps
-- by the caller: it submits the tick's task under an id made from the name
-- and the tick (a repeat submit of that id is a no-op), then `advance`s the
-- schedule only if it is still at the tick it read, so a tick becomes one
-- task however many workers fire it, and a worker that dies between the two
-- steps leaves the tick to the next one.
--
-- ARGV[7]  mode: `put`, `remove`, `due` or `advance`
-- ARGV[8]  name (put, remove, advance)
-- ARGV[9]  the schedule's JSON (put, advance: its new JSON)
-- ARGV[10] next fire time, Unix ms (put, advance)
-- ARGV[11] the fire time it was read at, Unix ms (advance)
-- ARGV[12] at most this many schedules (due)
--
-- Returns: put {1}; remove {1|0}; due {now ms, name, json, due ms, ...};
-- advance {1} when it moved, {0} when another caller moved it first (or the
-- schedule is gone).

local mode, name = ARGV[7], ARGV[8]

if mode == 'due' then
  local limit = tonumber(ARGV[12]) or 100
  local names = rcall('ZRANGEBYSCORE', SCHEDULES_DUE, '-inf', now_ms(), 'WITHSCORES', 'LIMIT', 0, limit)
  local reply = { now_ms() }
  for index = 1, #names, 2 do
    local json = rcall('HGET', SCHEDULES, names[index])
    if json then
      table.insert(reply, names[index])
      table.insert(reply, json)
      table.insert(reply, names[index + 1])
    else
      rcall('ZREM', SCHEDULES_DUE, names[index])
    end
  end
  return reply
end

if name == '' or #name > 64 or string.find(name, '[^%w_%-%.]') then
  return redis.error_reply('ERR invalid schedule name: 1 to 64 letters, digits, `_`, `-` or `.`')
end

if mode == 'put' then
  rcall('HSET', SCHEDULES, name, ARGV[9])
  rcall('ZADD', SCHEDULES_DUE, ARGV[10], name)
  return { 1 }
end

if mode == 'remove' then
  rcall('ZREM', SCHEDULES_DUE, name)
  return { rcall('HDEL', SCHEDULES, name) }
end

-- advance
local current = rcall('ZSCORE', SCHEDULES_DUE, name)
if not current or tonumber(current) ~= tonumber(ARGV[11]) or rcall('HEXISTS', SCHEDULES, name) == 0 then
  return { 0 }
end
rcall('HSET', SCHEDULES, name, ARGV[9])
rcall('ZADD', SCHEDULES_DUE, ARGV[10], name)
return { 1 }

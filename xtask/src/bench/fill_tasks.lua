-- fill_tasks.lua: writes finished tasks the way exo's scripts leave them,
-- for the listing benchmark (never used against a real deployment).
--
-- ARGV[1] key prefix (`exo:`)
-- ARGV[2] first index
-- ARGV[3] how many
-- ARGV[4] every how many-th task is `failed` (the rest `completed`)
--
-- Task `bench-<index>` is created at time <index>, so the newest has the
-- highest index.

local prefix, first, count, every = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for index = first, first + count - 1 do
  local task_id = 'bench-' .. index
  local status = (index % every == 0) and 'failed' or 'completed'
  redis.call('HSET', prefix .. 'task:' .. task_id, 'task_id', task_id, 'status', status,
    'created_at', index, 'completed_at', index + 1, 'agent_name', 'agent-' .. (index % 10),
    'result', '{"output": "ok"}')
  redis.call('ZADD', prefix .. 'task:timeline', index, task_id)
  redis.call('SADD', prefix .. 'task:index', task_id)
end
return count

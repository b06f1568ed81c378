-- list.lua: a page of tasks, newest first, optionally of one status.
--
-- ARGV[7]  status filter ("" for all)
-- ARGV[8]  page size
-- ARGV[9]  cursor: the timeline rank to start from (0 for the newest)
-- ARGV[10] how many timeline entries to examine at most
-- ARGV[11] tenant filter ("" for all)
-- ARGV[12] agent name filter ("" for all)
--
-- Walks the timeline and reads each task hash; hashes that expired are
-- dropped from the timeline and the index on the way.
-- Returns {next cursor (-1 at the end), {{field, value, ...}, ...}}.

local wanted, size, cursor, budget = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local tenant, agent = ARGV[11], ARGV[12]
local found, examined, rank = {}, 0, cursor
while #found < size and examined < budget do
  local batch = math.min(100, budget - examined)
  local ids = rcall('ZREVRANGE', TIMELINE, rank, rank + batch - 1)
  if #ids == 0 then return { -1, found } end
  for _, task_id in ipairs(ids) do
    rank = rank + 1
    examined = examined + 1
    local fields = rcall('HGETALL', task_key(task_id))
    if #fields == 0 then
      rcall('ZREM', TIMELINE, task_id)
      rcall('SREM', INDEX, task_id)
      rank = rank - 1
    else
      local status, owner, name = nil, '', ''
      for i = 1, #fields, 2 do
        local field = fields[i]
        if field == 'status' then status = fields[i + 1]
        elseif field == 'tenant' then owner = fields[i + 1]
        elseif field == 'agent_name' then name = fields[i + 1] end
      end
      if (wanted == '' or status == wanted) and (tenant == '' or owner == tenant)
        and (agent == '' or name == agent) then
        table.insert(found, fields)
        if #found >= size then break end
      end
    end
  end
end
if rcall('ZCARD', TIMELINE) <= rank then return { -1, found } end
return { rank, found }

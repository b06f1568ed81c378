-- stats.lua: the queue's numbers in one round trip.
--
-- No script-specific arguments.
--
-- Returns {stream length, group lag (-1 when Redis cannot tell),
-- pending count, {consumer, pending, ...}, delayed count, dead-letter count,
-- created_at of the oldest task not yet delivered ("" when none),
-- prioritized count, held count (tasks held back by their concurrency
-- key, summed over at most 1,000 keys)}.

local length = rcall('XLEN', QUEUE)
local lag, pending, last_delivered = -1, 0, nil
local ok, groups = pcall(rcall, 'XINFO', 'GROUPS', QUEUE)
if ok then
  for _, group in ipairs(groups) do
    local info = {}
    for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
    if info['name'] == GROUP then
      pending = info['pending'] or 0
      last_delivered = info['last-delivered-id']
      if type(info['lag']) == 'number' then lag = info['lag'] end
    end
  end
end
local consumers = {}
local summary = rcall('XPENDING', QUEUE, GROUP)
if summary[4] then
  for _, pair in ipairs(summary[4]) do
    table.insert(consumers, pair[1])
    table.insert(consumers, tonumber(pair[2]))
  end
end
local oldest = ''
if last_delivered then
  local first = rcall('XRANGE', QUEUE, '(' .. last_delivered, '+', 'COUNT', 1)
  if first[1] then
    local payload = entry_payload(first[1][2])
    if payload then
      -- Read off the text, never decoded: a large payload must not stall
      -- Redis on every stats call.
      local created = tonumber(string.sub(payload, 1, 65536):match('"created_at"%s*:%s*([%d%.eE+-]+)') or '')
      if created and created > 0 then oldest = string.format('%.17g', created) end
    end
  end
end
local held = 0
for _, ckey in ipairs(rcall('HRANDFIELD', KEYS_HELD, 1000)) do
  held = held + rcall('LLEN', key_waiting(ckey))
end
return { length, lag, pending, consumers, rcall('ZCARD', DELAYED), rcall('XLEN', DEAD), oldest,
  rcall('ZCARD', PRIORITIZED), held }

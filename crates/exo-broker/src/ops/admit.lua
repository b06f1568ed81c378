-- admit.lua: fleet-wide rate limits of model calls. A call is admitted
-- against every rule that covers it (its model's, its provider's, ...) at
-- once: reserved in all of them, or in none.
--
-- A rule keeps its reservations of the last window in
-- `LIMIT_FAMILY .. rule` (a sorted set: reservation id by when it was made,
-- ms), their tokens in `.. ':tokens'` (a hash) and a provider's back-off in
-- `.. ':paused'` (until when, ms). All three expire two windows after the
-- last reservation.
--
-- ARGV[7]  mode: `admit`, `settle` or `pause`
-- ARGV[8]  reservation id (admit)
-- ARGV[9]  tokens: the call's estimate (admit)
-- ARGV[10] pause (ms; pause)
-- ARGV[11] how many rules follow
-- ARGV[12...] the rules, four values each: name, requests per window
--          (0: no limit), tokens per window (0: no limit), window (ms)
-- then settlements, three values each: rule name, reservation id, tokens
--          the call used. Any mode settles them first, so a worker that
--          admits a call settles its earlier calls in the same round trip.
--
-- Returns {'granted'}, {'wait', ms, reason, rule} (reason `paused`,
-- `requests` or `tokens`; the rule that frees up last), {'never', tokens
-- per window, rule} when the call alone exceeds a rule, {'settled', n}
-- (how many settlements were still in their window) or {'paused', until
-- ms} (the first rule's).

local mode, id = ARGV[7], ARGV[8]
local tokens = math.max(0, tonumber(ARGV[9]) or 0)

local function valid(name)
  return name ~= '' and #name <= 200 and not string.find(name, '[%s%c]')
    and not string.find(name, ':tokens$') and not string.find(name, ':paused$')
end

local rule_count = tonumber(ARGV[11]) or 0
local first_settlement = 12 + rule_count * 4
if rule_count < 0 or rule_count % 1 ~= 0 or first_settlement > #ARGV + 1 or (#ARGV + 1 - first_settlement) % 3 ~= 0 then
  return redis.error_reply('ERR malformed rate-limit call')
end
local rules = {}
for index = 12, first_settlement - 1, 4 do
  local name = ARGV[index]
  if not valid(name) then
    return redis.error_reply('ERR invalid rate-limit rule name')
  end
  local reserved = LIMIT_FAMILY .. name
  rules[#rules + 1] = {
    name = name,
    rpm = tonumber(ARGV[index + 1]) or 0,
    tpm = tonumber(ARGV[index + 2]) or 0,
    window = math.max(1, tonumber(ARGV[index + 3]) or 60000),
    reserved = reserved,
    tokens = reserved .. ':tokens',
    paused = reserved .. ':paused',
  }
end
for index = first_settlement, #ARGV, 3 do
  if not valid(ARGV[index]) then
    return redis.error_reply('ERR invalid rate-limit rule name')
  end
end

-- Settlements: the tokens calls used replace their estimates, in the
-- rules whose window still holds them (a settle never creates one).
local settled = 0
for index = first_settlement, #ARGV, 3 do
  local reserved = LIMIT_FAMILY .. ARGV[index]
  if rcall('ZSCORE', reserved, ARGV[index + 1]) then
    rcall('HSET', reserved .. ':tokens', ARGV[index + 1], math.max(0, tonumber(ARGV[index + 2]) or 0))
    settled = settled + 1
  end
end
if mode == 'settle' then
  return { 'settled', settled }
end
if #rules == 0 then
  return redis.error_reply('ERR no rate-limit rule')
end

if mode == 'pause' then
  local rule = rules[1]
  local pause = math.max(0, tonumber(ARGV[10]) or 0)
  local until_ms = NOW_MS + pause
  local current = tonumber(rcall('GET', rule.paused) or '0') or 0
  if until_ms > current then
    rcall('SET', rule.paused, until_ms, 'PX', math.max(1, pause))
    current = until_ms
  end
  return { 'paused', current }
end

-- admit: how long until `rule` has room for the call (0: now), and why.
local function wait_for(rule)
  local paused = tonumber(rcall('GET', rule.paused) or '0') or 0
  if paused > NOW_MS then
    return paused - NOW_MS, 'paused'
  end
  -- Reservations older than the window no longer count.
  local horizon = NOW_MS - rule.window
  local expired = rcall('ZRANGEBYSCORE', rule.reserved, '-inf', horizon)
  if #expired > 0 then
    rcall('ZREMRANGEBYSCORE', rule.reserved, '-inf', horizon)
    for first = 1, #expired, 500 do
      rcall('HDEL', rule.tokens, unpack(expired, first, math.min(first + 499, #expired)))
    end
  end
  local count = rcall('ZCARD', rule.reserved)
  if rule.rpm > 0 and count >= rule.rpm then
    -- The (count - rpm + 1)th oldest must leave the window first.
    local oldest = rcall('ZRANGE', rule.reserved, count - rule.rpm, count - rule.rpm, 'WITHSCORES')
    return math.max(1, tonumber(oldest[2]) + rule.window - NOW_MS + 1), 'requests'
  end
  if rule.tpm > 0 then
    local used = 0
    for _, value in ipairs(rcall('HVALS', rule.tokens)) do
      used = used + (tonumber(value) or 0)
    end
    if used + tokens > rule.tpm then
      local reservations = rcall('ZRANGE', rule.reserved, 0, -1, 'WITHSCORES')
      local freed = 0
      for index = 1, #reservations, 2 do
        freed = freed + (tonumber(rcall('HGET', rule.tokens, reservations[index]) or '0') or 0)
        if used - freed + tokens <= rule.tpm then
          return math.max(1, tonumber(reservations[index + 1]) + rule.window - NOW_MS + 1), 'tokens'
        end
      end
      return rule.window, 'tokens'
    end
  end
  return 0, nil
end

for _, rule in ipairs(rules) do
  if rule.tpm > 0 and tokens > rule.tpm then
    return { 'never', rule.tpm, rule.name }
  end
end
local longest, reason, holder = 0, nil, nil
for _, rule in ipairs(rules) do
  local wait, why = wait_for(rule)
  if wait > longest then
    longest, reason, holder = wait, why, rule.name
  end
end
if longest > 0 then
  return { 'wait', longest, reason, holder }
end
for _, rule in ipairs(rules) do
  rcall('ZADD', rule.reserved, NOW_MS, id)
  rcall('HSET', rule.tokens, id, tokens)
  rcall('PEXPIRE', rule.reserved, rule.window * 2)
  rcall('PEXPIRE', rule.tokens, rule.window * 2)
end
return { 'granted' }

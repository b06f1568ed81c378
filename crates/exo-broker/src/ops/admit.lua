-- admit.lua: fleet-wide rate limits of model calls, one rule at a time.
--
-- A rule (a model, as the agent names it) keeps its reservations of the
-- last window in `LIMIT_FAMILY .. rule` (a sorted set: reservation id by
-- when it was made, ms), their tokens in `.. ':tokens'` (a hash) and a
-- provider's back-off in `.. ':paused'` (until when, ms). All three expire
-- two windows after the last reservation.
--
-- ARGV[7]  mode: `admit`, `settle` or `pause`
-- ARGV[8]  rule
-- ARGV[9]  reservation id (admit, settle)
-- ARGV[10] requests per window (0: no limit)
-- ARGV[11] tokens per window (0: no limit)
-- ARGV[12] tokens: the call's estimate (admit) or what it used (settle)
-- ARGV[13] window (ms)
-- ARGV[14] pause (ms; pause)
--
-- Returns {'granted'}, {'wait', ms, reason} (reason `paused`, `requests`
-- or `tokens`), {'never', tokens per window} when the call alone exceeds
-- the rule, {'settled', 0|1} or {'paused', until ms}.

local mode, rule, id = ARGV[7], ARGV[8], ARGV[9]
local rpm, tpm = tonumber(ARGV[10]) or 0, tonumber(ARGV[11]) or 0
local tokens = math.max(0, tonumber(ARGV[12]) or 0)
local window = math.max(1, tonumber(ARGV[13]) or 60000)

if rule == '' or #rule > 200 or string.find(rule, '[%s%c]')
  or string.find(rule, ':tokens$') or string.find(rule, ':paused$') then
  return redis.error_reply('ERR invalid rate-limit rule name')
end
local RESERVED = LIMIT_FAMILY .. rule
local TOKENS = RESERVED .. ':tokens'
local PAUSED = RESERVED .. ':paused'

local function keep_for_two_windows()
  redis.call('PEXPIRE', RESERVED, window * 2)
  redis.call('PEXPIRE', TOKENS, window * 2)
end

if mode == 'pause' then
  local pause = math.max(0, tonumber(ARGV[14]) or 0)
  local until_ms = NOW_MS + pause
  local current = tonumber(redis.call('GET', PAUSED) or '0') or 0
  if until_ms > current then
    redis.call('SET', PAUSED, until_ms, 'PX', math.max(1, pause))
    current = until_ms
  end
  return { 'paused', current }
end

if mode == 'settle' then
  if redis.call('ZSCORE', RESERVED, id) then
    redis.call('HSET', TOKENS, id, tokens)
    return { 'settled', 1 }
  end
  return { 'settled', 0 }
end

-- admit
local paused = tonumber(redis.call('GET', PAUSED) or '0') or 0
if paused > NOW_MS then
  return { 'wait', paused - NOW_MS, 'paused' }
end
if tpm > 0 and tokens > tpm then
  return { 'never', tpm }
end
-- Reservations older than the window no longer count.
local horizon = NOW_MS - window
local expired = redis.call('ZRANGEBYSCORE', RESERVED, '-inf', horizon)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', RESERVED, '-inf', horizon)
  for first = 1, #expired, 500 do
    redis.call('HDEL', TOKENS, unpack(expired, first, math.min(first + 499, #expired)))
  end
end
local count = redis.call('ZCARD', RESERVED)
if rpm > 0 and count >= rpm then
  -- The (count - rpm + 1)th oldest must leave the window first.
  local oldest = redis.call('ZRANGE', RESERVED, count - rpm, count - rpm, 'WITHSCORES')
  return { 'wait', math.max(1, tonumber(oldest[2]) + window - NOW_MS + 1), 'requests' }
end
if tpm > 0 then
  local used = 0
  for _, value in ipairs(redis.call('HVALS', TOKENS)) do
    used = used + (tonumber(value) or 0)
  end
  if used + tokens > tpm then
    local reservations = redis.call('ZRANGE', RESERVED, 0, -1, 'WITHSCORES')
    local freed = 0
    for index = 1, #reservations, 2 do
      freed = freed + (tonumber(redis.call('HGET', TOKENS, reservations[index]) or '0') or 0)
      if used - freed + tokens <= tpm then
        return { 'wait', math.max(1, tonumber(reservations[index + 1]) + window - NOW_MS + 1), 'tokens' }
      end
    end
    return { 'wait', window, 'tokens' }
  end
end
redis.call('ZADD', RESERVED, NOW_MS, id)
redis.call('HSET', TOKENS, id, tokens)
keep_for_two_windows()
return { 'granted' }

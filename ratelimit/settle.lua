-- Settlement of one admitted request: frees its lease, corrects its token
-- reservation by the tokens the node reported, and takes a request that was
-- not served back out of the month's request count. Times are microseconds
-- from the caller's clock.
--
-- KEYS[1..4] as in admit.lua: token window times, amounts and sum, leases.
-- KEYS[5] month counters of the month the request was admitted in.
--
-- ARGV[1] now
-- ARGV[2] reservation id
-- ARGV[3] window correction in tokens, negative for a refund
-- ARGV[4] window length
-- ARGV[5] 1 when the key has tokens_per_minute
-- ARGV[6] 1 to free the lease
-- ARGV[7] 1 when the month is counted; ARGV[8] month correction in tokens
-- ARGV[9] month key TTL in seconds
-- ARGV[10] requests to take back out of the month's request count: 1 for a
--          request that was not served, else 0
-- ARGV[11] deadline in microseconds of Redis's clock, 0 for none, as in
--          admit.lua
-- ARGV[12], ARGV[13], ARGV[14], ARGV[15] the instance's latest read of
--          the month: tokens, requests, generation (0 for none) and
--          version, which restore the month when Redis has lost it (see
--          month.lua)
-- ARGV[16] generation of a month hash created now
--
-- Reply: 1 when the month is counted, then the month's token and request
-- counts after the correction, its generation and version. A call past
-- its deadline replies {-1}.

local deadline = tonumber(ARGV[11])
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000000 + tonumber(t[2]) > deadline then
    return {-1}
  end
end

local now = tonumber(ARGV[1])
local id = ARGV[2]
local delta = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local in_window = ARGV[5] == '1'
local lease = ARGV[6] == '1'
local monthly = ARGV[7] == '1'
local month_delta = tonumber(ARGV[8])
local month_ttl = tonumber(ARGV[9])
local month_refund = tonumber(ARGV[10])
local month_known = {t = tonumber(ARGV[12]), r = tonumber(ARGV[13]), g = tonumber(ARGV[14]),
  v = tonumber(ARGV[15])}
local month_gen = tonumber(ARGV[16])

if lease then
  redis.call('ZREM', KEYS[4], id)
end

if in_window and delta ~= 0 then
  local at = tonumber(redis.call('ZSCORE', KEYS[1], id))
  local old = tonumber(redis.call('HGET', KEYS[2], id))
  if at and old and at > now - window then
    local amount = math.max(0, old + delta)
    redis.call('HSET', KEYS[2], id, int(amount))
    redis.call('INCRBY', KEYS[3], int(amount - old))
  elseif delta > 0 then
    -- The reservation has left the window: the extra tokens count from now.
    local extra = id .. '+'
    redis.call('ZADD', KEYS[1], int(now), extra)
    redis.call('HSET', KEYS[2], extra, int(delta))
    redis.call('INCRBY', KEYS[3], int(delta))
    for k = 1, 3 do
      redis.call('PEXPIRE', KEYS[k], int(2 * window / 1000))
    end
  end
end

if not monthly then
  return {0, 0, 0, 0, 0}
end
-- The month is restored first, so that a month that Redis lost gets the
-- correction on top of the counts it had.
local m = month_load(KEYS[5], month_known, month_gen, month_ttl)
if month_delta ~= 0 or month_refund > 0 then
  m.t = math.max(0, m.t + month_delta)
  m.r = math.max(0, m.r - month_refund)
  month_store(KEYS[5], m, month_gen, month_ttl)
end
return {1, m.t, m.r, m.g, m.v}

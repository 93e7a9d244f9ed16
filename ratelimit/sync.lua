-- Reconciliation of one key after a Redis outage: adds to Redis what one
-- instance counted while Redis was unreachable. A batch sent twice, for
-- example again after a reply that timed out, still counts once. Months
-- carry the instance's running totals and the window each reservation's
-- amount. Leases are set, not added, and the request rate keeps the GCRA
-- time the instance sent before.
--
-- KEYS[1..5] as in admit.lua: GCRA time, token window times, amounts and
--            sum, leases.
-- KEYS[6]    GCRA times sent by each instance, by instance ID (hash).
-- KEYS[7..]  month counters, one for each entry of the batch's months.
--
-- ARGV[1] deadline in microseconds of Redis's clock, 0 for none: a call
--         that runs later returns {-1} and changes nothing, because its
--         caller has given up on it and counted locally.
-- ARGV[2] the batch as JSON:
--   instance      ID of the sending instance
--   now           the instance's time, microseconds
--   rate          omitted without a request rate, else: interval, burst,
--                 tat (the instance's GCRA time) and synced (the GCRA time
--                 of its last Redis decision)
--   window_length token window length
--   window        reservations counted locally that are still in the
--                 window: id, at (admission time), amount
--   lease_ttl     lease TTL
--   leases        IDs of requests admitted locally and still in flight
--   released      IDs of leases whose requests ended during the outage
--   months        for each month key: counted and stored (the instance's
--                 running totals of its local counts, and the part Redis
--                 has added before), each as tokens and requests, shared
--                 (the instance's latest read of the month, which restores
--                 a month that Redis lost, see month.lua) as tokens,
--                 requests, gen and version, and ttl in seconds
--   gen           generation of a month hash created now
--
-- Reply: 1, the GCRA time after the call (0 without a rate), then the
-- token and request counts, generation and version of each month.

local deadline = tonumber(ARGV[1])
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000000 + tonumber(t[2]) > deadline then
    return {-1}
  end
end

local batch = cjson.decode(ARGV[2])
local inst = batch.instance
local now = batch.now

-- cjson decodes a missing list as nil and a JSON null as cjson.null.
local function list(v)
  if type(v) == 'table' then
    return v
  end
  return {}
end

-- requests: add the part of the instance's GCRA time beyond what Redis
-- has seen from it, so that the admissions of several instances during
-- the outage add up. The result stays within one burst of now, like any
-- GCRA time.
local tat = 0
local rate = batch.rate
if type(rate) == 'table' then
  local stored = tonumber(redis.call('GET', KEYS[1])) or 0
  local sent = tonumber(redis.call('HGET', KEYS[6], inst)) or 0
  local extra = math.max(0, rate.tat - math.max(rate.synced, sent, now))
  tat = math.max(stored, now) + extra
  tat = math.min(tat, now + rate.interval * rate.burst)
  tat = math.max(tat, stored, rate.tat)
  local ttl = int(math.ceil((tat - now) / 1000) + 1000)
  redis.call('SET', KEYS[1], int(tat), 'PX', ttl)
  redis.call('HSET', KEYS[6], inst, int(rate.tat))
  redis.call('PEXPIRE', KEYS[6], ttl)
end

-- tokens: each reservation at its amount, added unless Redis has it.
local window = batch.window_length
local entries = list(batch.window)
if #entries > 0 then
  for _, e in ipairs(entries) do
    if e.at > now - window then
      local old = tonumber(redis.call('HGET', KEYS[3], e.id))
      if not old then
        old = 0
        redis.call('ZADD', KEYS[2], int(e.at), e.id)
      end
      redis.call('HSET', KEYS[3], e.id, int(e.amount))
      redis.call('INCRBY', KEYS[4], int(e.amount - old))
    end
  end
  for k = 2, 4 do
    redis.call('PEXPIRE', KEYS[k], int(2 * window / 1000))
  end
end

-- concurrency: leases for the requests still in flight, renewed from now
-- on by the instance, and none for those that ended.
local leases = list(batch.leases)
for _, id in ipairs(leases) do
  redis.call('ZADD', KEYS[5], int(now + batch.lease_ttl), id)
end
if #leases > 0 then
  redis.call('PEXPIRE', KEYS[5], int(2 * batch.lease_ttl / 1000))
end
for _, id in ipairs(list(batch.released)) do
  redis.call('ZREM', KEYS[5], id)
end

-- monthly quotas: month_load first restores a month that Redis lost.
-- Each instance's running totals sit in the month's hash under its ID,
-- and only their growth since then is added. Without them, because the
-- instance never sent any or Redis lost them, the part that the instance
-- has recorded as stored counts as sent.
local out = {1, tat}
for i, m in ipairs(list(batch.months)) do
  local key = KEYS[6 + i]
  local known = {t = m.shared.tokens, r = m.shared.requests, g = m.shared.gen,
    v = m.shared.version}
  local month = month_load(key, known, batch.gen, m.ttl)
  local t_field, r_field = 'c:t:' .. inst, 'c:r:' .. inst
  local v = redis.call('HMGET', key, t_field, r_field)
  local sent_t = tonumber(v[1]) or m.stored.tokens
  local sent_r = tonumber(v[2]) or m.stored.requests
  month.t = math.max(0, month.t + m.counted.tokens - sent_t)
  month.r = math.max(0, month.r + m.counted.requests - sent_r)
  month_store(key, month, batch.gen, m.ttl)
  redis.call('HSET', key, t_field, int(m.counted.tokens), r_field, int(m.counted.requests))
  out[#out + 1] = month.t
  out[#out + 1] = month.r
  out[#out + 1] = month.g
  out[#out + 1] = month.v
end
return out

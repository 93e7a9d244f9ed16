-- Admission of one request: checks every limit and, only when all pass,
-- consumes the request's share of each. Times are microseconds read from the
-- caller's clock, so that every instance and every test decides with the
-- time it passes. The algorithms match algorithms.go and local.go.
--
-- KEYS[1] GCRA theoretical arrival time (string)
-- KEYS[2] token window: reservation id -> admission time (sorted set)
-- KEYS[3] token window: reservation id -> tokens (hash)
-- KEYS[4] token window: sum of KEYS[3] (string)
-- KEYS[5] leases: reservation id -> expiry time (sorted set)
-- KEYS[6] month counters: t tokens, r requests (hash)
--
-- ARGV[1] now
-- ARGV[2] rate interval, 0 for no request rate; ARGV[3] burst
-- ARGV[4] tokens per minute, 0 for no limit; ARGV[5] tokens to reserve in
--         the window; ARGV[6] window length
-- ARGV[7] reservation id
-- ARGV[8] 1 to take a lease; ARGV[9] max leases, 0 for no limit;
--         ARGV[10] lease TTL
-- ARGV[11] 1 to count the month; ARGV[12] monthly tokens limit;
--          ARGV[13] monthly requests limit, 0 for none;
--          ARGV[14] tokens to reserve in the month
-- ARGV[15], ARGV[16] the month's token and request counts of this
--          instance's latest read, which restore the month when Redis has
--          lost it (see month.lua); ARGV[21], ARGV[22] the generation and
--          version of that read, 0 for none
-- ARGV[17] month key TTL in seconds
-- ARGV[18] 1 when the request counts towards the monthly requests, else 0
-- ARGV[19] this instance's GCRA time of the subject, 0 for none. It carries
--          the requests the instance admitted while Redis was unreachable.
-- ARGV[20] deadline in microseconds of Redis's clock, 0 for none: a call
--          that runs later changes nothing, because its caller has given up
--          on it and decided locally.
-- ARGV[23] generation of a month hash created now
--
-- Reply: allowed (0 or 1), then four values for each limit in the order
-- requests, tokens, concurrency, monthly_tokens, monthly_requests: exceeded,
-- remaining, reset and retry. The month's token and request counts, its
-- generation (0 when Redis has no hash for it) and version end it.
-- A call past its deadline replies {-1}.

local deadline = tonumber(ARGV[20])
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000000 + tonumber(t[2]) > deadline then
    return {-1}
  end
end

local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
local tpm_need = tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local id = ARGV[7]
local lease = ARGV[8] == '1'
local max_leases = tonumber(ARGV[9])
local lease_ttl = tonumber(ARGV[10])
local monthly = ARGV[11] == '1'
local mt_limit = tonumber(ARGV[12])
local mr_limit = tonumber(ARGV[13])
local mt_need = tonumber(ARGV[14])
local mt_known = tonumber(ARGV[15])
local mr_known = tonumber(ARGV[16])
local month_ttl = tonumber(ARGV[17])
local mr_need = tonumber(ARGV[18])
local known_tat = tonumber(ARGV[19])
local month_known = {t = mt_known, r = mr_known, g = tonumber(ARGV[21]), v = tonumber(ARGV[22])}
local month_gen = tonumber(ARGV[23])

local out = {0}
for i = 2, 25 do
  out[i] = 0
end
local function put(slot, exceeded, remaining, reset, retry)
  local b = 2 + slot * 4
  if exceeded then
    out[b] = 1
  end
  out[b + 1] = math.floor(remaining)
  out[b + 2] = math.ceil(reset)
  out[b + 3] = math.ceil(retry)
end
local ok = true

-- Runs fn on list in slices, because unpack of a long list would overflow
-- the Lua stack.
local function in_slices(list, fn)
  for i = 1, #list, 256 do
    fn({unpack(list, i, math.min(i + 255, #list))})
  end
end

-- requests: GCRA. The later of the stored time and the instance's own
-- counts, because both only grow.
local new_tat
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]))
  if not tat or tat < known_tat then
    tat = known_tat
  end
  if tat < now then
    tat = now
  end
  new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if now < allow_at then
    ok = false
    put(0, true, 0, tat - now, allow_at - now)
  else
    put(0, false, (now - allow_at) / interval, new_tat - now, 0)
  end
end

-- tokens: drop the reservations that left the window, then test the rest.
local function expire_window(cutoff)
  local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', int(cutoff))
  if #old == 0 then
    return
  end
  local freed = 0
  in_slices(old, function(ids)
    local amounts = redis.call('HMGET', KEYS[3], unpack(ids))
    for j = 1, #ids do
      freed = freed + (tonumber(amounts[j]) or 0)
    end
    redis.call('HDEL', KEYS[3], unpack(ids))
  end)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', int(cutoff))
  redis.call('DECRBY', KEYS[4], int(freed))
end

-- Time until enough of the oldest reservations leave for need to fit.
local function window_retry(used, need)
  local freed, start = 0, 0
  while true do
    local page = redis.call('ZRANGE', KEYS[2], start, start + 127, 'WITHSCORES')
    if #page == 0 then
      return window
    end
    local ids = {}
    for i = 1, #page, 2 do
      ids[#ids + 1] = page[i]
    end
    local amounts = redis.call('HMGET', KEYS[3], unpack(ids))
    for i = 1, #ids do
      freed = freed + (tonumber(amounts[i]) or 0)
      if used - freed + need <= tpm then
        return tonumber(page[2 * i]) + window - now
      end
    end
    start = start + 128
  end
end

if tpm > 0 then
  expire_window(now - window)
  local used = tonumber(redis.call('GET', KEYS[4])) or 0
  if used + tpm_need > tpm then
    ok = false
    local reset = 0
    local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
    if #newest > 0 then
      reset = tonumber(newest[2]) + window - now
    end
    put(1, true, math.max(0, tpm - used), reset, window_retry(used, tpm_need))
  else
    put(1, false, tpm - used - tpm_need, 0, 0)
  end
end

-- concurrency: leases whose expiry has passed belong to dead instances.
if lease then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', int(now))
  if max_leases > 0 then
    local live = redis.call('ZCARD', KEYS[5])
    if live >= max_leases then
      ok = false
      put(2, true, 0, 0, 0)
    else
      put(2, false, max_leases - live - 1, 0, 0)
    end
  end
end

-- monthly quotas. month_load restores the month from this instance's
-- latest read when Redis has lost it since. What an instance counted while
-- Redis was unreachable reaches Redis through sync.lua, which the
-- instance runs before its next admission.
local mt, mr = 0, 0
local month = {g = 0, v = 0}
if monthly then
  month = month_load(KEYS[6], month_known, month_gen, month_ttl)
  mt, mr = month.t, month.r
  if mt_limit > 0 then
    if mt + mt_need > mt_limit then
      ok = false
      put(3, true, math.max(0, mt_limit - mt), 0, 0)
    else
      put(3, false, mt_limit - mt - mt_need, 0, 0)
    end
  end
  if mr_limit > 0 then
    if mr + mr_need > mr_limit then
      ok = false
      put(4, true, math.max(0, mr_limit - mr), 0, 0)
    else
      put(4, false, mr_limit - mr - mr_need, 0, 0)
    end
  end
end

-- Every limit passed: consume. The TTLs only collect garbage; the limits
-- never depend on Redis's own clock.
if ok then
  out[1] = 1
  if interval > 0 then
    redis.call('SET', KEYS[1], int(new_tat), 'PX', int(math.ceil((new_tat - now) / 1000) + 1000))
  end
  if tpm > 0 then
    redis.call('ZADD', KEYS[2], int(now), id)
    redis.call('HSET', KEYS[3], id, int(tpm_need))
    redis.call('INCRBY', KEYS[4], int(tpm_need))
    for k = 2, 4 do
      redis.call('PEXPIRE', KEYS[k], int(2 * window / 1000))
    end
  end
  if lease then
    redis.call('ZADD', KEYS[5], int(now + lease_ttl), id)
    redis.call('PEXPIRE', KEYS[5], int(2 * lease_ttl / 1000))
  end
  if monthly then
    month.t = mt + mt_need
    month.r = mr + mr_need
    month_store(KEYS[6], month, month_gen, month_ttl)
    mt, mr = month.t, month.r
  end
end
out[22] = mt
out[23] = mr
out[24] = month.g
out[25] = month.v
return out

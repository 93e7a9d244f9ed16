-- Month counters after Redis lost data. admit.lua, settle.lua, sync.lua
-- and restore.lua each start with this file.
--
-- A month hash contains t (tokens) and r (requests), g (its generation, a
-- random ID written when the hash is created) and v (its version, raised
-- by every write). Each instance remembers the counts, generation and
-- version of its latest read of the hash and sends them with each call.
-- When the hash is missing or has another generation than that read,
-- Redis has lost the hash since the read, and month_load restores it:
-- the counts of the read, plus what was counted since the hash was
-- created again. The fields bg, bv, bt and br hold the read that the hash
-- was restored from. A later read of the same lost generation replaces
-- it, so that every instance raises the hash with what it read and no
-- read counts twice.

-- Numbers go to Redis as integer strings: tostring would print large
-- microsecond times in exponent form, which integer commands reject.
local function int(x)
  return string.format('%.0f', x)
end

-- Writes the counters of m to key with a version one higher, and gives a
-- new hash the generation gen.
local function month_store(key, m, gen, ttl)
  if m.g == 0 then
    m.g = gen
  end
  m.v = m.v + 1
  redis.call('HSET', key, 't', int(m.t), 'r', int(m.r), 'g', int(m.g), 'v', int(m.v))
  redis.call('EXPIRE', key, int(ttl))
end

-- Returns the counters of the month hash key as {t, r, g, v}, g 0 when
-- the hash is missing. known is the caller's latest read, {t, r, g, v},
-- g 0 for none. When the hash lacks that read, the read is added to it
-- as described above, and the hash is written with generation gen when
-- it is new.
local function month_load(key, known, gen, ttl)
  local h = redis.call('HMGET', key, 't', 'r', 'g', 'v', 'bg', 'bv', 'bt', 'br')
  local m = {t = tonumber(h[1]) or 0, r = tonumber(h[2]) or 0, g = tonumber(h[3]) or 0,
    v = tonumber(h[4]) or 0}
  -- A hash without a generation was written before generations existed,
  -- and contains every count.
  if known.g == 0 or known.g == m.g or (m.g == 0 and (h[1] or h[2])) then
    return m
  end
  local bg, bv = tonumber(h[5]) or 0, tonumber(h[6]) or 0
  local bt, br = tonumber(h[7]) or 0, tonumber(h[8]) or 0
  local t, r
  if bg == known.g then
    -- A read of the same lost hash: the later one replaces the base,
    -- which may lower the counts by the refunds made between the two.
    if known.v <= bv then
      return m
    end
    t, r = known.t, known.r
  else
    -- No base, or one from another lost generation, which versions cannot
    -- order: the larger count of each.
    t, r = math.max(bt, known.t), math.max(br, known.r)
  end
  m.t = math.max(0, m.t + t - bt)
  m.r = math.max(0, m.r + r - br)
  month_store(key, m, gen, ttl)
  redis.call('HSET', key, 'bg', int(known.g), 'bv', int(known.v), 'bt', int(t), 'br', int(r))
  return m
end

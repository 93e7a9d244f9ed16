-- Restoration of one month hash that Redis lost, without a request: see
-- month.lua.
--
-- KEYS[1] month counters (hash)
--
-- ARGV[1], ARGV[2], ARGV[3], ARGV[4] the instance's latest read of the
--         hash: tokens, requests, generation and version
-- ARGV[5] generation of a hash created now
-- ARGV[6] month key TTL in seconds
--
-- Reply: the month's token and request counts, its generation and
-- version, generation 0 when the hash is missing.

local known = {t = tonumber(ARGV[1]), r = tonumber(ARGV[2]), g = tonumber(ARGV[3]),
  v = tonumber(ARGV[4])}
local m = month_load(KEYS[1], known, tonumber(ARGV[5]), tonumber(ARGV[6]))
return {m.t, m.r, m.g, m.v}

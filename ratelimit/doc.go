// Package ratelimit authenticates API keys and enforces the request, token,
// concurrency and monthly limits of llmproxy before a request reaches the
// queue.
//
// A Limiter is built once from the auth, rate_limit and redis sections of the
// configuration. Reconfigure applies new auth and rate_limit sections and
// keeps the limit state of each key by its name. For each request the proxy
// calls Authenticate, ClientAddr for clients without a key, Key.Allows for
// the requested model, and then Admit, which checks every limit in one step.
// Admit returns a Decision, which carries the X-RateLimit-* and Retry-After
// header values, and, when the request is admitted, a Reservation. The proxy
// settles the Reservation with the token counts the node reports once the
// response ends, which corrects the token reservation and frees the
// concurrency slot.
//
// # Limits
//
// A request with a key is checked against five limits of the key. The
// request rate uses GCRA, which admits what a token bucket of size burst
// admits. Tokens per minute use a sliding window of 60 seconds. Requests in
// flight are counted. The monthly token and request quotas reset at the
// start of each UTC calendar month. A request without a key is checked against the request rate of its
// client address only. IPv6 clients are limited per /64 prefix, because one
// host commonly holds a whole /64. A request that any limit rejects consumes
// nothing: no rate allowance, no tokens, no request count and no slot.
//
// # Shared state
//
// When redis.addr is set, every limit is enforced across all instances: one
// Lua script per admission and one per settlement, each a single round trip.
// Concurrency slots are leases in a sorted set, scored by their expiry and
// renewed while held, so the slots of an instance that dies free themselves
// after Options.LeaseTTL. Without Redis every limit holds per instance.
//
// When a Redis call fails or takes longer than redis.timeout, the Limiter
// decides with its local state instead, so a Redis outage never causes a
// rejection by itself. It logs the outage once at Warn and the recovery at
// Info, sets llmproxy_redis_up, counts every operation decided locally in
// llmproxy_redis_fallback_total{component="ratelimit"}, and tries Redis
// again once a second by the injected clock. Every redis.check_interval of
// wall time it also reads Redis's clock with TIME, so that the gauge and
// the log follow Redis without traffic. Each script carries a deadline in
// Redis's clock, half of redis.timeout away, and changes nothing when it
// runs later. So a call that timed out in a Redis that hangs, and runs
// when Redis resumes, does not count what the instance then counted
// itself.
//
// During an outage each instance counts on its own, from the state of its
// last Redis decision: the request rate of the key or address and the
// token window as Redis reported them, with this instance's own admissions
// added. max_concurrent counts the requests this instance has in flight,
// and the monthly quotas continue from the last counts this instance read
// from Redis. An instance with no Redis decision for a key before the
// outage, such as one started during it, starts the key from zero.
//
// So no instance gets a fresh burst from an outage. Each still admits what
// its own copy of the limits allows. For an outage of length D, that is up
// to the burst left at its last Redis decision plus rate × D requests. It
// is also the tokens_per_minute left then plus what leaves the window, and
// the monthly quotas left then. The other instances do the same, so N
// instances admit up to N − 1 times that beyond the shared limit per
// outage, and one instance nothing beyond.
//
// # Reconciliation
//
// Once Redis responds again, each instance adds to Redis what it counted of
// each key during the outage, in one script call per key (sync.lua). That
// is the part of its GCRA time beyond the last one Redis reported, its
// reservations still in the token window, a lease for each request still
// in flight, the end of the leases of requests settled during the outage,
// and for each month the requests, tokens and settlement corrections it
// counted. Redis adds them to its own counts, which contain those of the
// other instances, and the instance continues from the totals. The health
// check does it for every key within redis.check_interval, and Admit does
// it for the request's key before the key's next admission in Redis.
// Months carry the instance's running totals and the window each
// reservation's amount, so a call sent again after a lost reply adds
// nothing twice.
//
// A month whose counters Redis has dropped, 35 days after its end, is not
// reconciled.
//
// # Data loss
//
// Redis can also come back without its data: after a restart without
// persistence, a failover to an empty replica or a FLUSHALL. An instance
// may see no outage at all when that takes less than redis.check_interval.
// Each month hash carries a generation, a random ID written when the hash
// is created, and a version that every write raises. Each instance keeps
// its latest read of each month of each key, from the replies of its
// admissions, settlements and reconciliations and from Usage. Every
// script that touches a month finds a hash that is missing or has another
// generation than that read, and restores it: the counts of the read,
// plus what was counted since the hash was created again. The hash keeps
// the read it was restored from, so a later read of the same lost hash
// replaces it and no count is added twice. So the first instance to touch
// the month restores what it read, and the others raise it to their
// latest reads. Without requests, the periodic check restores every month
// the instance has read, once a marker key that Redis lost has changed.
//
// NOTE: what Redis counted after the latest read of every instance is
// lost, and so are the reads of an instance that stopped. A Redis that
// comes back with older data, from a snapshot or a lagging replica,
// keeps its older counts, because the generation is the same. The request
// rate is restored by the next admission of each instance, which uses the
// later of Redis's and its own GCRA time. The token window and the leases
// are not restored: a loss frees at most the tokens_per_minute of one
// window and the slots of the requests then in flight, until they end.
//
// NOTE: the counts of an outage live only in the instance's memory until
// they are reconciled. They are lost when the instance stops before Redis
// answers again (Close reconciles while Redis is up), and for a key that a
// reload removes meanwhile. Client addresses are not reconciled: Redis
// continues from the later of its own request rate state and that of each
// instance that calls it, which carries the admissions of one instance,
// not their sum.
//
// The token window of other instances counts locally for a whole window
// after the last decision, which can reject more than Redis would.
//
// # Monthly requests
//
// A request counts towards monthly_requests when it is admitted, and
// SettleUnserved takes it back out for a request the proxy or the nodes
// failed to serve. Requests with Request.Uncounted set, which run no
// model, never count.
//
// # Clocks
//
// Every time a limit depends on comes from Options.Now, and the Redis scripts
// receive it as an argument, so tests drive refill, windows, lease expiry and
// the month reset with a fake clock, against Redis too. The cost is that with
// several instances the scripts compare timestamps written by different
// hosts. An instance whose clock runs d ahead of the others sees buckets
// refill and windows free d early, so it can admit about rate × d requests
// beyond the burst, and leases it checks expire d early. Instances also
// disagree about the month for d around midnight UTC at a month's start.
// Keep the hosts synchronised with NTP, which holds skew to milliseconds,
// well below the one-second resolution of Retry-After.
package ratelimit

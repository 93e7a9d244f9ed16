package ratelimit

import "context"

// KeyUsage is the usage of one key, as GET /admin/usage reports it.
type KeyUsage struct {
	Name     string `json:"name"`
	Priority string `json:"priority"`
	// Month is the UTC calendar month of the counts, "2006-01".
	Month string `json:"month"`
	// MonthlyTokens counts the tokens of the month: settled requests at
	// their reported counts, requests in flight at their reservation.
	MonthlyTokens int64 `json:"monthly_tokens"`
	// MonthlyRequests counts the admitted requests of the month.
	MonthlyRequests int64 `json:"monthly_requests"`
	// InFlight counts the requests admitted and not yet settled: across
	// all instances when Shared, on this instance otherwise. Across
	// instances it includes the requests of an instance that died until
	// their leases expire.
	InFlight int64 `json:"in_flight"`
	// Limits are the key's configured limits; zero means none.
	Limits KeyLimits `json:"limits"`
	// Shared reports whether the counts come from Redis. Without Redis, or
	// while it is down, they are this instance's.
	Shared bool `json:"shared"`
}

// Usage returns the usage of every key in configuration order. With Redis
// it reads the shared counts in one round trip, bounded by redis.timeout,
// and falls back to this instance's counts when Redis fails.
func (l *Limiter) Usage(ctx context.Context) []KeyUsage {
	now := l.now()
	month, _ := monthOf(now)
	keys := l.settings.Load().keys.ordered
	usage := make([]KeyUsage, len(keys))
	for i, k := range keys {
		inflight, tokens, requests := l.local.state(k.Name).snapshot(month)
		usage[i] = KeyUsage{
			Name:            k.Name,
			Priority:        k.Priority,
			Month:           month,
			MonthlyTokens:   tokens,
			MonthlyRequests: requests,
			InFlight:        inflight,
			Limits:          k.limits,
		}
	}
	if len(keys) == 0 || !l.useRedis(now) {
		return usage
	}
	// Redis's counts include this instance's counts of an outage only
	// once they are reconciled.
	for _, k := range keys {
		if _, err := l.syncKey(ctx, k, l.local.state(k.Name)); err != nil {
			l.redisFailed(ctx, now, err)
			return usage
		}
	}
	counts, err := l.redis.usage(ctx, keys, now)
	if err != nil {
		l.redisFailed(ctx, now, err)
		return usage
	}
	for i, k := range keys {
		state := l.local.state(k.Name)
		known := state.lastRead(month)
		if known.gen == 0 || known.gen == counts[i].month.gen {
			if counts[i].hasMonth {
				l.local.setSharedMonth(state, month, counts[i].month)
			}
			continue
		}
		// Redis has lost the month since this instance read it.
		read, err := l.restoreMonth(ctx, k, state, month, known, now)
		if err != nil {
			l.redisFailed(ctx, now, err)
			return usage
		}
		counts[i].month, counts[i].hasMonth = read, true
	}
	l.redisSucceeded()
	for i, c := range counts {
		// Without shared counts the local ones stay: this instance has
		// not read the month from Redis, and counts made without Redis
		// are its only counts.
		if c.hasMonth {
			usage[i].MonthlyTokens = c.month.counts.tokens
			usage[i].MonthlyRequests = c.month.counts.requests
		}
		usage[i].InFlight = c.inflight
		usage[i].Shared = true
	}
	return usage
}

package ratelimit

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// When Redis comes back without its data, after a restart without
// persistence, a failover to an empty replica or a FLUSHALL, each script
// that touches a month restores it from the instance's latest read (see
// month.lua). The periodic check also restores the months of keys that no
// request touches. It reads a marker key, which the first instance to find
// it missing writes again. A marker that changed since the instance's last
// check means that Redis lost its data set.

// markerScript returns the marker of Redis's data set, and first sets it
// to ARGV[1] when it is missing.
var markerScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1])
  v = ARGV[1]
end
return v
`)

// readMarker returns the marker of Redis's data set, which it sets to a
// new random value when Redis has none.
func (s *redisStore) readMarker(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	v, err := markerScript.Run(ctx, s.client, []string{s.prefix + "rl:marker"},
		newGeneration()).Text()
	if err != nil {
		return "", fmt.Errorf("read the marker of the redis data set: %w", err)
	}
	return v, nil
}

// restore runs restore.lua on month of subject with known, this
// instance's latest read of the month, and returns the month's counts.
func (s *redisStore) restore(
	ctx context.Context,
	subject, month string,
	known monthRead,
	now time.Time,
) (monthRead, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	keys := []string{s.keyNames(subject, month)[keyMonth]}
	args := []any{
		known.counts.tokens, known.counts.requests, known.gen, known.version,
		newGeneration(), monthKeyTTL(now, monthEndOf(month)),
	}
	reply, err := restoreScript.Run(ctx, s.client, keys, args...).Int64Slice()
	if err != nil {
		return monthRead{}, fmt.Errorf("run restoration script: %w", err)
	}
	if len(reply) != 4 {
		return monthRead{}, fmt.Errorf("restoration script returned %d values: %w",
			len(reply), errBadReply)
	}
	return parseMonthRead(reply), nil
}

// restoreMonth restores month of key k, whose local state is state, from
// known, its latest read, and records the result as the next read.
func (l *Limiter) restoreMonth(
	ctx context.Context,
	k *Key,
	state *localKey,
	month string,
	known monthRead,
	now time.Time,
) (monthRead, error) {
	read, err := l.redis.restore(ctx, "k:"+k.Name, month, known, now)
	if err != nil {
		return monthRead{}, fmt.Errorf("restore month %s of key %s: %w", month, k.Name, err)
	}
	l.local.setSharedMonth(state, month, read)
	return read, nil
}

// checkDataLoss reads the marker of Redis's data set and, when it changed
// since the last check, restores every month that this instance has read
// of every key. It keeps the old marker when a restoration fails, so that
// the next check tries again.
func (l *Limiter) checkDataLoss(ctx context.Context) error {
	marker, err := l.redis.readMarker(ctx)
	if err != nil {
		return err
	}
	last, _ := l.marker.Load().(string)
	if marker == last {
		return nil
	}
	if last != "" {
		n, err := l.restoreMonths(ctx)
		if err != nil {
			return err
		}
		l.health.log.Warn("redis lost its data, monthly counts restored from this instance's reads",
			"keys", n)
	}
	l.marker.Store(marker)
	return nil
}

// restoreMonths restores every month that this instance has read of every
// configured key, and returns how many keys that covered.
func (l *Limiter) restoreMonths(ctx context.Context) (int, error) {
	now := l.now()
	restored := 0
	for _, k := range l.settings.Load().keys.ordered {
		state := l.local.state(k.Name)
		reads := state.lastReads(now)
		for month, known := range reads {
			if _, err := l.restoreMonth(ctx, k, state, month, known, now); err != nil {
				return restored, err
			}
		}
		if len(reads) > 0 {
			restored++
		}
	}
	return restored, nil
}

// lastReads returns the latest read of each month of k that Redis still
// keeps at now, leaving out the months without a read.
func (k *localKey) lastReads(now time.Time) map[string]monthRead {
	k.mu.Lock()
	defer k.mu.Unlock()
	reads := make(map[string]monthRead)
	for name, m := range k.months {
		if m.gen != 0 && monthKeyTTL(now, monthEndOf(name)) > 0 {
			reads[name] = m.lastRead()
		}
	}
	return reads
}

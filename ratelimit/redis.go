package ratelimit

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/config"
)

var (
	// monthSource defines the functions that read and restore a month's
	// counters. Every script that touches a month starts with it.
	//go:embed month.lua
	monthSource string
	//go:embed admit.lua
	admitSource string
	//go:embed settle.lua
	settleSource string
	//go:embed sync.lua
	syncSource string
	//go:embed restore.lua
	restoreSource string

	admitScript   = redis.NewScript(monthSource + admitSource)
	settleScript  = redis.NewScript(monthSource + settleSource)
	syncScript    = redis.NewScript(monthSource + syncSource)
	restoreScript = redis.NewScript(monthSource + restoreSource)
)

// defaultRedisTimeout applies when redis.timeout is zero, as config does.
const defaultRedisTimeout = 200 * time.Millisecond

// monthKeyGrace keeps a month's counters in Redis this long after the month
// ends, so that operators can still read the last month.
const monthKeyGrace = 35 * 24 * time.Hour

// errBadReply means a script returned a reply of the wrong shape.
var errBadReply = errors.New("unexpected reply from rate limit script")

// errLate means that Redis ran a script after its deadline, so the script
// changed nothing.
var errLate = errors.New("redis ran the call after its deadline, so it changed nothing")

// redisStore runs the limit scripts on Redis.
type redisStore struct {
	client   *redis.Client
	prefix   string
	timeout  time.Duration
	leaseTTL time.Duration

	// clockOffset is Redis's clock minus this host's, in microseconds,
	// as the last measureClock found it. clockKnown is set once it has.
	clockOffset atomic.Int64
	clockKnown  atomic.Bool
}

func newRedisStore(cfg config.Redis, leaseTTL time.Duration) *redisStore {
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = defaultRedisTimeout
	}
	client := redis.NewClient(&redis.Options{
		Addr:                  cfg.Addr,
		Password:              cfg.Password,
		DB:                    cfg.DB,
		DialTimeout:           timeout,
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		PoolTimeout:           timeout,
		ContextTimeoutEnabled: true,
		// A retried admission could run twice after a timeout whose
		// script had run, so a failed call falls back instead.
		MaxRetries: -1,
		// One dial per call: go-redis otherwise dials again several times,
		// 100ms apart, so a call to a stopped Redis outlasts the timeout.
		DialerRetries:   1,
		DisableIdentity: true,
	})
	return &redisStore{client: client, prefix: cfg.KeyPrefix, timeout: timeout, leaseTTL: leaseTTL}
}

// Indexes of the Redis keys of one subject; the scripts use the same order.
const (
	keyRate = iota
	keyWindowTimes
	keyWindowAmounts
	keyWindowSum
	keyLeases
	keyMonth
	numKeys
)

// deadline returns the time, in microseconds of Redis's clock, after which
// a script sent now changes nothing. A call that times out may still be
// waiting in Redis, for example in a Redis that was paused, and would run
// once Redis resumes, after the caller decided locally and counted the
// request or its settlement itself. Half the timeout is left for the
// reply to arrive. Before the first call it measures the offset between
// the clocks, which the health check then measures again.
//
// NOTE: a reply delayed by more than half of redis.timeout still leaves a
// call that ran and was also counted locally.
func (s *redisStore) deadline(ctx context.Context) (int64, error) {
	if !s.clockKnown.Load() {
		if err := s.measureClock(ctx); err != nil {
			return 0, err
		}
	}
	return time.Now().UnixMicro() + s.clockOffset.Load() + s.timeout.Microseconds()/2, nil
}

// measureClock reads Redis's clock with TIME, which also checks that Redis
// responds, and stores its offset from this host's clock.
func (s *redisStore) measureClock(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	sent := time.Now()
	t, err := s.client.Time(ctx).Result()
	if err != nil {
		return fmt.Errorf("read redis time: %w", err)
	}
	received := time.Now()
	middle := sent.Add(received.Sub(sent) / 2)
	s.clockOffset.Store(t.Sub(middle).Microseconds())
	s.clockKnown.Store(true)
	return nil
}

// writeCheckScript writes KEYS[1] for a minute, as a limit script writes
// its counters.
var writeCheckScript = redis.NewScript(`
redis.call('SET', KEYS[1], '1', 'PX', 60000)
return 1
`)

// checkWrite runs writeCheckScript, which fails where Redis responds but
// rejects the limit scripts' writes.
func (s *redisStore) checkWrite(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := writeCheckScript.Run(ctx, s.client, []string{s.prefix + "rl:write-check"}).Err(); err != nil {
		return fmt.Errorf("write to redis: %w", err)
	}
	return nil
}

// isLate reports whether reply is the reply of a script that ran after
// its deadline.
func isLate(reply []int64) bool { return len(reply) == 1 && reply[0] == -1 }

// keyNames returns the Redis keys of subject for month. The braces are a
// Redis Cluster hash tag that puts every key of a subject in one slot, which
// a script touching them all requires.
func (s *redisStore) keyNames(subject, month string) []string {
	base := s.prefix + "rl:{" + subject + "}:"
	names := make([]string, numKeys)
	names[keyRate] = base + "rate"
	names[keyWindowTimes] = base + "tpm:at"
	names[keyWindowAmounts] = base + "tpm:tokens"
	names[keyWindowSum] = base + "tpm:sum"
	names[keyLeases] = base + "leases"
	names[keyMonth] = base + "month:" + month
	return names
}

// admit runs the admission script for a. knownTAT is this instance's GCRA
// time of the subject, which includes the requests it admitted during an
// outage, and Redis uses it when it is later than its own. known is this
// instance's latest read of the month, which restores the month when
// Redis has lost it since.
func (s *redisStore) admit(
	ctx context.Context,
	a *admission,
	knownTAT int64,
	known monthRead,
) (outcome, error) {
	deadline, err := s.deadline(ctx)
	if err != nil {
		return outcome{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	keyed := a.key != nil
	args := []any{
		a.nowMicros, a.rate.interval, a.rate.burst,
		a.tpm, a.tpmNeed, tokenWindowMicros, a.id,
		flag(keyed), a.concurrency, s.leaseTTL.Microseconds(),
		flag(keyed), a.monthTokens, a.monthRequests, a.monthNeed,
		known.counts.tokens, known.counts.requests, monthKeyTTL(a.now, a.monthEnd),
		a.requestNeed, knownTAT, deadline,
		known.gen, known.version, newGeneration(),
	}
	reply, err := admitScript.Run(ctx, s.client, s.keyNames(a.subject, a.month), args...).Int64Slice()
	if err != nil {
		return outcome{}, fmt.Errorf("run admission script: %w", err)
	}
	if isLate(reply) {
		return outcome{}, fmt.Errorf("run admission script: %w", errLate)
	}
	return parseAdmitReply(a, reply)
}

func parseAdmitReply(a *admission, reply []int64) (outcome, error) {
	if len(reply) != 1+4*numSlots+4 {
		return outcome{}, fmt.Errorf("admission script returned %d values: %w", len(reply), errBadReply)
	}
	on := [numSlots]bool{
		a.rate.on(), a.tpm > 0, a.concurrency > 0, a.monthTokens > 0, a.monthRequests > 0,
	}
	out := outcome{allowed: reply[0] == 1}
	for i := range out.slots {
		v := reply[1+4*i : 5+4*i]
		out.slots[i] = status{on: on[i], exceeded: v[0] == 1, remaining: v[1], reset: v[2], retry: v[3]}
	}
	out.month = parseMonthRead(reply[1+4*numSlots:])
	return out, nil
}

// monthCounts is the month's token and request counts of one key.
type monthCounts struct {
	tokens, requests int64
}

// monthRead is a month's counts as one reply from Redis returned them,
// with the generation and version of the month hash (see month.lua). A
// generation of 0 means that Redis had no hash for the month.
type monthRead struct {
	counts       monthCounts
	gen, version int64
}

// newer reports whether r is a later read of the month hash than old:
// one of another generation, or a version at least as high.
func (r monthRead) newer(old monthRead) bool {
	return r.gen != old.gen || r.version >= old.version
}

// parseMonthRead reads tokens, requests, generation and version from the
// start of v.
func parseMonthRead(v []int64) monthRead {
	return monthRead{counts: monthCounts{tokens: v[0], requests: v[1]}, gen: v[2], version: v[3]}
}

// newGeneration returns a random generation for a month hash that a
// script may create. It stays below 2^53, which Lua's numbers hold
// exactly.
func newGeneration() int64 { return rand.Int64N(1<<53-1) + 1 }

// settle runs the settlement script for r with actual tokens used, and
// takes r back out of the month's request count when unserved is set.
// known is this instance's latest read of r's month, which restores the
// month when Redis has lost it since. It returns the month's counts after
// the correction.
func (s *redisStore) settle(
	ctx context.Context,
	r *Reservation,
	actual int64,
	unserved bool,
	now time.Time,
	known monthRead,
) (monthRead, error) {
	deadline, err := s.deadline(ctx)
	if err != nil {
		return monthRead{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	_, monthEnd := monthOf(now)
	refund := int64(0)
	if unserved {
		refund = r.requests
	}
	args := []any{
		now.UnixMicro(), r.id, actual - r.tpmNeed, tokenWindowMicros,
		flag(r.key.limits.TokensPerMinute > 0), flag(true), flag(true), actual - r.monthNeed,
		monthKeyTTL(now, monthEnd), refund, deadline,
		known.counts.tokens, known.counts.requests, known.gen, known.version, newGeneration(),
	}
	names := s.keyNames("k:"+r.key.Name, r.month)
	keys := []string{
		names[keyWindowTimes], names[keyWindowAmounts], names[keyWindowSum],
		names[keyLeases], names[keyMonth],
	}
	reply, err := settleScript.Run(ctx, s.client, keys, args...).Int64Slice()
	if err != nil {
		return monthRead{}, fmt.Errorf("run settlement script: %w", err)
	}
	if isLate(reply) {
		return monthRead{}, fmt.Errorf("run settlement script: %w", errLate)
	}
	if len(reply) != 5 || reply[0] != 1 {
		return monthRead{}, fmt.Errorf("settlement script returned %d values: %w",
			len(reply), errBadReply)
	}
	return parseMonthRead(reply[1:]), nil
}

// renew moves the expiry of the leases, by reservation id, to now plus the
// lease TTL. A lease that an admission has already removed as expired is
// not added again, because another instance may have taken its slot since.
func (s *redisStore) renew(ctx context.Context, leases map[string]string, now time.Time) error {
	if len(leases) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	expiry := float64(now.Add(s.leaseTTL).UnixMicro())
	keys := make(map[string]bool)
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for id, key := range leases {
			p.ZAddXX(ctx, key, redis.Z{Score: expiry, Member: id})
			keys[key] = true
		}
		for key := range keys {
			p.PExpire(ctx, key, 2*s.leaseTTL)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("renew %d leases: %w", len(leases), err)
	}
	return nil
}

// leaseKey returns the Redis key of the leases of key.
func (s *redisStore) leaseKey(key *Key) string {
	return s.prefix + "rl:{k:" + key.Name + "}:leases"
}

// usageCounts is the shared usage of one key: the month's counts, unless
// Redis has none, and the live leases.
type usageCounts struct {
	month    monthRead
	hasMonth bool
	inflight int64
}

// usage reads the month's counts and the live leases of each key.
func (s *redisStore) usage(ctx context.Context, keys []*Key, now time.Time) ([]usageCounts, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	month, _ := monthOf(now)
	live := fmt.Sprintf("(%d", now.UnixMicro())
	months := make([]*redis.SliceCmd, len(keys))
	leases := make([]*redis.IntCmd, len(keys))
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			names := s.keyNames("k:"+k.Name, month)
			months[i] = p.HMGet(ctx, names[keyMonth], "t", "r", "g", "v")
			leases[i] = p.ZCount(ctx, names[keyLeases], live, "+inf")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read usage of %d keys: %w", len(keys), err)
	}
	counts := make([]usageCounts, len(keys))
	for i := range keys {
		v := months[i].Val()
		counts[i] = usageCounts{
			month: monthRead{
				counts:  monthCounts{tokens: parseCount(v[0]), requests: parseCount(v[1])},
				gen:     parseCount(v[2]),
				version: parseCount(v[3]),
			},
			hasMonth: v[0] != nil || v[1] != nil,
			inflight: leases[i].Val(),
		}
	}
	return counts, nil
}

// parseCount reads a counter from an HMGET reply, where a missing field is
// nil and counts as zero.
func parseCount(v any) int64 {
	s, _ := v.(string)
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func (s *redisStore) close() error { return s.client.Close() }

func flag(b bool) int {
	if b {
		return 1
	}
	return 0
}

// monthKeyTTL is how long the counters of the month ending at monthEnd stay
// in Redis, in whole seconds.
func monthKeyTTL(now, monthEnd time.Time) int64 {
	return int64((monthEnd.Sub(now) + monthKeyGrace) / time.Second)
}

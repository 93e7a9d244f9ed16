package ratelimit

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testredis"
)

// admitN sends n requests of key to l, settles the admitted ones at once,
// and returns how many were admitted.
func admitN(l *Limiter, key string, n int) int {
	admitted := 0
	for range n {
		if d, r := admitKey(l, key, 10); d.Allowed {
			admitted++
			r.Settle(1, 1)
		}
	}
	return admitted
}

// monthField reads one counter of the month hash of key from srv, 0 when
// it is missing.
func monthField(t *testing.T, srv *testredis.Server, prefix, key, month, field string) int64 {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	v, err := rdb.HGet(context.Background(), prefix+"rl:{k:"+key+"}:month:"+month, field).Int64()
	if err != nil && err != redis.Nil {
		t.Fatalf("HGET %s of %s month %s: %v", field, key, month, err)
	}
	return v
}

// TestOutageMonthlyRequestsReconciled counts requests on instances that
// cannot reach Redis, then restarts Redis with or without its data. Redis
// must end up with every request served, and the instances must go on
// from that total.
func TestOutageMonthlyRequestsReconciled(t *testing.T) {
	for _, tc := range []struct {
		name      string
		instances int
		quota     int64
		save      bool
		// served is the number of requests admitted in all: one through
		// Redis on each instance, then during the outage each instance
		// up to the quota from the count it read last.
		served int
	}{
		{name: "one instance, data kept", instances: 1, quota: 4, save: true, served: 1 + 3},
		{name: "two instances, data kept", instances: 2, quota: 5, save: true, served: 2 + 3 + 4},
		{name: "two instances, data lost", instances: 2, quota: 5, save: false, served: 2 + 3 + 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := testredis.Start(t)
			key := keyWith("k", func(k *config.Key) { k.MonthlyRequests = tc.quota })
			c := newCluster(t, srv, tc.instances, key)

			// In reverse order, so that the first instance reads the
			// latest count, from which it restores a month that Redis
			// lost.
			for i := len(c.instances) - 1; i >= 0; i-- {
				if n := admitN(c.instances[i], "k", 1); n != 1 {
					t.Fatalf("instance %d: first request through Redis not admitted", i)
				}
			}
			if tc.save {
				srv.Save(t)
			}
			srv.Stop()
			served := len(c.instances)
			for _, l := range c.instances {
				served += admitN(l, "k", 5)
			}
			if served != tc.served {
				t.Fatalf("after the outage: %d served in all, want %d", served, tc.served)
			}

			srv.Restart(t)
			c.clock.Advance(redisRetryInterval)
			for i, l := range c.instances {
				if n := admitN(l, "k", 5); n != 0 {
					t.Errorf("instance %d after the restart: %d of 5 admitted, want none", i, n)
					served += n
				}
			}
			for i, l := range c.instances {
				u := l.Usage(context.Background())[0]
				if !u.Shared || u.MonthlyRequests != int64(served) {
					t.Errorf("instance %d: usage %d requests (shared %v), want the %d served",
						i, u.MonthlyRequests, u.Shared, served)
				}
			}
		})
	}
}

// TestOutageMonthlyTokensReconciled settles, during an outage, a request
// that Redis admitted and one admitted locally. Redis must get both
// corrections and the local reservation.
func TestOutageMonthlyTokensReconciled(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MonthlyTokens = 1000 })
	c := newCluster(t, srv, 1, key)
	l := c.instances[0]

	shared := mustAdmit(t, l, "k", 300) // 300 reserved in Redis
	srv.Save(t)
	srv.Stop()
	shared.Settle(50, 50) // 100 used: 200 back
	local := mustAdmit(t, l, "k", 400)
	local.Settle(300, 300) // 600 used: 200 more
	const used = 100 + 600

	srv.Restart(t)
	c.clock.Advance(redisRetryInterval)
	if d := mustReject(t, l, "k", 400); d.Limit != LimitMonthlyTokens {
		t.Errorf("400 more tokens rejected by %s, want monthly_tokens", d.Limit)
	}
	u := l.Usage(context.Background())[0]
	if !u.Shared || u.MonthlyTokens != used || u.MonthlyRequests != 2 {
		t.Errorf("usage %d tokens, %d requests (shared %v), want %d tokens, 2 requests",
			u.MonthlyTokens, u.MonthlyRequests, u.Shared, used)
	}
}

// TestOutageTokenWindowReconciled reserves tokens on two instances during
// an outage. Within the same minute, Redis must count them.
func TestOutageTokenWindowReconciled(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.TokensPerMinute = 1000 })
	c := newCluster(t, srv, 2, key)
	a, b := c.instances[0], c.instances[1]

	srv.Stop()
	mustAdmit(t, a, "k", 600)
	mustAdmit(t, b, "k", 300)
	srv.Restart(t)
	c.clock.Advance(redisRetryInterval)

	mustAdmit(t, a, "k", 100) // 1000 with b's 300
	if d := mustReject(t, b, "k", 1); d.Limit != LimitTokens {
		t.Errorf("rejected by %s, want tokens", d.Limit)
	}
	c.clock.Advance(tokenWindowLength)
	mustAdmit(t, b, "k", 1000)
}

// TestOutageLeasesReconciled checks that requests admitted during an
// outage take slots in Redis while they last, and that a slot freed during
// the outage is free in Redis too.
func TestOutageLeasesReconciled(t *testing.T) {
	t.Run("held", func(t *testing.T) {
		srv := testredis.Start(t)
		key := keyWith("k", func(k *config.Key) { k.MaxConcurrent = 2 })
		c := newCluster(t, srv, 2, key)
		a, b := c.instances[0], c.instances[1]

		srv.Stop()
		first := mustAdmit(t, a, "k", 10)
		mustAdmit(t, a, "k", 10)
		srv.Restart(t)
		c.clock.Advance(redisRetryInterval)

		if d := mustReject(t, a, "k", 10); d.Limit != LimitConcurrency {
			t.Errorf("third request on the first instance rejected by %s, want concurrency", d.Limit)
		}
		if d := mustReject(t, b, "k", 10); d.Limit != LimitConcurrency {
			t.Errorf("request on the other instance rejected by %s, want concurrency", d.Limit)
		}
		first.Settle(1, 1) // frees its slot in Redis
		mustAdmit(t, b, "k", 10)
		mustReject(t, b, "k", 10)
		if u := b.Usage(context.Background())[0]; u.InFlight != 2 {
			t.Errorf("%d in flight in Redis, want 2", u.InFlight)
		}
	})
	t.Run("released", func(t *testing.T) {
		srv := testredis.Start(t)
		key := keyWith("k", func(k *config.Key) { k.MaxConcurrent = 1 })
		c := newCluster(t, srv, 2, key)
		a, b := c.instances[0], c.instances[1]

		r := mustAdmit(t, a, "k", 10)
		srv.Save(t)
		srv.Stop()
		r.Settle(1, 1) // Redis keeps the lease
		srv.Restart(t)
		c.clock.Advance(redisRetryInterval)

		a.Usage(context.Background()) // reconciles a
		mustAdmit(t, b, "k", 10)
	})
}

// TestOutageRateReconciled uses part of the burst on each of two instances
// during an outage. Afterwards Redis must count both parts, not only the
// larger one.
func TestOutageRateReconciled(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.RequestsPerSec, k.Burst = 1, 10 })
	c := newCluster(t, srv, 2, key)
	a, b := c.instances[0], c.instances[1]

	mustAdmit(t, a, "k", 0).Release()
	srv.Stop()
	if n := admitN(a, "k", 5) + admitN(b, "k", 5); n != 10 {
		t.Fatalf("during the outage: %d of 10 admitted, want all", n)
	}
	srv.Restart(t)
	c.clock.Advance(redisRetryInterval) // one request refills

	// 11 of the burst of 10 are used, and one refilled: a gets that one.
	mustAdmit(t, a, "k", 0).Release()
	if d := mustReject(t, b, "k", 0); d.Limit != LimitRequests {
		t.Errorf("rejected by %s, want requests", d.Limit)
	}
}

// TestOutageAcrossMonthEnd counts requests during an outage that spans
// the start of a month. Each month's counts must reach its own counters.
func TestOutageAcrossMonthEnd(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MonthlyRequests = 100 })
	c := newCluster(t, srv, 1, key)
	c.clock.Set(time.Date(2026, 3, 31, 23, 59, 50, 0, time.UTC))
	l := c.instances[0]

	admitN(l, "k", 1)
	srv.Save(t)
	srv.Stop()
	admitN(l, "k", 2)
	c.clock.Advance(20 * time.Second) // April
	admitN(l, "k", 3)
	srv.Restart(t)
	c.clock.Advance(redisRetryInterval)
	admitN(l, "k", 1)

	prefix := t.Name() + ":"
	if n := monthField(t, srv, prefix, "k", "2026-03", "r"); n != 3 {
		t.Errorf("March in Redis: %d requests, want 3", n)
	}
	if n := monthField(t, srv, prefix, "k", "2026-04", "r"); n != 4 {
		t.Errorf("April in Redis: %d requests, want 4", n)
	}
	if u := l.Usage(context.Background())[0]; u.Month != "2026-04" || u.MonthlyRequests != 4 {
		t.Errorf("usage %s: %d requests, want 2026-04: 4", u.Month, u.MonthlyRequests)
	}
}

// TestOutageFlappingCountsOnce loses Redis twice. The counts of each
// outage must reach Redis once.
func TestOutageFlappingCountsOnce(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MonthlyRequests = 100 })
	c := newCluster(t, srv, 1, key)
	l := c.instances[0]

	admitN(l, "k", 1)
	srv.Save(t)
	srv.Stop()
	admitN(l, "k", 3)
	srv.Restart(t)
	c.clock.Advance(redisRetryInterval)
	admitN(l, "k", 1) // reconciles, then counts in Redis
	srv.Save(t)
	srv.Stop()
	admitN(l, "k", 2)
	srv.Restart(t)
	c.clock.Advance(redisRetryInterval)

	if u := l.Usage(context.Background())[0]; !u.Shared || u.MonthlyRequests != 7 {
		t.Errorf("usage %d requests (shared %v), want 7", u.MonthlyRequests, u.Shared)
	}
	if n := fallbacks(t, l); n != 5 {
		t.Errorf("%v fallbacks, want one per request decided locally (5)", n)
	}
}

// TestPausedRedisCountsOnce pauses Redis, as SIGSTOP does. The admission
// that timed out waits in Redis and runs when it resumes, after the
// instance counted the request itself: Redis must not count it twice.
func TestPausedRedisCountsOnce(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MonthlyRequests = 100 })
	clock := newFakeClock(testStart)
	l := newTestLimiter(t, Options{
		Auth: config.Auth{Keys: []config.Key{key}},
		Redis: config.Redis{
			Addr:      srv.Addr,
			Timeout:   300 * time.Millisecond,
			KeyPrefix: t.Name() + ":",
		},
		Now: clock.Now,
	})

	admitN(l, "k", 1)
	srv.Pause(t)
	admitN(l, "k", 3) // the first waits for the timeout
	srv.Resume(t)
	clock.Advance(redisRetryInterval)

	if u := l.Usage(context.Background())[0]; !u.Shared || u.MonthlyRequests != 4 {
		t.Errorf("usage %d requests (shared %v), want the 4 served", u.MonthlyRequests, u.Shared)
	}
}

// TestReconcileSentTwiceCountsOnce sends the same reconciliation twice, as
// after a reply that timed out. Redis must add it once.
func TestReconcileSentTwiceCountsOnce(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) {
		k.MonthlyRequests, k.TokensPerMinute, k.RequestsPerSec, k.Burst = 100, 1000, 1, 10
	})
	c := newCluster(t, srv, 2, key)
	l, other := c.instances[0], c.instances[1]

	srv.Stop()
	mustAdmit(t, l, "k", 300)
	mustAdmit(t, l, "k", 300)
	srv.Restart(t)
	c.clock.Advance(redisRetryInterval)

	k := keyNamed(l, "k")
	state := l.local.state("k")
	b := l.local.prepareSync(state, k.rate, c.clock.Now(), l.leaseTTL)
	if b == nil {
		t.Fatal("nothing to reconcile after local admissions")
	}
	b.payload.Instance = l.instanceID
	for i := range 2 {
		if _, err := l.redis.sync(context.Background(), "k:k", b); err != nil {
			t.Fatalf("reconciliation %d: %v", i+1, err)
		}
	}
	if n := monthField(t, srv, t.Name()+":", "k", "2026-03", "r"); n != 2 {
		t.Errorf("month in Redis: %d requests, want 2", n)
	}
	// The window holds 600 tokens. Of the burst of 10, 2 are used and 1
	// has refilled, which leaves 9.
	if d := mustReject(t, other, "k", 401); d.Limit != LimitTokens {
		t.Errorf("401 tokens rejected by %s, want tokens", d.Limit)
	}
	if d, r := admitKey(other, "k", 400); !d.Allowed || d.Limit != LimitTokens {
		t.Errorf("400 tokens: allowed %v, limit %s; want admitted with tokens the tightest",
			d.Allowed, d.Limit)
	} else {
		r.Release()
	}
	for range 8 {
		mustAdmit(t, other, "k", 0).Release()
	}
	mustReject(t, other, "k", 0)
}

// TestReconcileRacesRequests admits and settles requests from several
// goroutines while Redis comes back and reconciliations run, in the
// health check and before admissions. Every request admitted must be
// counted once.
func TestReconcileRacesRequests(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) {
		k.MonthlyRequests, k.TokensPerMinute, k.MaxConcurrent = 100_000, 10_000_000, 100
	})
	c := newCluster(t, srv, 1, key)
	l := c.instances[0]

	srv.Stop()
	var (
		wg       sync.WaitGroup
		admitted atomic.Int64
		stop     atomic.Bool
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				admitted.Add(int64(admitN(l, "k", 1)))
			}
		}()
	}
	atLeast := func(n int64) func() bool {
		return func() bool { return admitted.Load() >= n }
	}
	waitUntil(t, "100 requests decided locally", atLeast(100))
	srv.Restart(t)
	c.clock.Advance(redisRetryInterval)
	l.checkRedis(context.Background())
	now := admitted.Load()
	waitUntil(t, "100 requests decided in Redis", atLeast(now+100))
	stop.Store(true)
	wg.Wait()

	u := l.Usage(context.Background())[0]
	if !u.Shared || u.MonthlyRequests != admitted.Load() {
		t.Errorf("usage %d requests (shared %v), want the %d admitted",
			u.MonthlyRequests, u.Shared, admitted.Load())
	}
	if u.MonthlyTokens != 2*admitted.Load() || u.InFlight != 0 {
		t.Errorf("usage %d tokens, %d in flight; want %d tokens, none in flight",
			u.MonthlyTokens, u.InFlight, 2*admitted.Load())
	}
}

// waitUntil polls cond until it returns true, and fails the test with msg
// when that takes longer than 10 seconds.
func waitUntil(t *testing.T, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRedisCheckWithoutTraffic stops and restarts Redis while no request
// arrives. The periodic check must report both changes, and reconcile the
// counts of the outage as soon as Redis responds.
func TestRedisCheckWithoutTraffic(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MonthlyRequests = 100 })
	logs := &syncBuffer{}
	l := newTestLimiter(t, Options{
		Auth: config.Auth{Keys: []config.Key{key}},
		Redis: config.Redis{
			Addr:          srv.Addr,
			Timeout:       time.Second,
			KeyPrefix:     t.Name() + ":",
			CheckInterval: 10 * time.Millisecond,
		},
		Now:    newFakeClock(testStart).Now,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	up := func() float64 { return gaugeValue(t, l.metrics.RedisUp) }

	waitUntil(t, "redis_up 1 at start", func() bool { return up() == 1 })
	srv.Stop()
	// The gauge changes just before the log line.
	waitUntil(t, "redis_up 0 and a warning with Redis stopped", func() bool {
		return up() == 0 && logs.count("redis unreachable") > 0
	})
	if n := logs.count("redis unreachable"); n != 1 {
		t.Errorf("%d outage warnings, want 1", n)
	}
	// Decided locally: the check found Redis down.
	admitN(l, "k", 2)

	srv.Restart(t)
	waitUntil(t, "redis_up 1 and a recovery message after the restart", func() bool {
		return up() == 1 && logs.count("redis reachable again") > 0
	})
	waitUntil(t, "the outage's requests in Redis and the reconciliation logged", func() bool {
		return monthField(t, srv, t.Name()+":", "k", "2026-03", "r") == 2 &&
			logs.count("counts made during the redis outage added to redis") > 0
	})
	if n := logs.count("redis reachable again"); n != 1 {
		t.Errorf("%d recovery messages, want 1", n)
	}
}

// TestRedisCheckRejectedWrites fills Redis's memory limit under the
// noeviction policy, so that Redis replies to TIME but rejects the limit
// scripts. The periodic check must keep the limiter in its local
// fallback, with one warning and no recovery message, until Redis takes
// writes again.
func TestRedisCheckRejectedWrites(t *testing.T) {
	srv := testredis.Start(t)
	logs := &syncBuffer{}
	l := newTestLimiter(t, Options{
		Auth: config.Auth{Keys: []config.Key{keyWith("k", func(k *config.Key) { k.MonthlyRequests = 100 })}},
		Redis: config.Redis{
			Addr:          srv.Addr,
			Timeout:       time.Second,
			KeyPrefix:     t.Name() + ":",
			CheckInterval: 10 * time.Millisecond,
		},
		Now:    newFakeClock(testStart).Now,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = admin.Close() })
	ctx := context.Background()
	up := func() float64 { return gaugeValue(t, l.metrics.RedisUp) }
	waitUntil(t, "redis_up 1 at start", func() bool { return up() == 1 })

	if err := admin.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatalf("CONFIG SET maxmemory-policy: %v", err)
	}
	if err := admin.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatalf("CONFIG SET maxmemory: %v", err)
	}
	waitUntil(t, "redis_up 0 with writes rejected", func() bool {
		return up() == 0 && logs.count("redis unreachable") > 0
	})
	time.Sleep(200 * time.Millisecond) // about 20 more checks
	if n := logs.count("redis unreachable"); n != 1 {
		t.Errorf("%d outage warnings while writes were rejected, want 1", n)
	}
	if n := logs.count("redis reachable again"); n != 0 {
		t.Errorf("%d recovery messages while writes were rejected, want 0", n)
	}
	if got := up(); got != 0 {
		t.Errorf("redis_up = %v while writes were rejected, want 0", got)
	}

	if err := admin.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatalf("CONFIG SET maxmemory 0: %v", err)
	}
	waitUntil(t, "redis_up 1 and a recovery message once writes work", func() bool {
		return up() == 1 && logs.count("redis reachable again") == 1
	})
}

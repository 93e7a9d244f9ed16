package ratelimit

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testredis"
)

// cluster is several Limiters sharing one Redis and one fake clock, as
// several proxy instances behind a load balancer do.
type cluster struct {
	clock     *fakeClock
	instances []*Limiter
	logs      []*syncBuffer
}

// newCluster starts n instances on srv with keys.
func newCluster(t *testing.T, srv *testredis.Server, n int, keys ...config.Key) *cluster {
	t.Helper()
	c := &cluster{clock: newFakeClock(testStart)}
	for range n {
		logs := &syncBuffer{}
		c.logs = append(c.logs, logs)
		c.instances = append(c.instances, newTestLimiter(t, Options{
			Auth: config.Auth{Keys: keys},
			Redis: config.Redis{
				Addr:      srv.Addr,
				Timeout:   time.Second,
				KeyPrefix: t.Name() + ":",
			},
			Now:    c.clock.Now,
			Logger: slog.New(slog.NewTextHandler(logs, nil)),
		}))
	}
	return c
}

// admitAll has every instance admit one request of key and settles the
// admitted ones at once. It returns how many were admitted.
func (c *cluster) admitAll(key string) int {
	admitted := 0
	for _, l := range c.instances {
		if d, r := admitKey(l, key, 0); d.Allowed {
			admitted++
			r.Release()
		}
	}
	return admitted
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

func TestSharedRateThreeInstances(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.RequestsPerSec, k.Burst = 20, 2 })
	c := newCluster(t, srv, 3, key)

	// Each instance tries 100 requests a second, 300 together, at offsets
	// that interleave them.
	const seconds = 5
	perSecond := make([]int, seconds)
	for step := range seconds * 100 {
		for i, l := range c.instances {
			c.clock.Set(testStart.Add(time.Duration(step)*10*time.Millisecond +
				time.Duration(i)*3*time.Millisecond))
			if d, r := admitKey(l, "k", 0); d.Allowed {
				perSecond[step/100]++
				r.Release()
			}
		}
	}
	total := 0
	for s, n := range perSecond {
		total += n
		if n < 18 || n > 22 {
			t.Errorf("second %d: %d admitted, want 20 ± 10%%", s, n)
		}
	}
	if total < 90 || total > 110 {
		t.Errorf("%d admitted in %d seconds, want %d ± 10%%", total, seconds, 20*seconds)
	}
	for i, l := range c.instances {
		if n := fallbacks(t, l); n != 0 {
			t.Errorf("instance %d fell back %v times, want 0", i, n)
		}
	}
}

func TestSharedTokensAcrossInstances(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.TokensPerMinute = 1000 })
	c := newCluster(t, srv, 3, key)
	for i, l := range c.instances {
		c.clock.Set(testStart.Add(time.Duration(i) * 10 * time.Second))
		mustAdmit(t, l, "k", 300)
	}
	c.clock.Set(testStart.Add(30 * time.Second))
	d := mustReject(t, c.instances[0], "k", 300)
	if d.Limit != LimitTokens || d.RetryAfter != 30*time.Second {
		t.Errorf("rejected by %s, retry after %s; want tokens, 30s", d.Limit, d.RetryAfter)
	}
	c.clock.Set(testStart.Add(60 * time.Second))
	mustAdmit(t, c.instances[1], "k", 300)
}

func TestSharedConcurrencyAcrossInstances(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MaxConcurrent = 2 })
	c := newCluster(t, srv, 3, key)
	a, b, third := c.instances[0], c.instances[1], c.instances[2]

	first := mustAdmit(t, a, "k", 10)
	mustAdmit(t, b, "k", 10)
	if d := mustReject(t, third, "k", 10); d.Limit != LimitConcurrency {
		t.Errorf("rejected by %s, want concurrency", d.Limit)
	}
	first.Settle(5, 5)
	mustAdmit(t, third, "k", 10)
	mustReject(t, a, "k", 10)
}

func TestSharedLeaseOfDeadInstanceExpires(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MaxConcurrent = 2 })
	c := newCluster(t, srv, 2, key)
	dead, alive := c.instances[0], c.instances[1]

	mustAdmit(t, dead, "k", 10)
	mustAdmit(t, dead, "k", 10)
	if err := dead.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	mustReject(t, alive, "k", 10)
	c.clock.Advance(defaultLeaseTTL - time.Second)
	mustReject(t, alive, "k", 10)
	c.clock.Advance(time.Second)
	mustAdmit(t, alive, "k", 10)
}

func TestSharedLeaseRenewal(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MaxConcurrent = 2 })
	c := newCluster(t, srv, 2, key)
	holder, other := c.instances[0], c.instances[1]

	mustAdmit(t, holder, "k", 10)
	held := mustAdmit(t, holder, "k", 10)
	c.clock.Advance(20 * time.Second)
	holder.renewLeases(context.Background())
	c.clock.Advance(20 * time.Second)
	mustReject(t, other, "k", 10) // renewed at 20s, so held until 50s

	held.Release() // a settled lease is not renewed but freed
	mustAdmit(t, other, "k", 10)
	c.clock.Advance(11 * time.Second)
	mustAdmit(t, other, "k", 10) // the unsettled lease expired at 50s
}

func TestRedisOutageFallsBack(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.RequestsPerSec, k.Burst = 1, 2 })
	c := newCluster(t, srv, 3, key)

	if n := c.admitAll("k") + c.admitAll("k"); n != 2 {
		t.Fatalf("shared: %d of 6 admitted, want the burst of 2", n)
	}
	// A request admitted by Redis and settled during the outage.
	c.clock.Advance(10 * time.Second)
	inflight := mustAdmit(t, c.instances[0], "k", 10)

	srv.Stop()
	inflight.Settle(1, 1)
	c.clock.Advance(10 * time.Second)
	if n := c.admitAll("k") + c.admitAll("k") + c.admitAll("k"); n != 6 {
		t.Errorf("outage: %d of 9 admitted, want 2 per instance", n)
	}
	for i, l := range c.instances {
		if fallbacks(t, l) == 0 {
			t.Errorf("instance %d: no fallback counted", i)
		}
		if up := gaugeValue(t, l.metrics.RedisUp); up != 0 {
			t.Errorf("instance %d: redis up = %v during the outage, want 0", i, up)
		}
		if n := c.logs[i].count("level=WARN"); n != 1 {
			t.Errorf("instance %d: %d warnings, want 1", i, n)
		}
	}

	srv.Restart(t)
	c.clock.Advance(10 * time.Second)
	if n := c.admitAll("k") + c.admitAll("k"); n != 2 {
		t.Errorf("after restart: %d of 6 admitted, want the shared burst of 2", n)
	}
	for i, l := range c.instances {
		if up := gaugeValue(t, l.metrics.RedisUp); up != 1 {
			t.Errorf("instance %d: redis up = %v after the restart, want 1", i, up)
		}
		if n := c.logs[i].count("redis reachable again"); n != 1 {
			t.Errorf("instance %d: %d recovery messages, want 1", i, n)
		}
	}
}

func TestRedisOutageRetriesOncePerSecond(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.RequestsPerSec, k.Burst = 1000, 1000 })
	c := newCluster(t, srv, 1, key)
	l := c.instances[0]

	srv.Stop()
	mustAdmit(t, l, "k", 0).Release() // fails on Redis, decided locally
	srv.Restart(t)
	for range 5 {
		mustAdmit(t, l, "k", 0).Release()
	}
	if n := fallbacks(t, l); n != 6 {
		t.Errorf("%v fallbacks within a second of the failure, want 6", n)
	}
	c.clock.Advance(redisRetryInterval)
	mustAdmit(t, l, "k", 0).Release()
	if n := fallbacks(t, l); n != 6 {
		t.Errorf("%v fallbacks after the retry interval, want still 6", n)
	}
	if !l.Usage(context.Background())[0].Shared {
		t.Error("usage not shared after Redis came back")
	}
}

func TestRedisTimeoutFallsBack(t *testing.T) {
	addr := silentServer(t)
	key := keyWith("k", func(k *config.Key) { k.MaxConcurrent = 1 })
	clock := newFakeClock(testStart)
	l := newTestLimiter(t, Options{
		Auth:  config.Auth{Keys: []config.Key{key}},
		Redis: config.Redis{Addr: addr, Timeout: 50 * time.Millisecond},
		Now:   clock.Now,
	})
	r := mustAdmit(t, l, "k", 10)
	mustReject(t, l, "k", 10) // the local store counts the slot
	r.Settle(1, 1)
	mustAdmit(t, l, "k", 10)
	if fallbacks(t, l) < 3 {
		t.Errorf("%v fallbacks, want one per operation", fallbacks(t, l))
	}
}

// silentServer accepts connections on loopback and never replies, as a
// Redis that hangs does. It returns the address.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for _, conn := range conns {
			conn.Close()
		}
	})
	return ln.Addr().String()
}

func TestSharedMonthlyRestoredAfterDataLoss(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MonthlyRequests = 3 })
	c := newCluster(t, srv, 1, key)
	l := c.instances[0]

	mustAdmit(t, l, "k", 10).Release()
	mustAdmit(t, l, "k", 10).Release()
	srv.Restart(t) // an empty data set: the month's counts are lost
	mustAdmit(t, l, "k", 10).Release()
	if d := mustReject(t, l, "k", 10); d.Limit != LimitMonthlyRequests {
		t.Errorf("rejected by %s, want monthly_requests", d.Limit)
	}
	u := l.Usage(context.Background())[0]
	if !u.Shared || u.MonthlyRequests != 3 {
		t.Errorf("usage = %+v, want 3 shared requests", u)
	}
	if n := fallbacks(t, l); n != 0 {
		t.Errorf("%v fallbacks, want 0", n)
	}
}

func TestAdmitCanceledContext(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MaxConcurrent = 1 })
	c := newCluster(t, srv, 1, key)
	l := c.instances[0]

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d, r := l.Admit(ctx, Request{Key: keyNamed(l, "k")})
	if !d.Allowed {
		t.Fatalf("rejected by %s, want admitted locally", d.Limit)
	}
	r.Release()
	if n := fallbacks(t, l); n != 0 {
		t.Errorf("%v fallbacks for a canceled caller, want 0", n)
	}
	mustAdmit(t, l, "k", 10) // Redis is still used
	if n := c.logs[0].count("level=WARN"); n != 0 {
		t.Errorf("%d warnings, want none", n)
	}
}

func TestSharedRefundSeenByOtherInstances(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MonthlyTokens = 1200 })
	c := newCluster(t, srv, 2, key)
	a, b := c.instances[0], c.instances[1]

	first := mustAdmit(t, a, "k", 500)
	mustAdmit(t, b, "k", 500) // b last saw 1000 tokens
	first.Settle(50, 50)      // 600 now
	mustAdmit(t, b, "k", 500) // rejected if b's stale 1000 were restored
	if u := a.Usage(context.Background())[0]; u.MonthlyTokens != 1100 {
		t.Errorf("month's tokens = %d, want 1100 after the refund", u.MonthlyTokens)
	}
}

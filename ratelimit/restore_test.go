package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testredis"
)

// dataLosses empties Redis in the ways the tests cover: a restart without
// persistence, and FLUSHALL, which no instance detects as an outage.
var dataLosses = []struct {
	name string
	lose func(t *testing.T, srv *testredis.Server)
}{
	{name: "restart", lose: func(t *testing.T, srv *testredis.Server) { srv.Restart(t) }},
	{name: "flushall", lose: flushAll},
}

func flushAll(t *testing.T, srv *testredis.Server) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	if err := rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatalf("FLUSHALL: %v", err)
	}
}

// TestDataLossRestoredByNextRequest counts requests through two instances,
// empties Redis, and sends one request through the instance whose last
// read is the older one. Once the other instance touches the key, Redis
// must hold every request, each once.
func TestDataLossRestoredByNextRequest(t *testing.T) {
	for _, loss := range dataLosses {
		t.Run(loss.name, func(t *testing.T) {
			srv := testredis.Start(t)
			key := keyWith("k", func(k *config.Key) { k.MonthlyRequests = 100 })
			c := newCluster(t, srv, 2, key)
			a, b := c.instances[0], c.instances[1]
			prefix := t.Name() + ":"

			admitN(a, "k", 3) // a last read 3
			admitN(b, "k", 3) // b last read 6
			loss.lose(t, srv)
			admitN(a, "k", 1)
			if n := monthField(t, srv, prefix, "k", "2026-03", "r"); n < 4 {
				t.Errorf("after the request through a: %d requests in Redis, want at least 4", n)
			}

			if u := b.Usage(context.Background())[0]; u.MonthlyRequests != 7 {
				t.Errorf("b's usage: %d requests, want 7", u.MonthlyRequests)
			}
			if n := monthField(t, srv, prefix, "k", "2026-03", "r"); n != 7 {
				t.Errorf("after b's usage read: %d requests in Redis, want 7", n)
			}
			if u := a.Usage(context.Background())[0]; u.MonthlyRequests != 7 {
				t.Errorf("a's usage: %d requests, want 7", u.MonthlyRequests)
			}
			if n := fallbacks(t, a) + fallbacks(t, b); n != 0 {
				t.Errorf("%v fallbacks, want 0", n)
			}
		})
	}
}

// TestDataLossAfterUsageRead has the instance that sends the next request
// read the total through Usage before Redis loses it, as an operator's
// view does. The request alone must then restore the whole total.
func TestDataLossAfterUsageRead(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MonthlyRequests = 100 })
	c := newCluster(t, srv, 2, key)
	a, b := c.instances[0], c.instances[1]

	admitN(a, "k", 3)
	admitN(b, "k", 3)
	if u := a.Usage(context.Background())[0]; u.MonthlyRequests != 6 {
		t.Fatalf("a's usage before the loss: %d requests, want 6", u.MonthlyRequests)
	}
	srv.Restart(t)
	admitN(a, "k", 1)
	if n := monthField(t, srv, t.Name()+":", "k", "2026-03", "r"); n != 7 {
		t.Errorf("%d requests in Redis, want 7", n)
	}
}

// TestDataLossRestoredByCheck empties Redis while no request arrives. The
// periodic checks of both instances must restore the months of every key
// they have read, with the latest tokens after refunds, and the instances
// must then report the same usage.
func TestDataLossRestoredByCheck(t *testing.T) {
	for _, loss := range dataLosses {
		t.Run(loss.name, func(t *testing.T) {
			srv := testredis.Start(t)
			keys := []config.Key{
				keyWith("k", func(k *config.Key) { k.MonthlyRequests, k.MonthlyTokens = 100, 10_000 }),
				keyWith("idle", func(k *config.Key) { k.MonthlyRequests = 100 }),
			}
			clock := newFakeClock(testStart)
			var instances []*Limiter
			for range 2 {
				instances = append(instances, newTestLimiter(t, Options{
					Auth: config.Auth{Keys: keys},
					Redis: config.Redis{
						Addr:          srv.Addr,
						Timeout:       time.Second,
						KeyPrefix:     t.Name() + ":",
						CheckInterval: 10 * time.Millisecond,
					},
					Now: clock.Now,
				}))
			}
			a, b := instances[0], instances[1]
			prefix := t.Name() + ":"

			mustAdmit(t, a, "k", 300).Settle(50, 50) // 100 tokens
			mustAdmit(t, b, "k", 500).Settle(100, 100)
			admitN(b, "k", 2) // 2 tokens each
			admitN(a, "idle", 2)
			admitN(b, "idle", 1)
			const tokens, requests = 100 + 200 + 4, 4

			loss.lose(t, srv)
			waitUntil(t, "both keys restored in Redis", func() bool {
				return monthField(t, srv, prefix, "k", "2026-03", "r") == requests &&
					monthField(t, srv, prefix, "k", "2026-03", "t") == tokens &&
					monthField(t, srv, prefix, "idle", "2026-03", "r") == 3
			})
			for i, l := range instances {
				u := l.Usage(context.Background())
				if u[0].MonthlyRequests != requests || u[0].MonthlyTokens != tokens {
					t.Errorf("instance %d: usage of k %d requests, %d tokens; want %d, %d",
						i, u[0].MonthlyRequests, u[0].MonthlyTokens, requests, tokens)
				}
				if u[1].MonthlyRequests != 3 {
					t.Errorf("instance %d: usage of idle %d requests, want 3", i, u[1].MonthlyRequests)
				}
			}
			if n := monthField(t, srv, prefix, "k", "2026-03", "r"); n != requests {
				t.Errorf("k after the usage reads: %d requests in Redis, want %d", n, requests)
			}
		})
	}
}

// TestDataLossRestoresOnce runs the periodic check of both instances
// three times after Redis lost its data. The later checks must add
// nothing.
func TestDataLossRestoresOnce(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MonthlyRequests = 100 })
	c := newCluster(t, srv, 2, key)
	a, b := c.instances[0], c.instances[1]
	ctx := context.Background()

	for _, l := range c.instances {
		l.checkRedis(ctx) // records the marker
	}
	admitN(a, "k", 2)
	admitN(b, "k", 3)
	flushAll(t, srv)
	for range 3 {
		b.checkRedis(ctx)
		a.checkRedis(ctx)
	}
	if n := monthField(t, srv, t.Name()+":", "k", "2026-03", "r"); n != 5 {
		t.Errorf("%d requests in Redis, want 5", n)
	}
	admitN(a, "k", 1)
	if n := monthField(t, srv, t.Name()+":", "k", "2026-03", "r"); n != 6 {
		t.Errorf("after one more request: %d requests in Redis, want 6", n)
	}
}

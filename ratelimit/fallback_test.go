package ratelimit

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testredis"
)

// newAddrCluster starts n instances on srv that limit clients without a
// key by address, as newCluster does for keys.
func newAddrCluster(t *testing.T, srv *testredis.Server, n int, rl config.RateLimit) *cluster {
	t.Helper()
	c := &cluster{clock: newFakeClock(testStart)}
	for range n {
		logs := &syncBuffer{}
		c.logs = append(c.logs, logs)
		c.instances = append(c.instances, newTestLimiter(t, Options{
			RateLimit: rl,
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

// TestFallbackKeepsSharedRate uses a burst through Redis, then loses
// Redis and later its data, and checks that no instance gets a fresh burst.
func TestFallbackKeepsSharedRate(t *testing.T) {
	const burst = 10
	for _, tc := range []struct {
		name  string
		start func(t *testing.T, srv *testredis.Server) *cluster
		admit func(l *Limiter) (Decision, *Reservation)
	}{
		{
			name: "key",
			start: func(t *testing.T, srv *testredis.Server) *cluster {
				key := keyWith("k", func(k *config.Key) { k.RequestsPerSec, k.Burst = 1, burst })
				return newCluster(t, srv, 3, key)
			},
			admit: func(l *Limiter) (Decision, *Reservation) { return admitKey(l, "k", 0) },
		},
		{
			name: "address",
			start: func(t *testing.T, srv *testredis.Server) *cluster {
				return newAddrCluster(t, srv, 3, config.RateLimit{PerAddress: 1, Burst: burst})
			},
			admit: func(l *Limiter) (Decision, *Reservation) {
				return l.Admit(context.Background(), Request{Addr: "192.0.2.7"})
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := testredis.Start(t)
			c := tc.start(t, srv)
			// round sends n requests to each instance and returns how many
			// were admitted.
			round := func(n int) int {
				admitted := 0
				for range n {
					for _, l := range c.instances {
						if d, r := tc.admit(l); d.Allowed {
							admitted++
							r.Release()
						}
					}
				}
				return admitted
			}

			if n := round(5); n != burst {
				t.Fatalf("through Redis: %d of 15 admitted, want the burst of %d", n, burst)
			}
			srv.Stop()
			if n := round(14); n != 0 {
				t.Errorf("outage at once: %d of 42 admitted, want 0 after the shared burst", n)
			}
			c.clock.Advance(time.Second)
			if n := round(14); n > 3 {
				t.Errorf("outage after 1s: %d of 42 admitted, want at most 1 per instance", n)
			}
			for i, l := range c.instances {
				if fallbacks(t, l) == 0 {
					t.Errorf("instance %d: no fallback counted", i)
				}
			}

			// A Redis without data continues from the instances' counts.
			srv.Restart(t)
			c.clock.Advance(redisRetryInterval)
			if n := round(14); n > 3 {
				t.Errorf("after restart: %d of 42 admitted, want at most 1 per instance", n)
			}
			for i := range c.instances {
				if n := c.logs[i].count("redis reachable again"); n != 1 {
					t.Errorf("instance %d: %d recovery messages, want 1", i, n)
				}
			}
		})
	}
}

// TestFallbackKeepsSharedTokens fills the token window through Redis from
// several instances, then loses Redis.
func TestFallbackKeepsSharedTokens(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.TokensPerMinute = 1000 })
	c := newCluster(t, srv, 3, key)
	a, b, third := c.instances[0], c.instances[1], c.instances[2]

	settled := mustAdmit(t, a, "k", 600)
	mustAdmit(t, b, "k", 300)
	mustAdmit(t, third, "k", 50) // third saw 950 tokens in the window
	settled.Settle(100, 100)     // a's own share drops to 200

	srv.Stop()
	if d := mustReject(t, third, "k", 100); d.Limit != LimitTokens {
		t.Errorf("third instance rejected by %s, want tokens", d.Limit)
	}
	mustAdmit(t, third, "k", 50)
	mustAdmit(t, a, "k", 800) // a saw 600 and its refund of 400
	if d := mustReject(t, a, "k", 1); d.Limit != LimitTokens {
		t.Errorf("first instance rejected by %s, want tokens", d.Limit)
	}
	c.clock.Advance(tokenWindowLength)
	mustAdmit(t, third, "k", 1000)
}

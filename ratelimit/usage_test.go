package ratelimit

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testredis"
	"github.com/llmproxy/llmproxy/metrics"
)

func TestUsage(t *testing.T) {
	k := keyWith("k", func(k *config.Key) { k.MonthlyTokens, k.MaxConcurrent = 1000, 5 })
	free := hashedKey("free", "x")
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			clock := newFakeClock(testStart)
			l := b.newLimiter(t, Options{Auth: config.Auth{Keys: []config.Key{k, free}}, Now: clock.Now})
			first := mustAdmit(t, l, "k", 300)
			mustAdmit(t, l, "k", 200)
			first.Settle(50, 50)

			u := l.Usage(context.Background())
			if len(u) != 2 || u[0].Name != "k" || u[1].Name != "free" {
				t.Fatalf("usage = %+v, want k and free in configuration order", u)
			}
			want := KeyUsage{
				Name: "k", Priority: ClassStandard, Month: "2026-03",
				MonthlyTokens: 100 + 200, MonthlyRequests: 2, InFlight: 1,
				Limits: KeyLimits{MonthlyTokens: 1000, MaxConcurrent: 5}, Shared: b.redis != nil,
			}
			if u[0] != want {
				t.Errorf("usage of k = %+v, want %+v", u[0], want)
			}
			if u[1].MonthlyRequests != 0 || u[1].InFlight != 0 {
				t.Errorf("usage of free = %+v, want nothing used", u[1])
			}
		})
	}
}

func TestUsageAcrossInstances(t *testing.T) {
	srv := testredis.Start(t)
	c := newCluster(t, srv, 2, hashedKey("k", "x"))
	mustAdmit(t, c.instances[0], "k", 10)
	mustAdmit(t, c.instances[0], "k", 10).Settle(1, 2)

	u := c.instances[1].Usage(context.Background())[0]
	if !u.Shared || u.MonthlyRequests != 2 || u.MonthlyTokens != 13 || u.InFlight != 1 {
		t.Errorf("usage read by the other instance = %+v, want 2 requests, 13 tokens, 1 in flight", u)
	}
}

func TestMetricsCounted(t *testing.T) {
	m := metrics.New()
	k := keyWith("k", func(k *config.Key) { k.RequestsPerSec, k.Burst = 1, 1 })
	l := newTestLimiter(t, Options{
		Auth:      config.Auth{Keys: []config.Key{k}},
		RateLimit: config.RateLimit{PerAddress: 1, Burst: 1},
		Metrics:   m,
		Now:       newFakeClock(testStart).Now,
	})
	ctx := context.Background()
	_, r := l.Admit(ctx, Request{Key: keyNamed(l, "k"), Model: "llama3:8b"})
	r.Settle(7, 11)
	mustReject(t, l, "k", 0)
	_, anon := l.Admit(ctx, Request{Addr: "198.51.100.1"})
	anon.Settle(3, 0)
	l.Admit(ctx, Request{Addr: "198.51.100.1"})
	l.Admit(ctx, Request{Addr: "198.51.100.2"})
	l.Admit(ctx, Request{Addr: "198.51.100.2"})

	counters := []struct {
		name string
		got  float64
		want float64
	}{
		{"rejected k", counterValue(t, m.RateLimited.WithLabelValues("k", "requests")), 1},
		{"rejected anonymous",
			counterValue(t, m.RateLimited.WithLabelValues(AnonymousLabel, "requests")), 2},
		{"prompt tokens k",
			counterValue(t, m.Tokens.WithLabelValues("k", "llama3:8b", "prompt")), 7},
		{"completion tokens k",
			counterValue(t, m.Tokens.WithLabelValues("k", "llama3:8b", "completion")), 11},
		{"prompt tokens anonymous",
			counterValue(t, m.Tokens.WithLabelValues(AnonymousLabel, metrics.OtherModel, "prompt")), 3},
	}
	for _, c := range counters {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestConcurrentAdmitHoldsLimit(t *testing.T) {
	const limit = 3
	k := keyWith("k", func(k *config.Key) { k.MaxConcurrent = limit })
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			l := b.newLimiter(t, Options{Auth: config.Auth{Keys: []config.Key{k}}})
			var (
				wg       sync.WaitGroup
				live     atomic.Int64 // between admission and settlement
				over     atomic.Int64 // times live exceeded the limit
				admitted atomic.Int64
			)
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 50 {
						d, r := admitKey(l, "k", 10)
						if !d.Allowed {
							continue
						}
						admitted.Add(1)
						if live.Add(1) > limit {
							over.Add(1)
						}
						live.Add(-1)
						r.Settle(1, 1)
					}
				}()
			}
			wg.Wait()
			if n := over.Load(); n > 0 {
				t.Errorf("more than %d requests in flight %d times", limit, n)
			}
			if admitted.Load() == 0 {
				t.Error("no request admitted")
			}
			if u := l.Usage(context.Background())[0]; u.InFlight != 0 {
				t.Errorf("%d in flight after every settle, want 0", u.InFlight)
			}
		})
	}
}

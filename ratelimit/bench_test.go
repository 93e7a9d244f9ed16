package ratelimit

import (
	"context"
	"testing"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testredis"
	"github.com/llmproxy/llmproxy/metrics"
)

// benchKey has every limit set, high enough that no request is rejected.
var benchKey = keyWith("bench", func(k *config.Key) {
	k.RequestsPerSec, k.Burst = 1e6, 1e6
	k.TokensPerMinute = 1e15
	k.MaxConcurrent = 1e6
	k.MonthlyTokens, k.MonthlyRequests = 1e15, 1e15
})

// benchmarkAdmit measures one admission and its settlement.
func benchmarkAdmit(b *testing.B, redis config.Redis) {
	l, err := New(Options{
		Auth:    config.Auth{Keys: []config.Key{benchKey}},
		Redis:   redis,
		Metrics: metrics.New(),
	})
	if err != nil {
		b.Fatalf("New: %v", err)
	}
	b.Cleanup(func() { l.Close() })
	req := Request{Key: keyNamed(l, "bench"), Tokens: 100, Model: "m"}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		d, r := l.Admit(ctx, req)
		if !d.Allowed {
			b.Fatalf("rejected by %s", d.Limit)
		}
		r.Settle(10, 90)
	}
	if n := fallbacks(b, l); n != 0 {
		b.Fatalf("%v fallbacks, want 0", n)
	}
}

func BenchmarkAdmitLocal(b *testing.B) {
	benchmarkAdmit(b, config.Redis{})
}

func BenchmarkAdmitRedis(b *testing.B) {
	srv := testredis.Start(b)
	benchmarkAdmit(b, config.Redis{Addr: srv.Addr, KeyPrefix: "bench:"})
}

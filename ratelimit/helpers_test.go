package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testredis"
	"github.com/llmproxy/llmproxy/metrics"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testStart is the fake clock's start: mid-month, so that no test crosses a
// month by accident.
var testStart = time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)

// fakeClock is a clock that moves only when a test moves it.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{t: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// hashedKey returns a key config given by the SHA-256 of secret.
func hashedKey(name, secret string) config.Key {
	sum := sha256.Sum256([]byte(secret))
	return config.Key{Name: name, SHA256: hex.EncodeToString(sum[:])}
}

// backend builds limiters on one store: in memory, or a private Redis.
type backend struct {
	name  string
	redis *testredis.Server
}

// backends returns the in-memory backend and one on a fresh redis-server.
func backends(t *testing.T) []backend {
	t.Helper()
	return []backend{{name: "local"}, {name: "redis", redis: testredis.Start(t)}}
}

// newLimiter builds a Limiter on b with opts, its own metrics and clock,
// and keys in Redis under a prefix unique to the test.
func (b backend) newLimiter(t *testing.T, opts Options) *Limiter {
	t.Helper()
	if b.redis != nil {
		opts.Redis = config.Redis{
			Addr:      b.redis.Addr,
			Timeout:   time.Second,
			KeyPrefix: strings.ReplaceAll(t.Name(), "/", ":") + ":",
		}
	}
	return newTestLimiter(t, opts)
}

// newTestLimiter builds a Limiter with opts. Unless opts sets a check
// interval, Redis is not checked in the background, so that only the
// test's own calls change the Redis state.
func newTestLimiter(t *testing.T, opts Options) *Limiter {
	t.Helper()
	if opts.Metrics == nil {
		opts.Metrics = metrics.New()
	}
	if opts.Redis.CheckInterval == 0 {
		opts.Redis.CheckInterval = -1
	}
	l, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

// admitKey admits one request of key reserving tokens.
func admitKey(l *Limiter, key string, tokens int64) (Decision, *Reservation) {
	return l.Admit(context.Background(), Request{Key: keyNamed(l, key), Tokens: tokens})
}

func keyNamed(l *Limiter, name string) *Key {
	for _, k := range l.Keys() {
		if k.Name == name {
			return k
		}
	}
	panic("no key " + name)
}

// mustAdmit admits one request of key and fails the test when it is rejected.
func mustAdmit(t *testing.T, l *Limiter, key string, tokens int64) *Reservation {
	t.Helper()
	d, r := admitKey(l, key, tokens)
	if !d.Allowed || r == nil {
		t.Fatalf("request of %s rejected by %s, want admitted", key, d.Limit)
	}
	return r
}

// mustReject admits one request of key, fails the test when it is
// admitted, and returns the decision.
func mustReject(t *testing.T, l *Limiter, key string, tokens int64) Decision {
	t.Helper()
	d, r := admitKey(l, key, tokens)
	if d.Allowed || r != nil {
		r.Release()
		t.Fatalf("request of %s admitted, want rejected", key)
	}
	return d
}

func counterValue(t testing.TB, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatalf("read counter: %v", err)
	}
	return m.GetCounter().GetValue()
}

func gaugeValue(t testing.TB, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatalf("read gauge: %v", err)
	}
	return m.GetGauge().GetValue()
}

func fallbacks(t testing.TB, l *Limiter) float64 {
	t.Helper()
	return counterValue(t, l.metrics.RedisFallback.WithLabelValues("ratelimit"))
}

package cache

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testredis"
	"github.com/llmproxy/llmproxy/metrics"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testCache is a Cache with the metrics and log records a test inspects.
type testCache struct {
	*Cache
	metrics *metrics.Metrics
	logs    *logRecorder
	clock   *fakeClock
}

// options of newTestCache.
type testOptions struct {
	cfg   config.Cache
	redis *testredis.Server
	// redisTimeout is redis.timeout, 1s when zero: far above a loopback
	// call, even on a loaded machine.
	redisTimeout time.Duration
	// checkInterval turns the periodic Redis check on when set. The cache
	// then keeps the wall clock, because the check reads it from its own
	// goroutine, and clock is nil.
	checkInterval time.Duration
}

func newTestCache(t *testing.T, o testOptions) *testCache {
	t.Helper()
	var rdb *redis.Client
	if o.redis != nil {
		rdb = redis.NewClient(&redis.Options{Addr: o.redis.Addr})
		t.Cleanup(func() { _ = rdb.Close() })
	}
	m := metrics.New()
	logs := &logRecorder{}
	// Without a check interval, no periodic check, so that only the
	// test's calls change the Redis state.
	rcfg := config.Redis{Timeout: o.redisTimeout, KeyPrefix: "test:", CheckInterval: -1}
	if rcfg.Timeout == 0 {
		rcfg.Timeout = time.Second
	}
	if o.checkInterval > 0 {
		rcfg.CheckInterval = o.checkInterval
	}
	c, err := New(o.cfg, rdb, rcfg, m, slog.New(logs))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.Close)
	tc := &testCache{Cache: c, metrics: m, logs: logs}
	if o.checkInterval == 0 {
		tc.clock = &fakeClock{now: time.Unix(1_800_000_000, 0)}
		c.now = tc.clock.Now
	}
	return tc
}

// requests returns the CacheRequests counter of tier and outcome.
func (tc *testCache) requests(tier, outcome string) float64 {
	return testutil.ToFloat64(tc.metrics.CacheRequests.WithLabelValues(tier, outcome))
}

// plan classifies a request without Cache-Control directives.
func (tc *testCache) plan(t *testing.T, route, body string) Plan {
	t.Helper()
	p := tc.Classify(Request{Route: route, Body: []byte(body)})
	if !p.Cacheable() {
		t.Fatalf("Classify(%s %s): not cacheable: %s", route, body, p.Reason)
	}
	return p
}

// store feeds response to an Aggregator of p and stores it as complete. It
// may run outside the test's goroutine, so it reports a failure with
// Errorf and returns nil.
func (tc *testCache) store(t *testing.T, p Plan, response []byte) *Entry {
	t.Helper()
	agg := tc.NewAggregator(p)
	_, _ = agg.Write(response)
	e, err := tc.Store(context.Background(), p, agg, true)
	if err != nil {
		t.Errorf("Store: %v", err)
	}
	return e
}

// fakeClock is the clock of Redis retries in tests.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

// logRecorder is a slog.Handler that keeps every record.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.records = append(l.records, r.Clone())
	l.mu.Unlock()
	return nil
}

func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

// count returns the number of records at level whose message is msg.
func (l *logRecorder) count(level slog.Level, msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.records {
		if r.Level == level && r.Message == msg {
			n++
		}
	}
	return n
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatalf("read testdata: %v", err)
	}
	return b
}

func boolPtr(b bool) *bool { return &b }

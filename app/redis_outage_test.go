package app_test

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/internal/testredis"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// statuses sends n short generations with the key named key and returns
// their statuses in order.
func (s *limitsSetup) statuses(key string, n int) []int {
	s.t.Helper()
	out := make([]int, n)
	for i := range out {
		out[i], _ = s.quick(key)
	}
	return out
}

// TestRedisRestartKeepsOutageUsage serves requests of a key with a monthly
// quota while Redis is down, then restarts Redis with the data it saved
// before. The requests of the outage must count against the quota.
func TestRedisRestartKeepsOutageUsage(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	s := startLimits(t, true, sim, 0, func() []config.Key {
		k := keyOf("solo")
		k.MonthlyRequests = 4
		return []config.Key{k}
	})
	ok, limited := http.StatusOK, http.StatusTooManyRequests

	s.expect("first request", "solo", ok, "")
	s.redis.Save(t)
	s.stopRedis()
	if got, want := s.statuses("solo", 5), []int{ok, ok, ok, limited, limited}; !slices.Equal(got, want) {
		t.Fatalf("with Redis down: statuses %v, want %v", got, want)
	}

	s.redis.Restart(t)
	testenv.WaitFor(t, 15*time.Second, "usage read from Redis again", func() bool {
		return s.usage("solo").Shared
	})
	if got := s.statuses("solo", 5); slices.Contains(got, ok) {
		t.Errorf("after the restart: statuses %v, want only %d", got, limited)
	}
	if u := s.usage("solo"); u.MonthlyRequests != 4 {
		t.Errorf("usage %d requests, want the 4 served", u.MonthlyRequests)
	}
}

// TestRedisUpWithoutTraffic stops and restarts Redis while no request
// arrives. llmproxy_redis_up and the log must follow both changes.
func TestRedisUpWithoutTraffic(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	r := testredis.Start(t)
	cfg := testenv.Config(t, sim)
	cfg.Redis.Addr = r.Addr
	a, logs := startApp(t, cfg)
	if resp := generate(t, a, "before"); resp.StatusCode != http.StatusOK {
		t.Fatalf("request with Redis up: status %d", resp.StatusCode)
	}
	up := func() float64 { return testutil.ToFloat64(a.Metrics().RedisUp) }
	if got := up(); got != 1 {
		t.Fatalf("redis_up = %v with Redis up, want 1", got)
	}
	type record struct {
		Level string `json:"level"`
		Msg   string `json:"msg"`
	}
	// logged returns the number of records at level with msg.
	logged := func(level, msg string) int {
		n := 0
		for _, rec := range testenv.Records[record](t, logs) {
			if rec.Level == level && rec.Msg == msg {
				n++
			}
		}
		return n
	}

	r.Stop()
	testenv.WaitFor(t, 15*time.Second, "redis_up 0 without traffic", func() bool { return up() == 0 })
	testenv.WaitFor(t, 15*time.Second, "both outage warnings", func() bool {
		return logged("WARN", "redis unreachable, rate limits are counted per instance") == 1 &&
			logged("WARN", "redis unavailable, cache continues with l1 only") == 1
	})

	r.Restart(t)
	testenv.WaitFor(t, 15*time.Second, "redis_up 1 without traffic", func() bool { return up() == 1 })
	testenv.WaitFor(t, 15*time.Second, "both recovery messages", func() bool {
		return logged("INFO", "redis reachable again, rate limits are shared") == 1 &&
			logged("INFO", "redis reachable again, cache l2 resumed") == 1
	})
}

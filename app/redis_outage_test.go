package app_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/internal/testredis"
	"github.com/llmproxy/llmproxy/ollamasim"
	"github.com/llmproxy/llmproxy/statuspage"
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

	if st := redisOnStatus(t, a); st == nil || !st.Up || len(st.Degraded) != 0 {
		t.Errorf("/admin/status redis = %+v with Redis up, want up and nothing degraded", st)
	}

	r.Stop()
	testenv.WaitFor(t, 15*time.Second, "redis_up 0 without traffic", func() bool { return up() == 0 })
	testenv.WaitFor(t, 15*time.Second, "both outage warnings", func() bool {
		return logged("WARN", "redis unreachable, rate limits are counted per instance") == 1 &&
			logged("WARN", "redis unavailable, cache continues with l1 only") == 1
	})
	want := []string{
		"the response cache uses the in-process tier only",
		"rate limits and quotas are counted by each instance alone",
	}
	if st := redisOnStatus(t, a); st == nil || st.Up || !slices.Equal(st.Degraded, want) {
		t.Errorf("/admin/status redis = %+v with Redis down, want down and degraded %q", st, want)
	}

	r.Restart(t)
	testenv.WaitFor(t, 15*time.Second, "redis_up 1 without traffic", func() bool { return up() == 1 })
	testenv.WaitFor(t, 15*time.Second, "both recovery messages", func() bool {
		return logged("INFO", "redis reachable again, rate limits are shared") == 1 &&
			logged("INFO", "redis reachable again, cache l2 resumed") == 1
	})
	if st := redisOnStatus(t, a); st == nil || !st.Up || len(st.Degraded) != 0 {
		t.Errorf("/admin/status redis = %+v after the restart, want up and nothing degraded", st)
	}
}

// redisOnStatus returns the redis field of a's /admin/status.
func redisOnStatus(t *testing.T, a *app.App) *statuspage.RedisStatus {
	t.Helper()
	resp, err := http.Get(a.URL() + "/admin/status")
	if err != nil {
		t.Fatalf("GET /admin/status: %v", err)
	}
	defer resp.Body.Close()
	var snap statuspage.Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&snap); err != nil {
		t.Fatalf("decode /admin/status: %v", err)
	}
	return snap.Redis
}

// TestRedisUpWhenScriptsDenied denies Redis's scripting commands to the
// proxy's user. The cache's plain writes still work and the rate limiter's
// scripts fail, so llmproxy_redis_up must stay 0 at every check instead
// of following whichever component checked last.
func TestRedisUpWhenScriptsDenied(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	r := testredis.Start(t)
	cfg := testenv.Config(t, sim)
	cfg.Redis.Addr = r.Addr
	cfg.Redis.CheckInterval = 20 * time.Millisecond
	a, _ := startApp(t, cfg)
	up := func() float64 { return testutil.ToFloat64(a.Metrics().RedisUp) }
	testenv.WaitFor(t, 15*time.Second, "redis_up 1 at start", func() bool { return up() == 1 })

	admin := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { _ = admin.Close() })
	ctx := context.Background()
	if err := admin.Do(ctx, "ACL", "SETUSER", "default", "-@scripting").Err(); err != nil {
		t.Fatalf("ACL SETUSER default -@scripting: %v", err)
	}
	testenv.WaitFor(t, 15*time.Second, "redis_up 0 with scripts denied", func() bool { return up() == 0 })
	for i := range 20 { // about 10 checks of each component
		time.Sleep(10 * time.Millisecond)
		if got := up(); got != 0 {
			t.Fatalf("sample %d: redis_up = %v with scripts denied, want 0", i, got)
		}
	}

	if err := admin.Do(ctx, "ACL", "SETUSER", "default", "+@scripting").Err(); err != nil {
		t.Fatalf("ACL SETUSER default +@scripting: %v", err)
	}
	testenv.WaitFor(t, 15*time.Second, "redis_up 1 with scripts allowed again", func() bool { return up() == 1 })
}

package app_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/internal/testredis"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// restartWarning is the message Reload logs for settings bound at start.
const restartWarning = "some changes take effect only after a restart"

// restartSettings returns the settings list of each restart warning logged
// so far, in order.
func restartSettings(t *testing.T, logs *testenv.LogBuffer) [][]string {
	t.Helper()
	type record struct {
		Msg      string   `json:"msg"`
		Settings []string `json:"settings"`
	}
	var out [][]string
	for _, rec := range testenv.Records[record](t, logs) {
		if rec.Msg == restartWarning {
			out = append(out, rec.Settings)
		}
	}
	return out
}

// startApp starts a proxy with cfg that logs JSON into the returned
// buffer, and shuts it down when the test ends.
func startApp(t *testing.T, cfg *config.Config) (*app.App, *testenv.LogBuffer) {
	t.Helper()
	return testenv.JSONProxy(t, cfg, slog.LevelDebug)
}

func reload(t *testing.T, a *app.App, cfg *config.Config) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("invalid reload config: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Reload(ctx, cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
}

// generate sends a deterministic, and so cacheable, generation request
// and returns the response after reading its body.
func generate(t *testing.T, a *app.App, prompt string) *http.Response {
	t.Helper()
	body := `{"model":"m","prompt":"` + prompt + `","stream":false,` +
		`"options":{"temperature":0,"num_predict":2}}`
	resp, err := http.Post(a.URL()+"/api/generate", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("generate: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("generate %q: status %d", prompt, resp.StatusCode)
	}
	return resp
}

func cacheResult(resp *http.Response) string { return resp.Header.Get("X-LLMProxy-Cache") }

func TestReloadKeepsCacheSettings(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	a, logs := startApp(t, testenv.Config(t, sim))
	if got := cacheResult(generate(t, a, "q")); got != "miss" {
		t.Fatalf("first request: cache %q, want miss", got)
	}
	if got := cacheResult(generate(t, a, "q")); got != "hit-l1" {
		t.Fatalf("second request: cache %q, want hit-l1", got)
	}

	next := testenv.Config(t, sim)
	off := false
	next.Cache.Enabled = &off
	next.Cache.L1.TTL = time.Millisecond
	next.Retry.Attempts = 5
	reload(t, a, next)

	warnings := restartSettings(t, logs)
	want := []string{"cache.enabled", "cache.l1.ttl"}
	if len(warnings) != 1 || !slices.Equal(warnings[0], want) {
		t.Fatalf("restart warnings = %v, want one naming %v", warnings, want)
	}
	running := a.Config()
	if !running.Cache.IsEnabled() {
		t.Error("Config().Cache.Enabled = false, want the running true")
	}
	if running.Cache.L1.TTL != time.Hour {
		t.Errorf("Config().Cache.L1.TTL = %s, want the running 1h", running.Cache.L1.TTL)
	}
	if running.Retry.Attempts != 5 {
		t.Errorf("Config().Retry.Attempts = %d, want 5 from the reload", running.Retry.Attempts)
	}

	// Past the new TTL, the entry stored under the old one still serves.
	time.Sleep(20 * time.Millisecond)
	if got := cacheResult(generate(t, a, "q")); got != "hit-l1" {
		t.Errorf("after reload: cache %q, want hit-l1 from the running cache", got)
	}
	if n := sim.Server().Requests("/api/generate"); n != 1 {
		t.Errorf("node saw %d generate requests, want 1", n)
	}

	// next still differs from the settings in force, so reloading it
	// again repeats the warning.
	reload(t, a, next)
	warnings = restartSettings(t, logs)
	if len(warnings) != 2 || !slices.Equal(warnings[1], want) {
		t.Errorf("restart warnings after a second reload = %v, want a second naming %v",
			warnings, want)
	}
}

// redisKeys returns the keys of the Redis server at addr that match pattern.
func redisKeys(t *testing.T, addr, pattern string) []string {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	keys, err := rdb.Keys(context.Background(), pattern).Result()
	if err != nil {
		t.Fatalf("KEYS %s on %s: %v", pattern, addr, err)
	}
	return keys
}

func TestReloadKeepsRedisOfLimiterAndCache(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	first, second := testredis.Start(t), testredis.Start(t)
	cfg := testenv.Config(t, sim)
	cfg.Redis.Addr = first.Addr
	cfg.RateLimit.PerAddress = 100
	cfg.RateLimit.Burst = 100
	a, logs := startApp(t, cfg)
	if got := generate(t, a, "before").Header.Get("X-RateLimit-Limit"); got != "100" {
		t.Fatalf("before reload: X-RateLimit-Limit %q, want 100", got)
	}

	// The burst change reconfigures the limiter, so the test shows which
	// Redis server the limiter uses after Reload.
	next := testenv.Config(t, sim)
	next.Redis.Addr = second.Addr
	next.RateLimit.PerAddress = 100
	next.RateLimit.Burst = 200
	reload(t, a, next)

	warnings := restartSettings(t, logs)
	if len(warnings) != 1 || !slices.Equal(warnings[0], []string{"redis.addr"}) {
		t.Fatalf("restart warnings = %v, want one naming [redis.addr]", warnings)
	}
	if got := a.Config().Redis.Addr; got != first.Addr {
		t.Errorf("Config().Redis.Addr = %s, want the running %s", got, first.Addr)
	}

	rdb := redis.NewClient(&redis.Options{Addr: first.Addr})
	defer rdb.Close()
	if err := rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatalf("FLUSHALL on %s: %v", first.Addr, err)
	}
	resp := generate(t, a, "after")
	if got := resp.Header.Get("X-RateLimit-Limit"); got != "200" {
		t.Errorf("after reload: X-RateLimit-Limit %q, want 200 from the reloaded burst", got)
	}
	if got := cacheResult(resp); got != "miss" {
		t.Errorf("after reload: cache %q, want miss", got)
	}
	if keys := redisKeys(t, first.Addr, "llmproxy:rl:*"); len(keys) == 0 {
		t.Error("no rate limit keys on the Redis server of the start after reload")
	}
	if keys := redisKeys(t, first.Addr, "llmproxy:cache:*"); len(keys) == 0 {
		t.Error("no cache keys on the Redis server of the start after reload")
	}
	if keys := redisKeys(t, second.Addr, "*"); len(keys) != 0 {
		t.Errorf("keys %v on the Redis server named by the reload, want none before a restart", keys)
	}
}

// TestReloadKeepsBodyLimit reloads a smaller max_body_bytes while requests
// run: fasthttp reads its limit without a lock, so the limit of the start
// stays, and the race detector reports no write to it.
func TestReloadKeepsBodyLimit(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	a, logs := startApp(t, testenv.Config(t, sim))

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		body := `{"model":"m","prompt":"during the reload","stream":false}`
		for range 20 {
			resp, err := http.Post(a.URL()+"/api/generate", "application/json", strings.NewReader(body))
			if err != nil {
				t.Errorf("generate during the reload: %v", err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	next := testenv.Config(t, sim)
	next.MaxBodyBytes = 64
	reload(t, a, next)
	wg.Wait()

	warnings := restartSettings(t, logs)
	if len(warnings) != 1 || !slices.Equal(warnings[0], []string{"max_body_bytes"}) {
		t.Fatalf("restart warnings = %v, want one naming max_body_bytes", warnings)
	}
	// generate fails the test unless the status is 200.
	generate(t, a, strings.Repeat("a body over 64 bytes ", 10))
}

// TestReloadDropsGaugesOfRemovedNode checks that a node removed by a
// reload no longer shows in the node gauges, and that its request counts
// stay.
func TestReloadDropsGaugesOfRemovedNode(t *testing.T) {
	a0 := testenv.Sim(t, "m", ollamasim.Config{})
	a1 := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, a0, a1)
	// Round robin gives each node two of the four requests, where
	// inference_aware would keep them on the node that loaded the model.
	// The prompts differ, so that none is served from the cache.
	cfg.Balancer.Policy = config.PolicyRoundRobin
	a, _ := startApp(t, cfg)
	for i := range 4 {
		generate(t, a, fmt.Sprint("spread ", i))
	}
	if !strings.Contains(scrape(t, a), `llmproxy_node_up{node="n1"} 1`) {
		t.Fatal("node n1 is not reported up before the reload")
	}

	reload(t, a, testenv.Config(t, a0))
	metrics := scrape(t, a)
	for _, name := range []string{"llmproxy_node_up", "llmproxy_node_breaker_state",
		"llmproxy_node_inflight", "llmproxy_node_loaded_models"} {
		if strings.Contains(metrics, name+`{node="n1"}`) {
			t.Errorf("%s still has a series for the removed node n1", name)
		}
	}
	if !strings.Contains(metrics, `llmproxy_node_up{node="n0"} 1`) {
		t.Error("node n0 is no longer reported up")
	}
	if !strings.Contains(metrics, `node="n1",route="/api/generate"`) {
		t.Error("the request counts of n1 are gone")
	}
}

func scrape(t *testing.T, a *app.App) string {
	t.Helper()
	resp, err := http.Get(a.URL() + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read metrics: %v", err)
	}
	return string(b)
}

// TestRemovedNodeKeepsModelLabel reloads away the only node while it
// streams a response: the stream still ends with its done line, and the
// request counts under its model, which the node listed when the request
// was placed.
func TestRemovedNodeKeepsModelLabel(t *testing.T) {
	slow := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 20, MinTokens: 20, MaxTokens: 20})
	other := testenv.Sim(t, "x", ollamasim.Config{})
	a, _ := startApp(t, testenv.Config(t, slow))

	resp, err := http.Post(a.URL()+"/api/chat", "application/json",
		strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatalf("chat: %v", err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatalf("first line: %v", err)
	}
	next := testenv.Config(t, other)
	next.Nodes[0].Name = "n9"
	reload(t, a, next)
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("rest of the stream: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(rest)), "\n")
	if last := lines[len(lines)-1]; !strings.Contains(last, `"done":true`) {
		t.Fatalf("the stream did not end with its done line after the reload; last line: %s", last)
	}

	var metrics string
	testenv.WaitFor(t, 5*time.Second, "the stream to be counted", func() bool {
		metrics = scrape(t, a)
		return strings.Contains(metrics, `llmproxy_requests_total{code="200",model=`) &&
			strings.Contains(metrics, `route="/api/chat"`)
	})
	if !strings.Contains(metrics, `llmproxy_requests_total{code="200",model="m:latest",node="n0",route="/api/chat"} 1`) {
		t.Errorf("the stream is not counted under model m:latest; counts:\n%s", grepLines(metrics, "llmproxy_requests_total{"))
	}
	if rates := grepLines(metrics, "llmproxy_tokens_per_second{"); strings.Contains(rates, `node="n0"`) {
		t.Errorf("the removed node n0 has a generation rate again:\n%s", rates)
	}
	if runtime.GOOS == "linux" && !strings.Contains(metrics, `llmproxy_stream_relays_total{relay="event_loop"} 1`) {
		t.Errorf("the stream did not go through the event loop:\n%s", grepLines(metrics, "llmproxy_stream_relays_total{"))
	}
}

func grepLines(text, prefix string) string {
	var out []string
	for line := range strings.Lines(text) {
		if strings.HasPrefix(line, prefix) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return strings.Join(out, "\n")
}

// warningRecord is a log line of a risky setting.
type warningRecord struct {
	Level   string `json:"level"`
	Msg     string `json:"msg"`
	Warning string `json:"warning"`
}

// riskyWarnings returns the risky setting warnings logged after the first
// line with message after, or from the start when after is empty.
func riskyWarnings(t *testing.T, logs *testenv.LogBuffer, after string) []warningRecord {
	t.Helper()
	var out []warningRecord
	found := after == ""
	for _, rec := range testenv.Records[warningRecord](t, logs) {
		found = found || rec.Msg == after
		if found && rec.Msg == "risky configuration" {
			out = append(out, rec)
		}
	}
	return out
}

// TestReloadLogsWarnings reloads a write_timeout under a second. The reload
// logs the same warnings as a start with that configuration.
func TestReloadLogsWarnings(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	a, logs := startApp(t, testenv.Config(t, sim))
	next := testenv.Config(t, sim)
	next.WriteTimeout = 300 * time.Millisecond
	reload(t, a, next)
	got := riskyWarnings(t, logs, "configuration reloaded")

	_, startLogs := startApp(t, next)
	want := riskyWarnings(t, startLogs, "")
	if !slices.ContainsFunc(want, func(rec warningRecord) bool {
		return strings.HasPrefix(rec.Warning, "write_timeout: 300ms is under a second")
	}) {
		t.Fatalf("a start with write_timeout 300ms logged no warning about it: %+v", want)
	}
	if !slices.Equal(got, want) {
		t.Errorf("the reload logged the warnings %+v, want those of a start: %+v", got, want)
	}
}

package health

import (
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/config"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestTracker(t *testing.T, tune func(*config.Config)) (*tracker, *clock) {
	t.Helper()
	u, _ := url.Parse("http://n:11434")
	n := balancer.NewNode("n", u, 4, 1)
	cfg := config.Default()
	if tune != nil {
		tune(&cfg)
	}
	c := &clock{t: time.Unix(1000, 0)}
	tr := newTracker(n, &cfg, c.now, func(*balancer.Node, gobreaker.State, gobreaker.State) {})
	return tr, c
}

func TestPassiveWindow(t *testing.T) {
	tr, c := newTestTracker(t, func(cfg *config.Config) {
		cfg.Health.MaxFails = 3
		cfg.Health.FailTimeout = 30 * time.Second
		cfg.Breaker.ConsecutiveFailures = 100
		cfg.Breaker.FailureRatio = 0
	})
	tr.report("connect")
	tr.report("connect")
	c.advance(31 * time.Second) // the first two fall out of the window
	if tr.report("connect") {
		t.Fatal("taken out after one failure in the window")
	}
	tr.report("connect")
	if !tr.report("connect") {
		t.Fatal("not taken out after three failures in the window")
	}
	if tr.Usable() {
		t.Error("usable while taken out")
	}
	c.advance(29 * time.Second)
	if tr.Usable() {
		t.Error("usable before fail_timeout passed")
	}
	c.advance(2 * time.Second)
	if !tr.Usable() {
		t.Error("not usable after fail_timeout")
	}
}

func TestSuccessesDoNotCountAsFailures(t *testing.T) {
	tr, _ := newTestTracker(t, func(cfg *config.Config) { cfg.Health.MaxFails = 1 })
	for i := 0; i < 10; i++ {
		if tr.report("") {
			t.Fatal("a success took the node out")
		}
	}
	if !tr.Usable() {
		t.Error("node unusable after successes")
	}
}

func TestBreakerOpensAndRecovers(t *testing.T) {
	tr, _ := newTestTracker(t, func(cfg *config.Config) {
		cfg.Health.MaxFails = 0
		cfg.Breaker.ConsecutiveFailures = 3
		cfg.Breaker.OpenTimeout = time.Hour
	})
	for i := 0; i < 3; i++ {
		tr.report("status_5xx")
	}
	if tr.breakerState() != "open" || tr.Usable() {
		t.Fatalf("breaker %s, usable %v after 3 consecutive failures", tr.breakerState(), tr.Usable())
	}
	tr.recovered()
	if tr.breakerState() != "closed" || !tr.Usable() {
		t.Errorf("after recovery: breaker %s, usable %v", tr.breakerState(), tr.Usable())
	}
}

func TestHalfOpenLimitsProbes(t *testing.T) {
	tr, _ := newTestTracker(t, func(cfg *config.Config) {
		cfg.Health.MaxFails = 0
		cfg.Breaker.ConsecutiveFailures = 1
		cfg.Breaker.OpenTimeout = time.Millisecond
		cfg.Breaker.HalfOpenRequests = 2
	})
	tr.report("timeout")
	deadline := time.Now().Add(5 * time.Second)
	for tr.breakerState() != "half-open" {
		if time.Now().After(deadline) {
			t.Fatal("breaker never went half-open")
		}
		time.Sleep(time.Millisecond)
	}
	tr.node.Acquire()
	tr.node.Acquire()
	if tr.Usable() {
		t.Error("half-open breaker offered a third request at once")
	}
	tr.node.Release()
	if !tr.Usable() {
		t.Error("half-open breaker offered no probe with one slot left")
	}
}

func TestParseInventory(t *testing.T) {
	models, err := parseTags([]byte(`{"models":[{"name":"tiny:latest","digest":"abc","size":5},{"model":"x"}]}`))
	if err != nil || len(models) != 2 || models[0].Name != "tiny:latest" || models[1].Name != "x:latest" {
		t.Fatalf("tags: %+v, %v", models, err)
	}
	loaded, err := parsePS([]byte(`{"models":[{"name":"tiny","size_vram":42,"context_length":8192,` +
		`"expires_at":"2026-12-04T16:01:26.568513778Z"}]}`))
	if err != nil || len(loaded) != 1 || loaded[0].SizeVRAM != 42 || loaded[0].NumCtx != 8192 ||
		loaded[0].ExpiresAt.IsZero() {
		t.Fatalf("ps: %+v, %v", loaded, err)
	}
	if _, err := parseTags([]byte(`not json`)); err == nil {
		t.Error("invalid tags accepted")
	}
}

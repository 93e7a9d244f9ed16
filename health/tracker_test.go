package health

import (
	"net/url"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testclock"
)

func newTestTracker(t *testing.T, tune func(*config.Config)) (*tracker, *testclock.Clock) {
	t.Helper()
	u, _ := url.Parse("http://n:11434")
	n := balancer.NewNode("n", u, 4, 1)
	cfg := config.Default()
	if tune != nil {
		tune(&cfg)
	}
	c := testclock.New(time.Unix(1000, 0))
	tr := newTracker(n, &cfg, c.Now, func(*balancer.Node, gobreaker.State, gobreaker.State) {})
	return tr, c
}

func TestPassiveWindow(t *testing.T) {
	tr, c := newTestTracker(t, func(cfg *config.Config) {
		cfg.Health.MaxFails = 3
		cfg.Health.FailTimeout = 30 * time.Second
		cfg.Breaker.ConsecutiveFailures = 100
		cfg.Breaker.FailureRatio = 0
	})
	tr.report("connect", true)
	tr.report("connect", true)
	c.Advance(31 * time.Second) // the first two fall out of the window
	if tr.report("connect", true) {
		t.Fatal("taken out after one failure in the window")
	}
	tr.report("connect", true)
	if !tr.report("connect", true) {
		t.Fatal("not taken out after three failures in the window")
	}
	if tr.Usable() {
		t.Error("usable while taken out")
	}
	c.Advance(29 * time.Second)
	if tr.Usable() {
		t.Error("usable before fail_timeout passed")
	}
	c.Advance(2 * time.Second)
	if !tr.Usable() {
		t.Error("not usable after fail_timeout")
	}
}

func TestSuccessesDoNotCountAsFailures(t *testing.T) {
	tr, _ := newTestTracker(t, func(cfg *config.Config) { cfg.Health.MaxFails = 1 })
	for i := 0; i < 10; i++ {
		if tr.report("", true) {
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
		tr.report("status_5xx", true)
	}
	if got := tr.breakerState(); got != "open" {
		t.Fatalf("breaker %s after 3 consecutive failures, want open", got)
	}
	if tr.Usable() {
		t.Fatal("usable after 3 consecutive failures")
	}
	tr.recovered()
	if got := tr.breakerState(); got != "closed" {
		t.Errorf("breaker %s after recovery, want closed", got)
	}
	if !tr.Usable() {
		t.Error("not usable after recovery")
	}
}

func TestHalfOpenLimitsProbes(t *testing.T) {
	tr, _ := newTestTracker(t, func(cfg *config.Config) {
		cfg.Health.MaxFails = 0
		cfg.Breaker.ConsecutiveFailures = 1
		cfg.Breaker.OpenTimeout = time.Millisecond
		cfg.Breaker.HalfOpenRequests = 2
	})
	tr.report("timeout", true)
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
	if err != nil {
		t.Fatalf("tags: %v", err)
	}
	if len(models) != 2 {
		t.Fatalf("tags: %d models, want 2: %+v", len(models), models)
	}
	if models[0].Name != "tiny:latest" {
		t.Errorf("tags: models[0].Name = %q, want tiny:latest", models[0].Name)
	}
	if models[1].Name != "x:latest" {
		t.Errorf("tags: models[1].Name = %q, want x:latest", models[1].Name)
	}

	loaded, err := parsePS([]byte(`{"models":[{"name":"tiny","size_vram":42,"context_length":8192,` +
		`"expires_at":"2026-12-04T16:01:26.568513778Z"}]}`))
	if err != nil {
		t.Fatalf("ps: %v", err)
	}
	if len(loaded) != 1 {
		t.Fatalf("ps: %d models, want 1: %+v", len(loaded), loaded)
	}
	if loaded[0].SizeVRAM != 42 {
		t.Errorf("ps: SizeVRAM = %d, want 42", loaded[0].SizeVRAM)
	}
	if loaded[0].NumCtx != 8192 {
		t.Errorf("ps: NumCtx = %d, want 8192", loaded[0].NumCtx)
	}
	if loaded[0].ExpiresAt.IsZero() {
		t.Error("ps: ExpiresAt not parsed")
	}

	if _, err := parseTags([]byte(`not json`)); err == nil {
		t.Error("invalid tags accepted")
	}
}

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
	tr := newTracker(n, &cfg, c.Now, func(*balancer.Node, gobreaker.State, gobreaker.State) {}, nil)
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
	c.Advance(31 * time.Second) // the first two fall out of the window
	if r := tr.report("connect"); r.out != nil {
		t.Fatal("taken out after one failure in the window")
	}
	tr.report("connect")
	if r := tr.report("connect"); r.out == nil {
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
		if r := tr.report(""); r.out != nil {
			t.Fatal("a success took the node out")
		}
	}
	if !tr.Usable() {
		t.Error("node unusable after successes")
	}
}

func TestBreakerOpensAndCloses(t *testing.T) {
	tr, _ := newTestTracker(t, func(cfg *config.Config) {
		cfg.Health.MaxFails = 0
		cfg.Breaker.ConsecutiveFailures = 3
		cfg.Breaker.OpenTimeout = 50 * time.Millisecond
		cfg.Breaker.HalfOpenRequests = 2
	})
	for i := 0; i < 3; i++ {
		tr.report("status_5xx")
	}
	if got := tr.breakerState(); got != "open" {
		t.Fatalf("breaker %s after 3 consecutive failures, want open", got)
	}
	if tr.Usable() {
		t.Fatal("usable after 3 consecutive failures")
	}
	waitHalfOpen(t, tr)
	if !tr.Usable() {
		t.Error("not usable with a half-open breaker")
	}
	tr.report("")
	tr.report("")
	if got := tr.breakerState(); got != "closed" {
		t.Errorf("breaker %s after 2 successes while half-open, want closed", got)
	}
	if !tr.Usable() {
		t.Error("not usable after the breaker closed")
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
	waitHalfOpen(t, tr)
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

// reloaded returns a copy of the default configuration changed by tune,
// as a reload would pass it to apply.
func reloaded(tune func(*config.Config)) *config.Config {
	cfg := config.Default()
	tune(&cfg)
	return &cfg
}

func TestApplyTurnsPassiveChecksOff(t *testing.T) {
	tr, _ := newTestTracker(t, func(cfg *config.Config) {
		cfg.Health.MaxFails = 2
		cfg.Breaker.ConsecutiveFailures = 100
		cfg.Breaker.FailureRatio = 0
	})
	tr.report("connect")
	if r := tr.report("connect"); r.out == nil {
		t.Fatal("not taken out after two failures")
	}
	tr.apply(reloaded(func(cfg *config.Config) {
		cfg.Health.MaxFails = 0
		cfg.Breaker.ConsecutiveFailures = 100
		cfg.Breaker.FailureRatio = 0
	}))
	if !tr.Usable() {
		t.Error("still taken out after max_fails 0 turned passive checks off")
	}
	for range 5 {
		if r := tr.report("connect"); r.out != nil {
			t.Fatal("taken out with max_fails 0")
		}
	}
}

func TestApplyStartsPassiveChecks(t *testing.T) {
	tr, _ := newTestTracker(t, func(cfg *config.Config) { cfg.Health.MaxFails = 0 })
	tr.report("connect")
	tr.apply(reloaded(func(cfg *config.Config) {
		cfg.Health.MaxFails = 2
		cfg.Health.FailTimeout = 45 * time.Second
	}))
	// Failures before the reload went uncounted, as passive checks were off.
	if r := tr.report("connect"); r.out != nil {
		t.Fatal("taken out after one failure counted")
	}
	got := tr.report("connect").out
	if got == nil {
		t.Fatal("not taken out after two failures with max_fails 2")
	}
	if got.failures != 2 {
		t.Errorf("take-out counted %d failures, want 2", got.failures)
	}
	if got.duration != 45*time.Second {
		t.Errorf("take-out lasts %s, want the reloaded fail_timeout 45s", got.duration)
	}
}

func TestApplyMovesTakeOutEnd(t *testing.T) {
	tr, c := newTestTracker(t, func(cfg *config.Config) {
		cfg.Health.MaxFails = 1
		cfg.Health.FailTimeout = time.Minute
	})
	tr.report("connect")
	c.Advance(5 * time.Second)
	tr.apply(reloaded(func(cfg *config.Config) {
		cfg.Health.MaxFails = 1
		cfg.Health.FailTimeout = 10 * time.Second
	}))
	c.Advance(4 * time.Second)
	if tr.Usable() {
		t.Error("usable 9s into a take-out of 10s")
	}
	c.Advance(2 * time.Second)
	if !tr.Usable() {
		t.Error("still out 11s into a take-out that the reload shortened to 10s")
	}

	// A longer fail_timeout does not bring back a take-out that has ended.
	tr.apply(reloaded(func(cfg *config.Config) {
		cfg.Health.MaxFails = 1
		cfg.Health.FailTimeout = time.Hour
	}))
	if !tr.Usable() {
		t.Error("a longer fail_timeout took the node out again")
	}
}

func TestApplyKeepsExpiredFailuresOut(t *testing.T) {
	tr, c := newTestTracker(t, func(cfg *config.Config) {
		cfg.Health.MaxFails = 3
		cfg.Health.FailTimeout = 30 * time.Second
	})
	tr.report("connect")
	tr.report("connect")
	c.Advance(40 * time.Second)
	tr.apply(reloaded(func(cfg *config.Config) {
		cfg.Health.MaxFails = 3
		cfg.Health.FailTimeout = 2 * time.Minute
	}))
	if r := tr.report("connect"); r.out != nil {
		t.Error("failures that had left the old window counted under the new one")
	}
}

func TestApplyReplacesChangedBreaker(t *testing.T) {
	tight := func(cfg *config.Config) {
		cfg.Health.MaxFails = 0
		cfg.Breaker.ConsecutiveFailures = 2
		cfg.Breaker.OpenTimeout = time.Hour
	}
	tr, _ := newTestTracker(t, tight)
	tr.report("status_5xx")
	tr.report("status_5xx")
	if got := tr.breakerState(); got != "open" {
		t.Fatalf("breaker %s after 2 consecutive failures, want open", got)
	}

	// Unchanged breaker settings keep the breaker and its state.
	if _, replaced := tr.apply(reloaded(func(cfg *config.Config) {
		tight(cfg)
		cfg.Health.FailTimeout = time.Minute
	})); replaced {
		t.Error("apply replaced the breaker although its settings did not change")
	}
	if got := tr.breakerState(); got != "open" {
		t.Errorf("breaker %s after a reload of other settings, want open", got)
	}

	from, replaced := tr.apply(reloaded(func(cfg *config.Config) {
		tight(cfg)
		cfg.Breaker.ConsecutiveFailures = 3
	}))
	if !replaced {
		t.Fatal("apply kept the breaker although consecutive_failures changed")
	}
	if from != gobreaker.StateOpen {
		t.Errorf("apply returned the replaced state %s, want open", from)
	}
	if got := tr.breakerState(); got != "closed" {
		t.Errorf("breaker %s after its settings changed, want a new closed one", got)
	}
	if !tr.Usable() {
		t.Error("not usable with a new closed breaker")
	}
	tr.report("status_5xx")
	tr.report("status_5xx")
	if got := tr.breakerState(); got != "closed" {
		t.Errorf("breaker %s after 2 failures with consecutive_failures 3, want closed", got)
	}
	tr.report("status_5xx")
	if got := tr.breakerState(); got != "open" {
		t.Errorf("breaker %s after 3 failures with consecutive_failures 3, want open", got)
	}
}

func TestApplyBoundsHalfOpenRequests(t *testing.T) {
	tr, _ := newTestTracker(t, func(cfg *config.Config) {
		cfg.Health.MaxFails = 0
		cfg.Breaker.HalfOpenRequests = 1
	})
	tr.apply(reloaded(func(cfg *config.Config) {
		cfg.Health.MaxFails = 0
		cfg.Breaker.ConsecutiveFailures = 1
		cfg.Breaker.OpenTimeout = time.Millisecond
		cfg.Breaker.HalfOpenRequests = 3
	}))
	tr.report("timeout")
	waitHalfOpen(t, tr)
	tr.node.Acquire()
	tr.node.Acquire()
	if !tr.Usable() {
		t.Error("half-open breaker offered no third request with half_open_requests 3")
	}
	tr.node.Acquire()
	if tr.Usable() {
		t.Error("half-open breaker offered a fourth request with half_open_requests 3")
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

// waitHalfOpen waits up to 5 seconds for the breaker of tr to go half-open.
func waitHalfOpen(t *testing.T, tr *tracker) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for tr.breakerState() != "half-open" {
		if time.Now().After(deadline) {
			t.Fatal("breaker never went half-open")
		}
		time.Sleep(time.Millisecond)
	}
}

package health

import (
	"bytes"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testclock"
)

var errProbe = errors.New("connection refused")

// logBuffer collects log output. The testenv package has one too, but it
// imports this package.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// probedNode is one node with a tracker on a test clock, and a checker
// that logs to logs, for driving probes through applyProbe.
type probedNode struct {
	checker *Checker
	tracker *tracker
	clock   *testclock.Clock
	health  config.Health
	logs    *logBuffer
}

// newProbedNode returns a node that lists the given models, that passive
// checks take out for 30s at its second failure, and whose breaker opens at
// its third failure for breakerOpen. Its tracker shares ec, which may be
// nil.
func newProbedNode(t *testing.T, name string, models []string, breakerOpen time.Duration,
	clock *testclock.Clock, ec *ejectionCap) *probedNode {
	t.Helper()
	cfg := config.Default()
	cfg.Health.MaxFails = 2
	cfg.Health.FailTimeout = 30 * time.Second
	cfg.Health.UnhealthyThreshold = 1
	cfg.Health.HealthyThreshold = 2
	cfg.Breaker.ConsecutiveFailures = 3
	cfg.Breaker.FailureRatio = 0
	cfg.Breaker.OpenTimeout = breakerOpen
	u, _ := url.Parse("http://" + name + ":11434")
	n := balancer.NewNode(name, u, 4, 1)
	var listed []balancer.Model
	for _, m := range models {
		listed = append(listed, balancer.Model{Name: m})
	}
	n.SetInventory(listed, nil, clock.Now())
	logs := &logBuffer{}
	c := &Checker{log: slog.New(slog.NewTextHandler(logs, nil)), trackers: map[*balancer.Node]*tracker{}}
	tr := newTracker(n, &cfg, clock.Now, c.breakerChanged, ec)
	c.trackers[n] = tr
	n.SetGate(tr)
	// The first probe decides the state at once. Later ones need the
	// thresholds.
	c.applyProbe(tr, nil, cfg.Health)
	return &probedNode{checker: c, tracker: tr, clock: clock, health: cfg.Health, logs: logs}
}

// flap makes probes mark the node down and then up again.
func (p *probedNode) flap(t *testing.T) {
	t.Helper()
	n := p.tracker.node
	p.checker.applyProbe(p.tracker, errProbe, p.health)
	if n.Up() {
		t.Fatal("node still up after a failed probe with unhealthy_threshold 1")
	}
	p.checker.applyProbe(p.tracker, nil, p.health)
	p.checker.applyProbe(p.tracker, nil, p.health)
	if !n.Up() {
		t.Fatal("node still down after 2 good probes with healthy_threshold 2")
	}
}

func TestProbeUpKeepsPassiveTakeOut(t *testing.T) {
	clock := testclock.New(time.Unix(1000, 0))
	p := newProbedNode(t, "n", []string{"m:latest"}, time.Hour, clock, nil)
	n := p.tracker.node
	p.tracker.report("connect")
	if r := p.tracker.report("connect"); r.out == nil {
		t.Fatal("not taken out after 2 failures with max_fails 2")
	}
	clock.Advance(5 * time.Second)
	p.flap(t)
	if n.Usable() {
		t.Error("usable 5s into a take-out of 30s after probes marked the node down and up")
	}
	if !strings.Contains(p.logs.String(), "passive_out_remaining=25s") {
		t.Errorf("node up line does not give the 25s left of the take-out:\n%s", p.logs)
	}
	clock.Advance(20 * time.Second)
	p.flap(t)
	if n.Usable() {
		t.Error("usable 25s into a take-out of 30s after a second flap")
	}
	clock.Advance(6 * time.Second)
	if !n.Usable() {
		t.Error("not usable after fail_timeout ended")
	}
}

func TestProbeUpKeepsBreakerOpen(t *testing.T) {
	clock := testclock.New(time.Unix(1000, 0))
	p := newProbedNode(t, "n", []string{"m:latest"}, time.Hour, clock, nil)
	p.tracker.apply(reloaded(func(cfg *config.Config) {
		cfg.Health.MaxFails = 0 // only the breaker takes the node out
		cfg.Breaker.ConsecutiveFailures = 3
		cfg.Breaker.FailureRatio = 0
		cfg.Breaker.OpenTimeout = time.Hour
	}))
	for range 3 {
		p.tracker.report("connect")
	}
	if got := p.tracker.breakerState(); got != "open" {
		t.Fatalf("breaker %s after 3 failures, want open", got)
	}
	p.flap(t)
	if got := p.tracker.breakerState(); got != "open" {
		t.Errorf("breaker %s after probes marked the node down and up, want open until open_timeout", got)
	}
	if p.tracker.node.Usable() {
		t.Error("usable with an open breaker after probes marked the node down and up")
	}
	if !strings.Contains(p.logs.String(), "breaker=open") {
		t.Errorf("node up line does not say that the breaker is open:\n%s", p.logs)
	}
}

func TestProbeUpKeepsRestriction(t *testing.T) {
	clock := testclock.New(time.Unix(1000, 0))
	ec := &ejectionCap{}
	sole := newProbedNode(t, "sole", []string{"m:latest", "solo:latest"}, time.Hour, clock, ec)
	other := newProbedNode(t, "other", []string{"m:latest"}, time.Hour, clock, ec)
	ec.set(50, []*tracker{sole.tracker, other.tracker})
	sole.tracker.report("connect")
	r := sole.tracker.report("connect")
	if r.out == nil || !r.out.restricted {
		t.Fatalf("take-out of the only node with solo %+v, want a restricted one", r.out)
	}
	clock.Advance(5 * time.Second)
	sole.flap(t)
	n := sole.tracker.node
	if !n.Restricted() {
		t.Error("not restricted 5s into a take-out of 30s after probes marked the node down and up")
	}
	if n.Usable() {
		t.Error("usable 5s into a restricted take-out of 30s after probes marked the node down and up")
	}
	clock.Advance(26 * time.Second)
	if n.Restricted() {
		t.Error("still restricted after fail_timeout ended")
	}
	if !n.Usable() {
		t.Error("not usable after fail_timeout ended")
	}
}

func TestTakeOutEndLoggedOnce(t *testing.T) {
	clock := testclock.New(time.Unix(1000, 0))
	p := newProbedNode(t, "n", []string{"m:latest"}, time.Hour, clock, nil)
	const ended = "passive take-out of node ended"
	p.tracker.report("connect")
	p.tracker.report("connect")
	clock.Advance(29 * time.Second)
	p.checker.noteTimeouts(p.tracker)
	if strings.Contains(p.logs.String(), ended) {
		t.Fatalf("end logged 29s into a take-out of 30s:\n%s", p.logs)
	}
	clock.Advance(3 * time.Second)
	p.checker.noteTimeouts(p.tracker)
	p.checker.noteTimeouts(p.tracker)
	logs := p.logs.String()
	if got := strings.Count(logs, ended); got != 1 {
		t.Fatalf("end logged %d times after the take-out ended, want 1:\n%s", got, logs)
	}
	line := logs[strings.Index(logs, ended):]
	line = line[:strings.IndexByte(line, '\n')]
	if !strings.Contains(line, "node=n") {
		t.Errorf("end line does not name the node: %s", line)
	}
	if !strings.Contains(line, "out_for=30s") {
		t.Errorf("end line does not give the 30s the node was out: %s", line)
	}

	// A new take-out before the next probe logs the end of the previous
	// one first.
	p.tracker.report("connect")
	p.tracker.report("connect")
	clock.Advance(31 * time.Second)
	p.checker.Report(p.tracker.node, "connect")
	p.checker.Report(p.tracker.node, "connect")
	if got := strings.Count(p.logs.String(), ended); got != 2 {
		t.Errorf("end logged %d times after a second take-out ended and a third began, want 2:\n%s",
			got, p.logs)
	}
}

func TestReloadEndingTakeOutLogged(t *testing.T) {
	clock := testclock.New(time.Unix(1000, 0))
	p := newProbedNode(t, "n", []string{"m:latest"}, time.Hour, clock, nil)
	p.tracker.report("connect")
	p.tracker.report("connect")
	clock.Advance(10 * time.Second)
	p.tracker.apply(reloaded(func(cfg *config.Config) { cfg.Health.MaxFails = 0 }))
	if !p.tracker.node.Usable() {
		t.Fatal("still out after max_fails 0 turned passive checks off")
	}
	p.checker.noteTimeouts(p.tracker)
	if !strings.Contains(p.logs.String(), "out_for=10s") {
		t.Errorf("no end line with out_for=10s after a reload ended the take-out:\n%s", p.logs)
	}
}

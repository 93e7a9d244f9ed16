package app_test

import (
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// startTrio starts three simulated nodes with model m and a proxy over
// them, configured by tune after health.max_ejection_percent is set to 100,
// that logs JSON into the returned buffer. Passive checks and breakers may
// then take out every node but the last usable one.
func startTrio(t *testing.T, tune func(*config.Config)) (
	*app.App, []*ollamasim.Running, *testenv.LogBuffer) {
	t.Helper()
	var sims []*ollamasim.Running
	for range 3 {
		sims = append(sims, testenv.Sim(t, "m", ollamasim.Config{}))
	}
	cfg := testenv.Config(t, sims...)
	cfg.Health.MaxEjectionPercent = 100
	tune(cfg)
	a, logs := testenv.JSONProxy(t, cfg, slog.LevelInfo)
	return a, sims, logs
}

// reloadTrio reloads a with a configuration over sims changed by tune, as
// startTrio sets it.
func reloadTrio(t *testing.T, a *app.App, sims []*ollamasim.Running, tune func(*config.Config)) {
	t.Helper()
	cfg := testenv.Config(t, sims...)
	cfg.Health.MaxEjectionPercent = 100
	tune(cfg)
	reload(t, a, cfg)
}

// failAll makes every node respond to every generation request with status
// 502, as a gateway in front of a failed node would. Unlike a 500 that
// every node returns alike, which the request may have caused, a 502 counts
// against the node at once.
func failAll(t *testing.T, sims []*ollamasim.Running) {
	t.Helper()
	for _, s := range sims {
		if err := s.Server().SetFaults(ollamasim.Faults{ErrorRate: 1, ErrorStatus: 502}); err != nil {
			t.Fatal(err)
		}
	}
}

// sendGenerates sends n generation requests one after the other, whatever
// their status, and returns the fewest generation requests that any node
// has received.
func sendGenerates(t *testing.T, a *app.App, sims []*ollamasim.Running, n int) int64 {
	t.Helper()
	for range n {
		resp, err := http.Post(a.URL()+"/api/generate", "application/json",
			strings.NewReader(`{"model":"m","prompt":"hi","stream":false}`))
		if err != nil {
			t.Fatalf("generate: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	fewest := sims[0].Server().Requests("/api/generate")
	for _, s := range sims[1:] {
		fewest = min(fewest, s.Server().Requests("/api/generate"))
	}
	return fewest
}

// breakerGauges returns llmproxy_node_breaker_state of every node by name.
func breakerGauges(a *app.App) map[string]float64 {
	out := map[string]float64{}
	for _, n := range a.Balancer().Nodes() {
		out[n.Name] = testutil.ToFloat64(a.Metrics().NodeBreaker.WithLabelValues(n.Name))
	}
	return out
}

// unusableNodes returns the names of the nodes that may not take requests.
func unusableNodes(a *app.App) []string {
	var out []string
	for _, n := range a.Balancer().Nodes() {
		if !n.Usable() {
			out = append(out, n.Name)
		}
	}
	return out
}

// lenient turns passive checks off and sets breaker thresholds that the
// tests never reach.
func lenient(cfg *config.Config) {
	cfg.Health.MaxFails = 0
	cfg.Breaker.ConsecutiveFailures = 1000
	cfg.Breaker.MinRequests = 1000
}

// takeOutRecord is a log line of a passive take-out.
type takeOutRecord struct {
	Msg      string `json:"msg"`
	Node     string `json:"node"`
	Failures int    `json:"failures"`
	For      int64  `json:"for"`
}

// TestReloadAppliesHealthSettings reloads the health and breaker settings
// of a running proxy, then makes every node fail every request. The nodes
// the proxy started with follow the reloaded settings.
func TestReloadAppliesHealthSettings(t *testing.T) {
	cases := []struct {
		name  string
		start func(*config.Config)
		next  func(*config.Config)
		check func(t *testing.T, a *app.App, logs *testenv.LogBuffer)
	}{
		{
			name:  "defaults loosened",
			start: func(*config.Config) {},
			next:  lenient,
			check: func(t *testing.T, a *app.App, _ *testenv.LogBuffer) {
				if out := unusableNodes(a); len(out) != 0 {
					t.Errorf("nodes %v unusable with passive checks off and a lenient breaker", out)
				}
				for name, state := range breakerGauges(a) {
					if state != 0 {
						t.Errorf("breaker of %s in state %v, want 0 (closed)", name, state)
					}
				}
			},
		},
		{
			name:  "passive checks turned on",
			start: lenient,
			next: func(cfg *config.Config) {
				lenient(cfg)
				cfg.Health.MaxFails = 2
				cfg.Health.FailTimeout = 45 * time.Second
			},
			check: func(t *testing.T, a *app.App, logs *testenv.LogBuffer) {
				// Passive checks never take out the last usable node.
				if out := unusableNodes(a); len(out) != 2 {
					t.Errorf("unusable nodes %v, want two taken out by passive checks", out)
				}
				var takeOuts []takeOutRecord
				for _, rec := range testenv.Records[takeOutRecord](t, logs) {
					if rec.Msg == "node taken out by passive checks" {
						takeOuts = append(takeOuts, rec)
					}
				}
				if len(takeOuts) != 2 {
					t.Fatalf("logged %d passive take-outs, want 2: %+v", len(takeOuts), takeOuts)
				}
				for _, rec := range takeOuts {
					if rec.Failures != 2 {
						t.Errorf("take-out of %s logged failures=%d, want 2", rec.Node, rec.Failures)
					}
					if got := time.Duration(rec.For); got != 45*time.Second {
						t.Errorf("take-out of %s logged for=%s, want 45s", rec.Node, got)
					}
				}
			},
		},
		{
			name:  "breaker tightened",
			start: lenient,
			next: func(cfg *config.Config) {
				lenient(cfg)
				cfg.Breaker.ConsecutiveFailures = 2
				cfg.Breaker.OpenTimeout = time.Hour
			},
			check: func(t *testing.T, a *app.App, _ *testenv.LogBuffer) {
				// Breakers never take out the last usable node.
				if open := openBreakers(a); len(open) != 2 {
					t.Errorf("open breakers %v, want two", open)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, sims, logs := startTrio(t, tc.start)
			reloadTrio(t, a, sims, tc.next)
			failAll(t, sims)
			// Each request tries up to retry.attempts nodes, so every node
			// fails at least twice.
			if got := sendGenerates(t, a, sims, 10); got < 2 {
				t.Fatalf("a node received %d generation requests, want at least 2", got)
			}
			tc.check(t, a, logs)
		})
	}
}

// TestReloadReplacesChangedBreakers opens the breakers of every node but
// the last usable one, then reloads twice. Unchanged breaker settings keep
// the breakers open, and changed ones give every node a new closed breaker.
func TestReloadReplacesChangedBreakers(t *testing.T) {
	tight := func(cfg *config.Config) {
		cfg.Health.MaxFails = 0
		cfg.Breaker.ConsecutiveFailures = 2
		cfg.Breaker.OpenTimeout = time.Hour
	}
	a, sims, logs := startTrio(t, tight)
	failAll(t, sims)
	sendGenerates(t, a, sims, 3)
	open := openBreakers(a)
	if len(open) != 2 {
		t.Fatalf("open breakers %v before the reloads, want two", open)
	}

	reloadTrio(t, a, sims, func(cfg *config.Config) {
		tight(cfg)
		cfg.Retry.Attempts = 2
	})
	if got := openBreakers(a); !slices.Equal(got, open) {
		t.Errorf("open breakers %v after a reload of retry.attempts, want %v", got, open)
	}

	reloadTrio(t, a, sims, func(cfg *config.Config) {
		tight(cfg)
		cfg.Breaker.ConsecutiveFailures = 3
	})
	checkBreakers(t, a, 0, "after a reload of its settings")
	if out := unusableNodes(a); len(out) != 0 {
		t.Errorf("nodes %v unusable with new closed breakers", out)
	}
	type record struct {
		Msg  string `json:"msg"`
		Node string `json:"node"`
		From string `json:"from"`
		To   string `json:"to"`
	}
	closed := map[string]bool{}
	for _, rec := range testenv.Records[record](t, logs) {
		if rec.Msg == "node breaker changed" && rec.From == "open" && rec.To == "closed" {
			closed[rec.Node] = true
		}
	}
	if len(closed) != 2 || !closed[open[0]] || !closed[open[1]] {
		t.Errorf("logged the breakers of %v closing, want those of %v", closed, open)
	}
}

// openBreakers returns the names of the nodes whose breaker is open, in
// the order of the nodes.
func openBreakers(a *app.App) []string {
	var out []string
	for _, n := range a.Balancer().Nodes() {
		if testutil.ToFloat64(a.Metrics().NodeBreaker.WithLabelValues(n.Name)) == 2 {
			out = append(out, n.Name)
		}
	}
	return out
}

// checkBreakers reports whether every node's breaker gauge is want (0
// closed, 2 open), and fails the test for each that is not.
func checkBreakers(t *testing.T, a *app.App, want float64, when string) bool {
	t.Helper()
	ok := true
	for name, state := range breakerGauges(a) {
		if state != want {
			t.Errorf("breaker of %s in state %v %s, want %v", name, state, when, want)
			ok = false
		}
	}
	return ok
}

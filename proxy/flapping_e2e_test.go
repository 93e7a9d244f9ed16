package proxy_test

import (
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// TestFlappingNodeStaysOut makes n2 refuse connections until passive
// checks take it out and probes mark it down, then lets it listen again
// until probes mark it up. n2 must take no request until its fail_timeout
// ends, and the log must show that end.
func TestFlappingNodeStaysOut(t *testing.T) {
	const failTimeout = 10 * time.Second
	var sims []*ollamasim.Running
	for range 3 {
		sims = append(sims, testenv.Sim(t, "m", ollamasim.Config{}))
	}
	cfg := testenv.Config(t, sims...)
	cfg.Health.MaxFails = 2
	cfg.Health.FailTimeout = failTimeout
	// Only passive checks take the node out.
	cfg.Breaker.ConsecutiveFailures = 1000
	cfg.Breaker.MinRequests = 1000
	p, logs := testenv.JSONProxy(t, cfg, slog.LevelInfo)
	tr := &trio{sims: sims, proxy: p, cfg: cfg}
	tr.preload(t)
	n2 := p.Balancer().Node("n2")
	n2sim := sims[2].Server()

	// The take-out begins after start, so it cannot end before
	// start+failTimeout.
	start := time.Now()
	if err := n2sim.SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "passive checks taking n2 out", func() bool {
		readBody(t, post(t, p.URL()+"/api/generate", quickGenerate))
		return !n2.Usable()
	})
	testenv.WaitFor(t, 10*time.Second, "probes marking n2 down", func() bool { return !n2.Up() })
	if err := n2sim.SetFaults(ollamasim.Faults{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "probes marking n2 up", func() bool { return n2.Up() })

	// Only the requests that end before start+failTimeout count, so that a
	// slow machine cannot fail the test.
	sent, onN2 := 0, 0
	for sent < 30 {
		resp := post(t, p.URL()+"/api/generate", quickGenerate)
		readBody(t, resp)
		if time.Since(start) >= failTimeout {
			break
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("generate while n2 is out: status %d", resp.StatusCode)
		}
		sent++
		if resp.Header.Get("X-LLMProxy-Node") == "n2" {
			onN2++
		}
	}
	if sent < 5 {
		t.Fatalf("only %d requests ended within fail_timeout after n2 came back up, too few to check", sent)
	}
	if onN2 != 0 {
		t.Errorf("n2 served %d of %d requests after probes marked it up and before fail_timeout ended, want 0",
			onN2, sent)
	}

	testenv.WaitFor(t, 4*failTimeout, "n2 usable again", n2.Usable)
	if elapsed := time.Since(start); elapsed < failTimeout {
		t.Errorf("n2 usable again %s after its failures began, before fail_timeout %s", elapsed, failTimeout)
	}
	type record struct {
		Msg    string
		Node   string
		OutFor time.Duration `json:"out_for"`
	}
	var ends []record
	testenv.WaitFor(t, 10*time.Second, "the log line of the end of n2's take-out", func() bool {
		ends = ends[:0]
		for _, rec := range testenv.Records[record](t, logs) {
			if rec.Msg == "passive take-out of node ended" {
				ends = append(ends, rec)
			}
		}
		return len(ends) > 0
	})
	if len(ends) != 1 {
		t.Errorf("%d log lines of a take-out's end, want 1: %+v", len(ends), ends)
	}
	if ends[0].Node != "n2" {
		t.Errorf("take-out end logged for node %q, want n2", ends[0].Node)
	}
	if ends[0].OutFor != failTimeout {
		t.Errorf("take-out end logged out_for %s, want fail_timeout %s", ends[0].OutFor, failTimeout)
	}

	got := map[string]int{}
	for range 12 {
		resp := post(t, p.URL()+"/api/generate", quickGenerate)
		readBody(t, resp)
		got[resp.Header.Get("X-LLMProxy-Node")]++
	}
	if got["n2"] == 0 {
		t.Errorf("n2 served none of 12 requests after its take-out ended; split %v", got)
	}
}

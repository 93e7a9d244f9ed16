package proxy_test

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// adminNodeStates returns each node's state in GET /admin/nodes by name.
func adminNodeStates(t *testing.T, url string) map[string]string {
	t.Helper()
	resp, err := http.Get(url + "/admin/nodes")
	if err != nil {
		t.Fatalf("GET /admin/nodes: %v", err)
	}
	body := readBody(t, resp)
	var out struct {
		Nodes []struct{ Name, State, Breaker string }
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("decode /admin/nodes %s: %v", body, err)
	}
	states := map[string]string{}
	for _, n := range out.Nodes {
		states[n.Name] = n.State
	}
	return states
}

// TestAdminStateMatchesNodeUp opens the breaker of a node that still
// passes its probes and checks that /admin/nodes no longer calls it up,
// in agreement with llmproxy_node_up.
func TestAdminStateMatchesNodeUp(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{}, func(c *config.Config) {
		c.Health.MaxFails = 0 // only the breaker takes the node out
		c.Breaker.ConsecutiveFailures = 1
		c.Breaker.OpenTimeout = time.Minute
	})
	tr.preload(t)
	if err := tr.sims[2].Server().SetFaults(ollamasim.Faults{ErrorRate: 1, ErrorStatus: 502}); err != nil {
		t.Fatal(err)
	}
	m := tr.proxy.Metrics()
	testenv.WaitFor(t, 10*time.Second, "the breaker of n2 open", func() bool {
		readBody(t, post(t, tr.proxy.URL()+"/api/generate", quickGenerate))
		return testutil.ToFloat64(m.NodeBreaker.WithLabelValues("n2")) == 2
	})
	// A scrape sets llmproxy_node_up from each node's state.
	scrape, err := http.Get(tr.proxy.URL() + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	readBody(t, scrape)

	if up := testutil.ToFloat64(m.NodeUp.WithLabelValues("n2")); up != 0 {
		t.Errorf("llmproxy_node_up of n2 = %v with its breaker open, want 0", up)
	}
	if !tr.proxy.Balancer().Node("n2").Up() {
		t.Error("n2 failed its probes, want only the breaker open")
	}
	states := adminNodeStates(t, tr.proxy.URL())
	if states["n2"] != "ejected" {
		t.Errorf("state of n2 = %q with its breaker open, want ejected", states["n2"])
	}
	if states["n0"] != "up" {
		t.Errorf("state of n0 = %q, want up", states["n0"])
	}
}

// TestPullLogsSkippedNode takes one node down and checks that a pull,
// which succeeds on the others, logs and counts the node it skipped.
func TestPullLogsSkippedNode(t *testing.T) {
	tr := &trio{}
	for range 3 {
		tr.sims = append(tr.sims, testenv.Sim(t, "m", ollamasim.Config{}))
	}
	tr.cfg = testenv.Config(t, tr.sims...)
	var logs *testenv.LogBuffer
	tr.proxy, logs = testenv.JSONProxy(t, tr.cfg, slog.LevelWarn)
	if err := tr.sims[2].Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "n2 down", func() bool {
		return !tr.proxy.Balancer().Node("n2").Up()
	})

	resp := post(t, tr.proxy.URL()+"/api/pull", `{"model":"zzz:1","stream":false}`)
	if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
		t.Fatalf("pull: status %d, body %s; want 200", resp.StatusCode, body)
	}

	type record struct{ Level, Msg, Node, Model, Reason string }
	logged := false
	for _, r := range testenv.Records[record](t, logs) {
		if r.Level == "WARN" && strings.HasPrefix(r.Msg, "pull skipped") && r.Node == "n2" &&
			r.Model == "zzz:1" && r.Reason == "down" {
			logged = true
		}
	}
	if !logged {
		t.Errorf("no warning names the skipped node n2, the model and the reason, log:\n%s", logs)
	}
	m := tr.proxy.Metrics()
	if n := testutil.ToFloat64(m.PullSkipped.WithLabelValues("n2", "down")); n != 1 {
		t.Errorf("llmproxy_pull_skipped_nodes_total{node=n2,reason=down} = %v, want 1", n)
	}
	if n := testutil.ToFloat64(m.PullSkipped.WithLabelValues("n0", "down")); n != 0 {
		t.Errorf("pull counted the usable node n0 as skipped %v times", n)
	}
}

// TestEmbedPartialHitHeader checks the cache header and lookup counts of
// an embedding request with two of its three inputs cached.
func TestEmbedPartialHitHeader(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	readBody(t, post(t, f.proxy.URL()+"/api/embed", `{"model":"embed-e","input":["a","b"]}`))
	m := f.proxy.Metrics()
	hitsBefore := testutil.ToFloat64(m.CacheRequests.WithLabelValues("l1", "hit"))
	missesBefore := testutil.ToFloat64(m.CacheRequests.WithLabelValues("l1", "miss"))

	resp := post(t, f.proxy.URL()+"/api/embed", `{"model":"embed-e","input":["a","b","c"]}`)
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, body %s", resp.StatusCode, body)
	}
	if got := resp.Header.Get("X-LLMProxy-Cache"); got != "partial" {
		t.Errorf("X-LLMProxy-Cache = %q, want partial", got)
	}
	if d := testutil.ToFloat64(m.CacheRequests.WithLabelValues("l1", "hit")) - hitsBefore; d != 2 {
		t.Errorf("l1 hits counted %v, want 2, one per cached input", d)
	}
	if d := testutil.ToFloat64(m.CacheRequests.WithLabelValues("l1", "miss")) - missesBefore; d != 1 {
		t.Errorf("l1 misses counted %v, want 1 for the missing input", d)
	}

	resp = post(t, f.proxy.URL()+"/api/embed", `{"model":"embed-e","input":["x","y"]}`)
	readBody(t, resp)
	if got := resp.Header.Get("X-LLMProxy-Cache"); got != "miss" {
		t.Errorf("X-LLMProxy-Cache = %q with no input cached, want miss", got)
	}
}

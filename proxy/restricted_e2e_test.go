package proxy_test

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// streamM is a streamed generate of m that takes more than three chunks, so
// that a node that cuts streams after three fails it.
const streamM = `{"model":"m","prompt":"hi","stream":true,"options":{"num_predict":8}}`

// streamComplete posts body to /api/generate and reports whether the
// stream ended with its final "done":true line.
func streamComplete(t *testing.T, url, body string) bool {
	t.Helper()
	resp, err := http.Post(url+"/api/generate", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST /api/generate: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return err == nil && resp.StatusCode == http.StatusOK && strings.Contains(string(b), `"done":true`)
}

// soleHolderFleet starts n0 and n1 with m, and n2 with m and solo, where
// n2 cuts every stream after three chunks, behind a least_conn proxy
// whose failure thresholds take a node out for ten minutes.
func soleHolderFleet(t *testing.T) (*app.App, []*ollamasim.Running) {
	t.Helper()
	var sims []*ollamasim.Running
	for range 2 {
		sims = append(sims, testenv.Sim(t, "m", ollamasim.Config{}))
	}
	sims = append(sims, testenv.Sim(t, "m,solo", ollamasim.Config{Faults: ollamasim.Faults{CutAfterChunks: 3}}))
	cfg := testenv.Config(t, sims...)
	cfg.Health.MaxFails = 3
	cfg.Health.FailTimeout = 10 * time.Minute
	cfg.Breaker.ConsecutiveFailures = 3
	cfg.Breaker.OpenTimeout = 10 * time.Minute
	cfg.Balancer.Policy = config.PolicyLeastConn
	p := testenv.Proxy(t, cfg)
	return p, sims
}

// TestFailingSoleHolderRestricted runs n0 and n1 with m, and n2 with m and
// solo, where n2 cuts every stream after three chunks. Once n2 reaches its
// failure thresholds, requests for m must go only to n0 and n1, while
// requests for solo, which only n2 lists, still reach n2.
func TestFailingSoleHolderRestricted(t *testing.T) {
	p, sims := soleHolderFleet(t)
	n2 := p.Balancer().Node("n2")
	n2sim := sims[2].Server()
	m := p.Metrics()

	// Send streams of m until n2 has failed enough of them for its
	// failure thresholds to act: it is out, or the ejection cap kept it in.
	testenv.WaitFor(t, 30*time.Second, "n2 reaching its failure thresholds", func() bool {
		streamComplete(t, p.URL(), streamM)
		skipped := testutil.ToFloat64(m.EjectionsSkipped.WithLabelValues("n2", "passive")) +
			testutil.ToFloat64(m.EjectionsSkipped.WithLabelValues("n2", "breaker"))
		return !n2.Usable() || skipped > 0
	})

	before := n2sim.ModelRequests("m")
	const requests, concurrency = 24, 4
	var wg sync.WaitGroup
	var mu sync.Mutex
	incomplete := 0
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range requests / concurrency {
				if !streamComplete(t, p.URL(), streamM) {
					mu.Lock()
					incomplete++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if got := n2sim.ModelRequests("m") - before; got != 0 {
		t.Errorf("n2 received %d of %d requests for m after its failure thresholds, want 0", got, requests)
	}
	if incomplete != 0 {
		t.Errorf("%d of %d streams of m incomplete after n2's failure thresholds, want 0", incomplete, requests)
	}

	soloBefore := n2sim.ModelRequests("solo")
	resp := post(t, p.URL()+"/api/generate", `{"model":"solo","prompt":"hi","stream":false,"options":{"num_predict":2}}`)
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("request for solo: status %d %s, want 200", resp.StatusCode, body)
	}
	if got := n2sim.ModelRequests("solo") - soloBefore; got != 1 {
		t.Errorf("n2 received %d requests for solo, want 1", got)
	}

	states := adminNodeStates(t, p.URL())
	if states["n2"] != "restricted" {
		t.Errorf("state of n2 = %q, want restricted", states["n2"])
	}
	for _, name := range []string{"n0", "n1"} {
		if states[name] != "up" {
			t.Errorf("state of %s = %q, want up", name, states[name])
		}
	}
	readBody(t, getURL(t, p.URL()+"/metrics"))
	if up := testutil.ToFloat64(m.NodeUp.WithLabelValues("n2")); up != 0 {
		t.Errorf("llmproxy_node_up of n2 = %v while restricted, want 0", up)
	}
	tags := string(readBody(t, getURL(t, p.URL()+"/api/tags")))
	if !strings.Contains(tags, `"solo:latest"`) {
		t.Errorf("/api/tags lacks solo, which restricted n2 serves: %s", tags)
	}
}

// restrictedSoleHolder starts n0 and n1 with m, and n2 with m and solo,
// and sends streams of m until n2, which cuts them, is restricted. It then
// clears n2's faults, and n2 stays restricted for ten minutes.
func restrictedSoleHolder(t *testing.T) (*app.App, []*ollamasim.Running) {
	t.Helper()
	p, sims := soleHolderFleet(t)
	n2 := p.Balancer().Node("n2")
	testenv.WaitFor(t, 30*time.Second, "n2 restricted", func() bool {
		streamComplete(t, p.URL(), streamM)
		return n2.Restricted()
	})
	if err := sims[2].Server().SetFaults(ollamasim.Faults{}); err != nil {
		t.Fatal(err)
	}
	return p, sims
}

func TestModelOpsReachRestrictedNode(t *testing.T) {
	p, sims := restrictedSoleHolder(t)

	resp, body := send(t, p.URL(), "POST /api/copy", `{"source":"solo","destination":"solo2"}`)
	checkOK(t, "copy of solo, which only restricted n2 lists", resp, body)
	if !simLists(t, sims[2], "solo2:latest") {
		t.Error("n2 does not list solo2 after the copy")
	}
	resp, body = send(t, p.URL(), "DELETE /api/delete", `{"model":"solo"}`)
	checkOK(t, "delete of solo, which only restricted n2 lists", resp, body)
	if simLists(t, sims[2], "solo:latest") {
		t.Error("n2 still lists solo after the delete")
	}

	resp, body = send(t, p.URL(), "POST /api/pull", `{"model":"fresh","stream":false}`)
	checkOK(t, "pull", resp, body)
	for i, sim := range sims {
		if !simLists(t, sim, "fresh:latest") {
			t.Errorf("node %d does not list fresh after the pull", i)
		}
	}
	m := p.Metrics()
	if n := testutil.ToFloat64(m.PullSkipped.WithLabelValues("n2", "restricted")); n != 0 {
		t.Errorf("llmproxy_pull_skipped_nodes_total{node=n2,reason=restricted} = %v, want 0", n)
	}
	// Model operations count nothing towards the node's health.
	if state := adminNodeStates(t, p.URL())["n2"]; state != "restricted" {
		t.Errorf("state of n2 after the model operations = %q, want restricted", state)
	}
}

func TestModelOpsReachEjectedNode(t *testing.T) {
	tr := trioWithEjectedN2(t)

	resp, body := send(t, tr.proxy.URL(), "POST /api/pull", `{"model":"fresh","stream":false}`)
	checkOK(t, "pull", resp, body)
	if !simLists(t, tr.byName("n2"), "fresh:latest") {
		t.Error("ejected n2 does not list fresh after the pull")
	}
	m := tr.proxy.Metrics()
	if n := testutil.ToFloat64(m.PullSkipped.WithLabelValues("n2", "ejected")); n != 0 {
		t.Errorf("llmproxy_pull_skipped_nodes_total{node=n2,reason=ejected} = %v, want 0", n)
	}

	resp, body = send(t, tr.proxy.URL(), "DELETE /api/delete", `{"model":"m"}`)
	checkOK(t, "delete of m, which ejected n2 lists", resp, body)
	for i, sim := range tr.sims {
		if n := sim.Server().Requests("/api/delete"); n != 1 {
			t.Errorf("node %d received %d deletes, want 1", i, n)
		}
		if simLists(t, sim, "m:latest") {
			t.Errorf("node %d still lists m after the delete", i)
		}
	}
	if state := adminNodeStates(t, tr.proxy.URL())["n2"]; state != "ejected" {
		t.Errorf("state of n2 after the model operations = %q, want ejected", state)
	}
}

// trioWithEjectedN2 starts three nodes with m behind a proxy and opens
// n2's breaker with failed generations. n2 then passes its probes and
// serves requests again, but stays ejected for ten minutes.
func trioWithEjectedN2(t *testing.T) *trio {
	t.Helper()
	tr := newTrio(t, ollamasim.Config{}, func(c *config.Config) {
		c.Health.MaxFails = 0 // only the breaker takes the node out
		c.Breaker.ConsecutiveFailures = 1
		c.Breaker.OpenTimeout = 10 * time.Minute
	})
	tr.preload(t)
	n2sim := tr.byName("n2").Server()
	if err := n2sim.SetFaults(ollamasim.Faults{ErrorRate: 1, ErrorStatus: 502}); err != nil {
		t.Fatal(err)
	}
	n2 := tr.proxy.Balancer().Node("n2")
	testenv.WaitFor(t, 10*time.Second, "the breaker of n2 open", func() bool {
		readBody(t, post(t, tr.proxy.URL()+"/api/generate", quickGenerate))
		return n2.Up() && !n2.Usable() && !n2.Restricted()
	})
	if err := n2sim.SetFaults(ollamasim.Faults{}); err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestUnknownModelNotFoundWhileNodeEjected opens n2's breaker and
// requests a model that no node lists. The probes still poll the ejected
// node's model list, so the proxy has every list and must respond with
// Ollama's 404, not the 503 of a missing list.
func TestUnknownModelNotFoundWhileNodeEjected(t *testing.T) {
	tr := trioWithEjectedN2(t)

	for _, tc := range []struct{ route, body, want string }{
		{"POST /api/generate", `{"model":"nosuch","prompt":"hi","stream":false}`,
			`{"error":"model 'nosuch' not found"}`},
		{"POST /v1/chat/completions", `{"model":"nosuch","messages":[{"role":"user","content":"hi"}]}`,
			`"message":"model 'nosuch' not found"`},
	} {
		resp, body := send(t, tr.proxy.URL(), tc.route, tc.body)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s of an unknown model with n2 ejected: status %d, body %s; want 404",
				tc.route, resp.StatusCode, body)
		}
		if !strings.Contains(string(body), tc.want) {
			t.Errorf("%s of an unknown model: body %s, want it to contain %s", tc.route, body, tc.want)
		}
	}
}

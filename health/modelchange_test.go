package health_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/health"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// simRequest sends body with method to path on sim and fails the test
// unless the simulated node responds with 200.
func simRequest(t *testing.T, sim *ollamasim.Running, method, path, body string) {
	t.Helper()
	req, err := http.NewRequest(method, sim.URL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: status %d, want 200", method, path, resp.StatusCode)
	}
}

// nodesOf returns a balancer node for each node of cfg.
func nodesOf(t *testing.T, cfg *config.Config) []*balancer.Node {
	t.Helper()
	var nodes []*balancer.Node
	for _, nc := range cfg.Nodes {
		u, err := url.Parse(nc.URL)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, balancer.NewNode(nc.Name, u, 1, 1))
	}
	return nodes
}

func TestRefreshReportsStaleModels(t *testing.T) {
	sims := []*ollamasim.Running{
		testenv.Sim(t, "m,other", ollamasim.Config{}),
		testenv.Sim(t, "m,other", ollamasim.Config{}),
	}
	cfg := testenv.Config(t, sims...)
	nodes := nodesOf(t, cfg)
	bal := balancer.New(balancer.SettingsFrom(cfg), nodes, nil)
	c := health.New(cfg, bal, nil, testenv.Logger())
	var mu sync.Mutex
	var reported []string
	c.OnModelChange(func(model, reason string) {
		mu.Lock()
		defer mu.Unlock()
		reported = append(reported, model+": "+reason)
	})
	// refresh refreshes node i and returns what it reported.
	refresh := func(i int) []string {
		t.Helper()
		mu.Lock()
		reported = nil
		mu.Unlock()
		if err := c.Refresh(context.Background(), nodes[i]); err != nil {
			t.Fatalf("refresh of node %d: %v", i, err)
		}
		mu.Lock()
		defer mu.Unlock()
		return reported
	}

	for i := range nodes {
		if got := refresh(i); len(got) != 0 {
			t.Errorf("first refresh of node %d reported %q, want nothing", i, got)
		}
		if got := refresh(i); len(got) != 0 {
			t.Errorf("refresh of node %d without a change reported %q, want nothing", i, got)
		}
	}

	simRequest(t, sims[0], "DELETE", "/api/delete", `{"model":"m"}`)
	if got := refresh(0); len(got) != 0 {
		t.Errorf("m gone from n0 while n1 lists it: reported %q, want nothing", got)
	}
	simRequest(t, sims[1], "DELETE", "/api/delete", `{"model":"m"}`)
	want := "m:latest: no node lists the model since node n1 stopped listing it"
	if got := refresh(1); len(got) != 1 || got[0] != want {
		t.Errorf("m gone from every node: reported %q, want %q", got, want)
	}

	simRequest(t, sims[0], "POST", "/api/pull", `{"model":"fresh","stream":false}`)
	if got := refresh(0); len(got) != 0 {
		t.Errorf("fresh pulled onto n0: reported %q, want nothing for a new model", got)
	}
	simRequest(t, sims[0], "POST", "/api/copy", `{"source":"fresh","destination":"other"}`)
	want = "other:latest: digest changed on node n0"
	if got := refresh(0); len(got) != 1 || got[0] != want {
		t.Errorf("fresh copied over other on n0: reported %q, want %q", got, want)
	}
}

func TestSyncReportsModelsOfRemovedNode(t *testing.T) {
	sims := []*ollamasim.Running{
		testenv.Sim(t, "m,other", ollamasim.Config{}),
		testenv.Sim(t, "m,solo", ollamasim.Config{}),
	}
	cfg := testenv.Config(t, sims...)
	nodes := nodesOf(t, cfg)
	bal := balancer.New(balancer.SettingsFrom(cfg), nodes, nil)
	c := health.New(cfg, bal, nil, testenv.Logger())
	var reported []string
	c.OnModelChange(func(model, reason string) {
		reported = append(reported, model+": "+reason)
	})
	for i, n := range nodes {
		if err := c.Refresh(context.Background(), n); err != nil {
			t.Fatalf("refresh of node %d: %v", i, err)
		}
	}

	bal.SetNodes(nodes[:1])
	c.Sync(cfg)
	want := "solo:latest: no node lists the model since a reload removed node n1 or changed its url"
	if len(reported) != 1 || reported[0] != want {
		t.Errorf("n1 removed: reported %q, want only %q", reported, want)
	}

	reported = nil
	c.Sync(cfg)
	if len(reported) != 0 {
		t.Errorf("Sync without a change reported %q, want nothing", reported)
	}
}

package app_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// generateAsync sends a generation request and reports its status on the
// returned channel, or 0 when it failed.
func generateAsync(a interface{ URL() string }) <-chan int {
	done := make(chan int, 1)
	go func() {
		resp, err := http.Post(a.URL()+"/api/generate", "application/json",
			strings.NewReader(`{"model":"m","prompt":"hi","stream":false}`))
		if err != nil {
			done <- 0
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	return done
}

func TestReloadKeepsNodeStateOnLimitChange(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	tune := func(maxConcurrent int, weight float64) *config.Config {
		cfg := testenv.Config(t, sim)
		cfg.Nodes[0].MaxConcurrent = maxConcurrent
		cfg.Nodes[0].Weight = weight
		// The hanging node fails its probes too. It must stay up, because
		// marking it down would end the requests that wait on it.
		cfg.Health.UnhealthyThreshold = 1000
		return cfg
	}
	a, _ := startApp(t, tune(1, 1))
	node := a.Balancer().Nodes()[0]
	if err := sim.Server().SetFaults(ollamasim.Faults{Hang: true}); err != nil {
		t.Fatal(err)
	}
	first := generateAsync(a)
	testenv.WaitFor(t, 5*time.Second, "the first request at the node", func() bool {
		return sim.Server().Requests("/api/generate") == 1
	})

	reload(t, a, tune(1, 2))
	if got := a.Balancer().Nodes()[0]; got != node {
		t.Fatal("a weight change replaced the node, dropping its state")
	}
	if got := node.Inflight(); got != 1 {
		t.Errorf("in flight after the reload = %d, want 1", got)
	}
	if got := node.Weight(); got != 2 {
		t.Errorf("weight after the reload = %v, want 2", got)
	}

	// The one slot is still taken, so a second request waits in the queue.
	second := generateAsync(a)
	time.Sleep(300 * time.Millisecond)
	if got := sim.Server().Requests("/api/generate"); got != 1 {
		t.Fatalf("the node received %d requests with max_concurrent 1, want 1", got)
	}

	// A higher limit lets the waiting request go.
	reload(t, a, tune(2, 2))
	testenv.WaitFor(t, 5*time.Second, "the second request at the node", func() bool {
		return sim.Server().Requests("/api/generate") == 2
	})
	if err := sim.Server().SetFaults(ollamasim.Faults{}); err != nil {
		t.Fatal(err)
	}
	for i, done := range []<-chan int{first, second} {
		if status := <-done; status != 200 {
			t.Errorf("request %d: status %d, want 200", i+1, status)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "no request in flight", func() bool { return node.Inflight() == 0 })
}

func TestReloadKeepsDrain(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, sim)
	a, _ := startApp(t, cfg)
	a.Balancer().Nodes()[0].SetDraining(true)

	next := testenv.Config(t, sim)
	next.Nodes[0].Weight = 3
	next.Nodes[0].MaxConcurrent = cfg.Nodes[0].MaxConcurrent + 1
	reload(t, a, next)
	if !a.Balancer().Nodes()[0].Draining() {
		t.Error("a reload that changed the node's limits ended its drain")
	}
}

// generateModel sends a deterministic generation request for model and
// returns its X-LLMProxy-Cache header after reading the body.
func generateModel(t *testing.T, a interface{ URL() string }, model string) string {
	t.Helper()
	body := `{"model":"` + model + `","prompt":"q","stream":false,` +
		`"options":{"temperature":0,"num_predict":2}}`
	resp, err := http.Post(a.URL()+"/api/generate", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("generate %s: %v", model, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("generate %s: status %d", model, resp.StatusCode)
	}
	return resp.Header.Get("X-LLMProxy-Cache")
}

func TestReloadPurgesModelsOfRemovedNode(t *testing.T) {
	remaining := testenv.Sim(t, "m", ollamasim.Config{})
	removed := testenv.Sim(t, "m,solo", ollamasim.Config{})
	added := testenv.Sim(t, "solo", ollamasim.Config{})
	a, logs := startApp(t, testenv.Config(t, remaining, removed))
	for _, model := range []string{"m", "solo"} {
		generateModel(t, a, model)
		if got := generateModel(t, a, model); got != "hit-l1" {
			t.Fatalf("second generate of %s: cache %q, want hit-l1", model, got)
		}
	}

	// n1 leaves, and n2 lists solo from its first probe on, which purges
	// nothing.
	next := testenv.Config(t, remaining, added)
	next.Nodes[1].Name = "n2"
	reload(t, a, next)
	testenv.WaitFor(t, 5*time.Second, "n2 listing solo", func() bool {
		return a.Balancer().HasModel("solo")
	})
	if got := generateModel(t, a, "solo"); got != "miss" {
		t.Errorf("generate of solo after n1 left: cache %q, want miss", got)
	}
	if got := generateModel(t, a, "m"); got != "hit-l1" {
		t.Errorf("generate of m, which n0 still lists: cache %q, want hit-l1", got)
	}

	type record struct{ Msg, Model, Reason string }
	logged := false
	for _, r := range testenv.Records[record](t, logs) {
		if r.Msg == "cache purged" && r.Model == "solo:latest" &&
			r.Reason == "no node lists the model since a reload removed node n1 or changed its url" {
			logged = true
		}
	}
	if !logged {
		t.Errorf("no log line records the purge of solo with n1 as the reason, log:\n%s", logs)
	}
}

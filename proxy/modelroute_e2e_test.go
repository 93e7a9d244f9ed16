package proxy_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// TestUnreachableNodesAre503 starts a proxy whose nodes have never
// responded: one hangs and one refuses connections. A model request must get 503
// "no healthy node", never 404, which makes the ollama CLI pull the model.
func TestUnreachableNodesAre503(t *testing.T) {
	hung := testenv.Sim(t, "llama3.2:1b", ollamasim.Config{})
	closed := testenv.Sim(t, "llama3.2:1b", ollamasim.Config{})
	if err := hung.Server().SetFaults(ollamasim.Faults{Hang: true}); err != nil {
		t.Fatal(err)
	}
	if err := closed.Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	cfg := testenv.Config(t, hung, closed)
	cfg.Health.Timeout = 300 * time.Millisecond
	p := testenv.Proxy(t, cfg)

	c := ollamaClient(t, p.URL(), "", "")
	stream := false
	err := c.Generate(context.Background(), &api.GenerateRequest{
		Model: "llama3.2:1b", Prompt: "hi", Stream: &stream,
	}, func(api.GenerateResponse) error { return nil })
	checkStatusError(t, "generate", err, http.StatusServiceUnavailable)
	_, err = c.Show(context.Background(), &api.ShowRequest{Model: "llama3.2:1b"})
	checkStatusError(t, "show", err, http.StatusServiceUnavailable)

	for _, path := range []string{"/api/generate", "/api/show", "/api/chat", "/api/delete"} {
		body := `{"model":"llama3.2:1b","messages":[{"role":"user","content":"hi"}],"stream":false}`
		req, err := http.NewRequest(http.MethodPost, p.URL()+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if path == "/api/delete" {
			req.Method = http.MethodDelete
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		got := readBody(t, resp)
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("%s: status %d, want 503; body %s", path, resp.StatusCode, got)
		}
		if !strings.Contains(string(got), "no healthy node") {
			t.Errorf("%s: body %s does not say that no healthy node is available", path, got)
		}
		if err := checkOllamaErrorBody(got); err != nil {
			t.Errorf("%s: %v", path, err)
		}
		if resp.Header.Get("Retry-After") == "" {
			t.Errorf("%s: no Retry-After header", path)
		}
	}

	_, err = openAIChat(openAIWithKey(p.URL(), ""), "llama3.2:1b")
	if err := checkOpenAIError(err, http.StatusServiceUnavailable, "api_error"); err != nil {
		t.Error(err)
	}

	// Once every node's list is known, a model that no node has is 404.
	for _, s := range []*ollamasim.Running{hung, closed} {
		if err := s.Server().SetFaults(ollamasim.Faults{}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "every node usable with its model list", func() bool {
		for _, n := range p.Balancer().Nodes() {
			if !n.Usable() || n.Refreshed().IsZero() {
				return false
			}
		}
		return true
	})
	_, err = c.Show(context.Background(), &api.ShowRequest{Model: "missing"})
	checkStatusError(t, "show missing", err, http.StatusNotFound)
	if _, err := c.Show(context.Background(), &api.ShowRequest{Model: "llama3.2:1b"}); err != nil {
		t.Errorf("show after the nodes recovered: %v", err)
	}
}

func checkStatusError(t *testing.T, label string, err error, status int) {
	t.Helper()
	var se api.StatusError
	if !errors.As(err, &se) {
		t.Errorf("%s: error %v (%T), want api.StatusError %d", label, err, err, status)
		return
	}
	if se.StatusCode != status {
		t.Errorf("%s: status %d (%q), want %d", label, se.StatusCode, se.ErrorMessage, status)
	}
}

// TestModelNamesIgnoreCase sends model names in another case than the
// node lists them, which Ollama serves as the same model.
func TestModelNamesIgnoreCase(t *testing.T) {
	sims := []*ollamasim.Running{
		testenv.Sim(t, "llama3.2:1b", ollamasim.Config{}),
		testenv.Sim(t, "llama3.2:1b", ollamasim.Config{}),
	}
	cfg := testenv.Config(t, sims...)
	allowed := limitKey("allowed")
	allowed.AllowedModels = []string{"llama3.2:1b"}
	other := limitKey("other")
	other.AllowedModels = []string{"qwen2.5:0.5b"}
	cfg.Auth.Keys = []config.Key{allowed, other}
	p := testenv.Proxy(t, cfg)

	// The model is loaded on n1 only, so placement must send every
	// spelling there.
	readBody(t, post(t, sims[1].URL()+"/api/generate", `{"model":"llama3.2:1b"}`))
	testenv.WaitFor(t, 5*time.Second, "the model loaded on n1", func() bool {
		return len(p.Balancer().Holding("llama3.2:1b")) == 1
	})

	show := post(t, p.URL()+"/api/show", `{"model":"Llama3.2:1b"}`)
	if body := readBody(t, show); show.StatusCode != http.StatusOK {
		t.Errorf("show Llama3.2:1b: status %d, body %s", show.StatusCode, body)
	}

	const generate = `{"model":"LLAMA3.2:1B","prompt":"hi","stream":false,"options":{"temperature":0}}`
	resp := post(t, p.URL()+"/api/generate", generate)
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("generate LLAMA3.2:1B: status %d, body %s", resp.StatusCode, body)
	}
	if node := resp.Header.Get("X-LLMProxy-Node"); node != "n1" {
		t.Errorf("generate went to %q, want n1 where the model is loaded", node)
	}
	last, ok := sims[1].Server().LastRequest("/api/generate")
	if !ok {
		t.Fatal("n1 received no generate")
	}
	var sent struct{ Model string }
	if err := json.Unmarshal(last.Body, &sent); err != nil {
		t.Fatal(err)
	}
	if sent.Model != "LLAMA3.2:1B" {
		t.Errorf("the node received model %q, want the client's LLAMA3.2:1B", sent.Model)
	}

	// The same request in another case is the same cache entry.
	again := post(t, p.URL()+"/api/generate", strings.Replace(generate, "LLAMA3.2:1B", "llama3.2:1b", 1))
	readBody(t, again)
	if got := cacheHeader(again); got != "hit-l1" {
		t.Errorf("cache result %q for the lower-case name, want hit-l1", got)
	}

	m := p.Metrics()
	if got := testutil.ToFloat64(m.Requests.WithLabelValues("/api/generate", "llama3.2:1b", "n1", "200")); got != 1 {
		t.Errorf("requests{model=llama3.2:1b,node=n1} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.Requests.WithLabelValues("/api/generate", "other", "n1", "200")); got != 0 {
		t.Errorf("requests{model=other,node=n1} = %v, want 0", got)
	}

	chat := `{"model":"LLAMA3.2:1B","messages":[{"role":"user","content":"hi"}],"stream":false}`
	resp = post(t, p.URL()+"/api/chat", chat, bearer("allowed")...)
	if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
		t.Errorf("key allowed llama3.2:1b, model LLAMA3.2:1B: status %d, body %s",
			resp.StatusCode, body)
	}
	for _, model := range []string{"LLAMA3.2:1B", "Llama3.2:1b"} {
		body := strings.Replace(chat, "LLAMA3.2:1B", model, 1)
		resp = post(t, p.URL()+"/api/chat", body, bearer("other")...)
		if got := readBody(t, resp); resp.StatusCode != http.StatusForbidden {
			t.Errorf("key without llama3.2:1b, model %s: status %d, want 403; body %s",
				model, resp.StatusCode, got)
		}
	}
}

// TestColdTimeoutRetriesOnWarmNode puts a node that takes 10 s to send a
// response head, with the model not loaded, beside a node that has it
// loaded. A request that reaches the slow node first must fail over to
// the loaded node when the first-byte timeout ends.
func TestColdTimeoutRetriesOnWarmNode(t *testing.T) {
	slow := testenv.Sim(t, "m", ollamasim.Config{})
	good := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, slow, good)
	cfg.Nodes[0].Name, cfg.Nodes[1].Name = "delay", "good"
	cfg.Balancer.Policy = config.PolicyRoundRobin
	cfg.Upstream.FirstByte = time.Second
	// Keep the slow node in rotation after its timeouts.
	cfg.Health.MaxFails = 0
	cfg.Breaker.ConsecutiveFailures = 1000
	cfg.Breaker.MinRequests = 1000
	p := testenv.Proxy(t, cfg)

	readBody(t, post(t, good.URL()+"/api/generate", `{"model":"m"}`))
	testenv.WaitFor(t, 5*time.Second, "m loaded on good", func() bool {
		return len(p.Balancer().Holding("m:latest")) == 1
	})
	if err := slow.Server().SetFaults(ollamasim.Faults{FirstByteDelay: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}

	// Round robin sends one of two requests in a row to the slow node
	// first.
	for i := 0; i < 2; i++ {
		resp := post(t, p.URL()+"/api/generate", `{"model":"m","prompt":"hi","stream":false}`)
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("request %d: status %d, want 200; body %s", i, resp.StatusCode, body)
		}
		if node := resp.Header.Get("X-LLMProxy-Node"); node != "good" {
			t.Errorf("request %d served by %q, want good", i, node)
		}
	}
	retries := testutil.ToFloat64(p.Metrics().Retries.WithLabelValues("delay", "timeout"))
	if retries < 1 {
		t.Errorf("retries{node=delay,reason=timeout} = %v, want at least 1", retries)
	}
}

// TestRefusingNodeIs503WithoutAddress has the only node of a model refuse
// connections before the health checks notice. The client gets the 503
// and Retry-After that it gets once they have, in its API's shape, and
// the error names the node but not its address.
func TestRefusingNodeIs503WithoutAddress(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, sim)
	cfg.Health.Interval = time.Hour
	cfg.Discovery.Interval = time.Hour
	p := testenv.Proxy(t, cfg)
	testenv.WaitFor(t, 5*time.Second, "the model list fetched", func() bool {
		return p.Balancer().Nodes()[0].ModelsListed()
	})
	if err := sim.Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(sim.URL(), "http://")
	for _, path := range []string{"/api/generate", "/v1/chat/completions"} {
		body := `{"model":"m","prompt":"hi","messages":[{"role":"user","content":"hi"}],"stream":false}`
		resp := post(t, p.URL()+path, body)
		var msg string
		if path == "/api/generate" {
			msg = ollamaErrorMessage(t, resp, http.StatusServiceUnavailable)
		} else {
			msg = openAIErrorMessage(t, resp, http.StatusServiceUnavailable)
		}
		if got := resp.Header.Get("Retry-After"); got != "5" {
			t.Errorf("%s: Retry-After %q, want 5", path, got)
		}
		if !strings.Contains(msg, "connection refused") || !strings.Contains(msg, "node n0") {
			t.Errorf("%s: error %q, want the node's name and the cause", path, msg)
		}
		if strings.Contains(msg, host) || strings.Contains(msg, "127.0.0.1") {
			t.Errorf("%s: error %q names an address", path, msg)
		}
	}
}

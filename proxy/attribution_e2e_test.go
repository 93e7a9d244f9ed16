package proxy_test

import (
	"bytes"
	"io"
	"log/slog"
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

// failureCount returns llmproxy_node_failures_total of node and reason.
func failureCount(p *app.App, node, reason string) float64 {
	return testutil.ToFloat64(p.Metrics().NodeFailures.WithLabelValues(node, reason))
}

// uncounted returns llmproxy_uncounted_node_errors_total of reason, summed
// over the proxy's nodes.
func uncounted(p *app.App, reason string) float64 {
	total := 0.0
	for _, n := range p.Balancer().Nodes() {
		total += testutil.ToFloat64(p.Metrics().UncountedErrors.WithLabelValues(n.Name, reason))
	}
	return total
}

// unusable returns the names of the proxy's nodes that may not take requests.
func unusable(p *app.App) []string {
	var out []string
	for _, n := range p.Balancer().Nodes() {
		if !n.Usable() {
			out = append(out, n.Name)
		}
	}
	return out
}

// TestSlowNonStreamedResponseKeepsNodes sends non-streamed chat completions
// whose generation takes longer than upstream.first_byte to two nodes that
// have the model loaded. Ollama sends such a response's head only when
// generation ends, so each request gets 504 from the node it reached,
// without a second generation on the other node, and neither node counts a
// failure.
func TestSlowNonStreamedResponseKeepsNodes(t *testing.T) {
	// 40 tokens at 10 a second: every generation takes about 4 s, and a
	// stream's first line comes after about 100 ms.
	simCfg := ollamasim.Config{TokensPerSec: 10, MinTokens: 40, MaxTokens: 40}
	sims := []*ollamasim.Running{testenv.Sim(t, "m", simCfg), testenv.Sim(t, "m", simCfg)}
	cfg := testenv.Config(t, sims...)
	cfg.Upstream.FirstByte = time.Second
	cfg.Health.Timeout = 5 * time.Second
	cfg.Health.MaxFails = 3
	p := testenv.Proxy(t, cfg)
	for _, s := range sims {
		readBody(t, post(t, s.URL()+"/api/generate", `{"model":"m"}`))
	}
	testenv.WaitFor(t, 5*time.Second, "m loaded on both nodes", func() bool {
		return len(p.Balancer().Holding("m:latest")) == 2
	})

	// As many requests at once as max_fails.
	const n = 3
	var wg sync.WaitGroup
	statuses := make([]int, n)
	bodies := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := post(t, p.URL()+"/v1/chat/completions",
				`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
			statuses[i], bodies[i] = resp.StatusCode, string(readBody(t, resp))
		}()
	}
	wg.Wait()
	for i := range n {
		if statuses[i] != http.StatusGatewayTimeout {
			t.Errorf("request %d: status %d, want 504; body %s", i, statuses[i], bodies[i])
		}
		if !strings.Contains(bodies[i], "first-byte timeout") {
			t.Errorf("request %d: body %s does not name the first-byte timeout", i, bodies[i])
		}
	}
	var chats int64
	for _, s := range sims {
		chats += s.Server().Requests("/v1/chat/completions")
	}
	if chats != n {
		t.Errorf("the nodes received %d chat completions for %d requests, want no second generation",
			chats, n)
	}
	for _, node := range []string{"n0", "n1"} {
		if got := failureCount(p, node, "timeout"); got != 0 {
			t.Errorf("%v timeouts counted against %s", got, node)
		}
	}
	if got := uncounted(p, "slow_response"); got != n {
		t.Errorf("uncounted slow responses = %v, want %d", got, n)
	}
	if out := unusable(p); len(out) != 0 {
		t.Fatalf("nodes %v taken out by slow non-streamed responses", out)
	}

	// The model stays listed and a stream is served.
	models := string(readBody(t, getURL(t, p.URL()+"/v1/models")))
	if !strings.Contains(models, `"m:latest"`) {
		t.Errorf("/v1/models lacks m:latest: %s", models)
	}
	resp := post(t, p.URL()+"/api/chat", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"done":true`)) {
		t.Errorf("stream after the timeouts: status %d, body %s", resp.StatusCode, body)
	}
}

// TestHungNodeLosesNoRequest hangs one of three nodes while active probes
// are too rare to notice it. A non-streamed request that reaches it times
// out, and, as the node fails the probe that follows, goes to another node,
// although no other node has the model loaded.
func TestHungNodeLosesNoRequest(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{}, func(c *config.Config) {
		c.Health.Interval = time.Hour
		c.Health.Timeout = 500 * time.Millisecond
		c.Upstream.FirstByte = time.Second
		c.Balancer.Policy = config.PolicyRoundRobin
	})
	hung := tr.sims[1].Server()
	if err := hung.SetFaults(ollamasim.Faults{Hang: true}); err != nil {
		t.Fatal(err)
	}
	codes := generateMany(t, tr.proxy.URL(), 9, 1)
	if codes[200] != 9 {
		t.Fatalf("status codes %v, want 9 × 200", codes)
	}
	if hung.Requests("/api/generate") == 0 {
		t.Fatal("no request reached the hung node")
	}
	if got := failureCount(tr.proxy, "n1", "timeout"); got == 0 {
		t.Error("no timeout counted against the hung node")
	}
}

// errorNode starts a node that lists model "m" and responds to a request
// whose body contains "BAD" with status 500 and errBody. It serves any
// other request with a short non-streamed response, as Ollama would.
func errorNode(t *testing.T, errBody string) string {
	t.Helper()
	return scriptedNode(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		if bytes.Contains(body, []byte("BAD")) {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, errBody)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/v1/") {
			_, _ = io.WriteString(w, `{"id":"chatcmpl-1","object":"chat.completion","created":1,`+
				`"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},`+
				`"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`)
			return
		}
		_, _ = io.WriteString(w, `{"model":"m","created_at":"2026-01-01T00:00:00Z","response":"ok",`+
			`"done":true,"done_reason":"stop"}`)
	})
}

// errorProxy starts a proxy in front of nodes at urls with the default
// passive check and breaker settings.
func errorProxy(t *testing.T, urls ...string) *app.App {
	t.Helper()
	cfg := testenv.Config(t)
	cfg.Nodes = nil
	for i, u := range urls {
		nc := config.DefaultNode(u)
		nc.Name = "n" + string(rune('0'+i))
		cfg.Nodes = append(cfg.Nodes, nc)
	}
	return testenv.Proxy(t, cfg)
}

// TestRequestErrorCountsAgainstNoNode sends requests that every node
// rejects with the same Ollama error and status 500, more of them than
// max_fails and breaker.consecutive_failures. The client gets the error,
// no node counts a failure, and a valid request is served afterwards.
func TestRequestErrorCountsAgainstNoNode(t *testing.T) {
	template := `{"error":"template: :1:12: executing \"\" at <.Foo>: can't evaluate field Foo"}`
	cases := []struct {
		name   string
		path   string
		bad    string
		good   string
		errors []string
		want   string
	}{
		{
			name:   "template error",
			path:   "/api/generate",
			bad:    `{"model":"m","prompt":"hi","stream":false,"template":"{{.Foo}} BAD"}`,
			good:   `{"model":"m","prompt":"hi","stream":false}`,
			errors: []string{template, template},
			want:   template,
		},
		{
			name: "memory figures differ",
			path: "/api/generate",
			bad:  `{"model":"m","prompt":"BAD","stream":false,"options":{"num_ctx":131072}}`,
			good: `{"model":"m","prompt":"hi","stream":false}`,
			errors: []string{
				`{"error":"model requires more system memory (41.2 GiB) than is available (30.1 GiB)"}`,
				`{"error":"model requires more system memory (41.2 GiB) than is available (12.6 GiB)"}`,
			},
			want: "model requires more system memory",
		},
		{
			name: "OpenAI route",
			path: "/v1/chat/completions",
			bad:  `{"model":"m","messages":[{"role":"user","content":"BAD"}]}`,
			good: `{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
			errors: []string{
				`{"error":{"message":"unexpected EOF","type":"api_error","param":null,"code":null}}`,
				`{"error":{"message":"unexpected EOF","type":"api_error","param":null,"code":null}}`,
			},
			want: `"message":"unexpected EOF"`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := errorProxy(t, errorNode(t, tc.errors[0]), errorNode(t, tc.errors[1]))
			for i := range 6 {
				resp := post(t, p.URL()+tc.path, tc.bad)
				body := string(readBody(t, resp))
				if resp.StatusCode != http.StatusInternalServerError {
					t.Fatalf("bad request %d: status %d, want 500; body %s", i, resp.StatusCode, body)
				}
				if !strings.Contains(body, tc.want) {
					t.Errorf("bad request %d: body %s, want the node's error %s", i, body, tc.want)
				}
			}
			for _, node := range []string{"n0", "n1"} {
				if got := failureCount(p, node, "status_5xx"); got != 0 {
					t.Errorf("%v failures counted against %s for errors of the request", got, node)
				}
			}
			if got := uncounted(p, "request_error"); got != 12 {
				t.Errorf("uncounted request errors = %v, want 12, one per node and request", got)
			}
			if out := unusable(p); len(out) != 0 {
				t.Errorf("nodes %v taken out by errors of the request", out)
			}
			resp := post(t, p.URL()+tc.path, tc.good)
			if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
				t.Errorf("valid request: status %d, want 200; body %s", resp.StatusCode, body)
			}
		})
	}
}

// TestSingleNodeKeepsServingAfterErrors sends a lone node more requests
// that fail with an Ollama error than breaker.consecutive_failures. No
// other node can confirm or refute that the node is at fault, so the
// errors count against no node, and a valid request is served.
func TestSingleNodeKeepsServingAfterErrors(t *testing.T) {
	p := errorProxy(t, errorNode(t, `{"error":"llama runner process has terminated: exit status 2"}`))
	for i := range 6 {
		resp := post(t, p.URL()+"/api/generate", `{"model":"m","prompt":"BAD","stream":false}`)
		if body := readBody(t, resp); resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("bad request %d: status %d, want 500; body %s", i, resp.StatusCode, body)
		}
	}
	resp := post(t, p.URL()+"/api/generate", `{"model":"m","prompt":"hi","stream":false}`)
	if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
		t.Errorf("valid request: status %d, want 200; body %s", resp.StatusCode, body)
	}
	if got := uncounted(p, "unconfirmed_5xx"); got != 6 {
		t.Errorf("uncounted unconfirmed errors = %v, want 6", got)
	}
	if out := unusable(p); len(out) != 0 {
		t.Errorf("nodes %v unusable", out)
	}
}

// TestLastNodeStaysInRotation sends a lone node requests that fail with
// 502, which counts against the node, more of them than max_fails and
// breaker.consecutive_failures. Neither passive checks nor the breaker
// take out the last usable node, so a valid request still reaches it.
func TestLastNodeStaysInRotation(t *testing.T) {
	url := scriptedNode(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if bytes.Contains(body, []byte("BAD")) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, "<html>502 Bad Gateway</html>")
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_, _ = io.WriteString(w, `{"model":"m","response":"ok","done":true}`)
	})
	p := errorProxy(t, url)
	for i := range 6 {
		resp := post(t, p.URL()+"/api/generate", `{"model":"m","prompt":"BAD","stream":false}`)
		if body := readBody(t, resp); resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("bad request %d: status %d, want 502; body %s", i, resp.StatusCode, body)
		}
	}
	if got := failureCount(p, "n0", "status_5xx"); got != 6 {
		t.Errorf("%v failures counted against n0, want 6", got)
	}
	resp := post(t, p.URL()+"/api/generate", `{"model":"m","prompt":"hi","stream":false}`)
	if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
		t.Errorf("valid request: status %d, want 200; body %s", resp.StatusCode, body)
	}
	m := p.Metrics()
	for _, check := range []string{"passive", "breaker"} {
		if got := testutil.ToFloat64(m.EjectionsSkipped.WithLabelValues("n0", check)); got == 0 {
			t.Errorf("no skipped %s ejection counted", check)
		}
	}
}

// TestEjectionCapKeepsHalfTheFleet makes two of three nodes fail every
// request with an error that the third node's success shows to be theirs.
// Passive checks and breakers may keep only one node out at once under the
// default max_ejection_percent of 50.
func TestEjectionCapKeepsHalfTheFleet(t *testing.T) {
	var sims []*ollamasim.Running
	for i := range 3 {
		sim := testenv.Sim(t, "m", ollamasim.Config{})
		if i < 2 {
			faults := ollamasim.Faults{ErrorRate: 1, ErrorMessage: "CUDA error " + string(rune('a'+i))}
			if err := sim.Server().SetFaults(faults); err != nil {
				t.Fatal(err)
			}
		}
		sims = append(sims, sim)
	}
	p, logs := testenv.JSONProxy(t, testenv.Config(t, sims...), slog.LevelInfo)

	codes := generateMany(t, p.URL(), 30, 1)
	if codes[200] != 30 {
		t.Fatalf("status codes %v, want 30 × 200", codes)
	}
	out := unusable(p)
	if len(out) != 1 {
		t.Fatalf("unusable nodes %v, want one of n0 and n1", out)
	}
	if out[0] == "n2" {
		t.Fatal("the node that served every request was taken out")
	}

	// The other failing node stays in, with its failures counted.
	heldNode := "n0"
	if out[0] == "n0" {
		heldNode = "n1"
	}
	if got := failureCount(p, heldNode, "status_5xx"); got < 3 {
		t.Errorf("%v failures counted against %s, want at least max_fails", got, heldNode)
	}
	m := p.Metrics()
	if got := testutil.ToFloat64(m.EjectionsSkipped.WithLabelValues(heldNode, "passive")); got == 0 {
		t.Errorf("no skipped passive ejection counted for %s", heldNode)
	}

	type record struct {
		Msg, Node, Check string
	}
	logged := false
	for _, rec := range testenv.Records[record](t, logs) {
		if strings.HasPrefix(rec.Msg, "node kept in despite failures") && rec.Node == heldNode {
			logged = true
		}
	}
	if !logged {
		t.Errorf("no log of %s kept in by the ejection cap", heldNode)
	}
}

func getURL(t *testing.T, url string) *http.Response {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp
}

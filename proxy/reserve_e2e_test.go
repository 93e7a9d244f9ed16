package proxy_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// sendAs sends body to route, a method and path such as "POST /api/pull",
// with the key named key, and returns the status and the whole body.
func sendAs(t *testing.T, baseURL, route, key, body string) (int, []byte) {
	t.Helper()
	method, path, _ := strings.Cut(route, " ")
	req, err := http.NewRequest(method, baseURL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+secretOf(key))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", route, err)
	}
	return resp.StatusCode, readBody(t, resp)
}

// waitSettled waits until the key named key has no request in flight, so
// that every request it sent has been settled.
func waitSettled(t *testing.T, p *app.App, key string) {
	t.Helper()
	testenv.WaitFor(t, 5*time.Second, "the requests of "+key+" settled", func() bool {
		return keyUsage(t, p, key).InFlight == 0
	})
}

// TestManagementUsesNoTokens runs the routes that run no model, streamed
// and not, with a key that has token limits. None of them may use tokens
// or count towards monthly_requests.
func TestManagementUsesNoTokens(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, sim)
	gamma := limitKey("gamma")
	gamma.MonthlyTokens = 1_000_000
	gamma.TokensPerMinute = 100_000
	cfg.Auth.Keys = []config.Key{gamma}
	p := testenv.Proxy(t, cfg)
	testenv.WaitFor(t, 5*time.Second, "the node's model list", func() bool {
		return p.Balancer().HasModel("m:latest")
	})

	cases := []struct{ route, body string }{
		{"POST /api/create", `{"model":"gammamodel","from":"m"}`},
		{"POST /api/create", `{"model":"gammamodel2","from":"m","stream":false}`},
		{"POST /api/pull", `{"model":"m"}`},
		{"POST /api/pull", `{"model":"m","stream":false}`},
		{"POST /api/push", `{"model":"m"}`},
		{"POST /api/show", `{"model":"m"}`},
		{"POST /api/copy", `{"source":"m","destination":"m-copy"}`},
		{"DELETE /api/delete", `{"model":"m-copy"}`},
	}
	for _, tc := range cases {
		status, body := sendAs(t, p.URL(), tc.route, "gamma", tc.body)
		if status != http.StatusOK {
			t.Fatalf("%s %s: status %d, body %s", tc.route, tc.body, status, body)
		}
		waitSettled(t, p, "gamma")
		u := keyUsage(t, p, "gamma")
		if u.MonthlyTokens != 0 {
			t.Errorf("after %s %s: monthly tokens %d, want 0", tc.route, tc.body, u.MonthlyTokens)
		}
		if u.MonthlyRequests != 0 {
			t.Errorf("after %s %s: monthly requests %d, want 0", tc.route, tc.body, u.MonthlyRequests)
		}
	}
	if n := testutil.CollectAndCount(p.Metrics().Tokens); n != 0 {
		t.Errorf("llmproxy_tokens_total has %d series, want none", n)
	}
}

// TestReservationPerRoute holds each request on a node and reads the
// tokens that the key has reserved for it: the output limit of the route's
// own field, or for embeddings an estimate of the input.
func TestReservationPerRoute(t *testing.T) {
	release := make(chan struct{})
	node := scriptedNode(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		<-release
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{}`)
	})
	cfg := testenv.Config(t)
	nc := config.DefaultNode(node)
	nc.Name = "n0"
	cfg.Nodes = append(cfg.Nodes, nc)
	cfg.Cache.Enabled = new(bool)
	cfg.Auth.Keys = []config.Key{limitKey("res")}
	p := testenv.Proxy(t, cfg)
	testenv.WaitFor(t, 5*time.Second, "the node's model list", func() bool {
		return p.Balancer().HasModel("m:latest")
	})

	cases := []struct {
		name, path, body string
		want             int64
	}{
		{"responses max_output_tokens", "/v1/responses",
			`{"model":"m","input":"hi","max_output_tokens":7}`, 7},
		{"messages max_tokens", "/v1/messages",
			`{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`, 8},
		{"completions max_tokens", "/v1/completions", `{"model":"m","prompt":"hi","max_tokens":9}`, 9},
		{"chat max_tokens", "/v1/chat/completions",
			`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":10}`, 10},
		{"chat max_completion_tokens", "/v1/chat/completions",
			`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":11}`, 11},
		{"ollama num_predict", "/api/generate",
			`{"model":"m","prompt":"hi","options":{"num_predict":12}}`, 12},
		{"ollama without a limit", "/api/generate", `{"model":"m","prompt":"hi"}`, 512},
		{"embed one short input", "/api/embed", `{"model":"m","input":"one"}`, 1},
		{"embed a batch", "/api/embed",
			`{"model":"m","input":["thirty-two bytes of input text..","x"]}`, 9},
		{"openai embeddings of token ids", "/v1/embeddings", `{"model":"m","input":[[1,2,3],[4]]}`, 4},
		{"legacy embeddings", "/api/embeddings", `{"model":"m","prompt":"twelve bytes"}`, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := keyUsage(t, p, "res").MonthlyTokens
			done := make(chan int, 1)
			go func() {
				resp, err := http.DefaultClient.Do(newPost(p.URL()+tc.path, tc.body, bearer("res")...))
				if err != nil {
					done <- 0
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				done <- resp.StatusCode
			}()
			testenv.WaitFor(t, 5*time.Second, "the request admitted", func() bool {
				return keyUsage(t, p, "res").InFlight == 1
			})
			reserved := keyUsage(t, p, "res").MonthlyTokens - before
			release <- struct{}{}
			if status := <-done; status != http.StatusOK {
				t.Fatalf("status %d, want 200", status)
			}
			if reserved != tc.want {
				t.Errorf("reserved %d tokens, want %d", reserved, tc.want)
			}
			waitSettled(t, p, "res")
		})
	}
}

// TestEmbedWithinTokenRate sends one-token embeddings with a key whose
// tokens_per_minute is far below default_token_estimate. Each reserves
// its input, so none is rejected.
func TestEmbedWithinTokenRate(t *testing.T) {
	sim := testenv.Sim(t, "embed-e", ollamasim.Config{})
	cfg := testenv.Config(t, sim)
	cfg.Cache.Enabled = new(bool)
	key := limitKey("embedder")
	key.TokensPerMinute = 100
	cfg.Auth.Keys = []config.Key{key}
	p := testenv.Proxy(t, cfg)

	for i, path := range []string{"/api/embed", "/api/embed", "/v1/embeddings", "/api/embeddings"} {
		body := `{"model":"embed-e","input":"hi"}`
		if path == "/api/embeddings" {
			body = `{"model":"embed-e","prompt":"hi"}`
		}
		status, got := sendAs(t, p.URL(), "POST "+path, "embedder", body)
		if status != http.StatusOK {
			t.Fatalf("embedding %d on %s: status %d, body %s", i+1, path, status, got)
		}
		waitSettled(t, p, "embedder")
	}
}

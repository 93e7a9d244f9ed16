package ollamasim_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/ollamasim"
)

func TestOriginAndHostChecks(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	tests := []struct {
		name   string
		header string
		value  string
		status int
	}{
		{"no origin", "", "", http.StatusOK},
		{"local origin", "Origin", "http://localhost:3000", http.StatusOK},
		{"app origin", "Origin", "app://desktop", http.StatusOK},
		{"foreign origin", "Origin", "https://evil.example", http.StatusForbidden},
		{"localhost host", "Host", "localhost:11434", http.StatusOK},
		{"local domain host", "Host", "gpu1.local", http.StatusOK},
		{"private address host", "Host", "10.0.0.5:11434", http.StatusOK},
		{"foreign host", "Host", "proxy.example.com", http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, n.URL()+"/api/tags", nil)
			if err != nil {
				t.Fatal(err)
			}
			switch tt.header {
			case "Host":
				req.Host = tt.value
			case "Origin":
				req.Header.Set("Origin", tt.value)
			}
			resp, err := n.http.Do(req)
			if err != nil {
				t.Fatalf("GET: %v", err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.status == http.StatusForbidden && len(body) != 0 {
				t.Errorf("403 body = %q, want empty", body)
			}
		})
	}
}

func TestLastRequestKeepsBodyAndHost(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	body := "{ \"model\" : \"llama3:8b\",\n \"prompt\":\"caf\u00e9\", \"stream\":false }"
	req, err := http.NewRequest(http.MethodPost, n.URL()+"/api/generate?trace=1", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "localhost:11434"
	req.Header.Set("X-Request-Id", "abc")
	resp, err := n.http.Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	got, ok := n.srv.LastRequest("/api/generate")
	if !ok {
		t.Fatal("LastRequest found nothing")
	}
	if !bytes.Equal(got.Body, []byte(body)) {
		t.Errorf("recorded body %q, want %q", got.Body, body)
	}
	if got.Host != "localhost:11434" || got.Method != http.MethodPost {
		t.Errorf("recorded host %q, method %q", got.Host, got.Method)
	}
	if got.RequestURI != "/api/generate?trace=1" || got.Header.Get("X-Request-Id") != "abc" {
		t.Errorf("recorded URI %q, headers %v", got.RequestURI, got.Header)
	}
	if _, ok := n.srv.LastRequest("/api/chat"); ok {
		t.Error("LastRequest of a route never called found a request")
	}
}

func TestRequestCounters(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	n.get(t, "/api/tags")
	n.get(t, "/api/tags")
	n.post(t, "/api/generate", `{"model":"llama3","prompt":"hi","stream":false}`)
	n.post(t, "/api/embed", `{"model":"LLAMA3:8B","input":"hi"}`)
	n.get(t, "/no/such/route")
	n.get(t, "/v1/models/llama3:8b")

	if got := n.srv.Requests("/api/tags"); got != 2 {
		t.Errorf("Requests(/api/tags) = %d, want 2", got)
	}
	if got := n.srv.Requests(ollamasim.RouteUnmatched); got != 1 {
		t.Errorf("Requests(unmatched) = %d, want 1", got)
	}
	if got := n.srv.Requests("/v1/models/{model}"); got != 1 {
		t.Errorf("Requests(/v1/models/{model}) = %d, want 1", got)
	}
	if got := n.srv.ModelRequests("llama3:latest"); got != 1 {
		t.Errorf("ModelRequests(llama3:latest) = %d, want 1 (the missing model)", got)
	}
	if got := n.srv.ModelRequests("llama3:8b"); got != 1 {
		t.Errorf("ModelRequests(llama3:8b) = %d, want 1", got)
	}
}

func TestUnknownRoutes(t *testing.T) {
	n := startNode(t, ollamasim.Config{})

	status, body := n.get(t, "/api/nothing")
	if status != http.StatusNotFound || string(body) != "404 page not found" {
		t.Errorf("unknown path: status %d, body %q", status, body)
	}
	status, body = n.get(t, "/api/generate")
	if status != http.StatusMethodNotAllowed || string(body) != "405 method not allowed" {
		t.Errorf("wrong method: status %d, body %q", status, body)
	}
}

func TestRequestErrors(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	tests := []struct {
		name   string
		path   string
		body   string
		status int
		want   string
	}{
		{"missing body", "/api/generate", "", 400, `{"error":"missing request body"}`},
		{"missing model", "/api/chat", `{"messages":[]}`, 400, `{"error":"model is required"}`},
		{"missing model on generate", "/api/generate", `{"prompt":"hi"}`, 404,
			`{"error":"model '' not found"}`},
		{"missing model on v1 completions", "/v1/completions", `{"prompt":"hi"}`, 404,
			`{"error":{"message":"model '' not found","type":"not_found_error","param":null,"code":null}}` + "\n"},
		{"unknown model", "/api/chat", `{"model":"x"}`, 404, `{"error":"model 'x' not found"}`},
		{"unknown model on generate", "/api/generate", `{"model":"x","prompt":"hi"}`, 404,
			`{"error":"model 'x' not found"}`},
		{"unknown model on embed", "/api/embed", `{"model":"x","input":"hi"}`, 404,
			`{"error":"model \"x\" not found, try pulling it first"}`},
		{"unknown model on embeddings", "/api/embeddings", `{"model":"x","prompt":"hi"}`, 404,
			`{"error":"model \"x\" not found, try pulling it first"}`},
		{"v1 unknown model", "/v1/chat/completions", `{"model":"x","messages":[{"role":"user","content":"hi"}]}`,
			404, `{"error":{"message":"model 'x' not found","type":"not_found_error","param":null,"code":null}}` +
				"\n"},
		{"v1 embeddings unknown model", "/v1/embeddings", `{"model":"x","input":"hi"}`, 404,
			`{"error":{"message":"model \"x\" not found, try pulling it first",` +
				`"type":"not_found_error","param":null,"code":null}}` + "\n"},
		{"responses unknown model", "/v1/responses", `{"model":"x","input":"hi"}`, 404,
			`{"error":{"message":"model 'x' not found","type":"not_found_error","param":null,"code":null}}` +
				"\n"},
		{"responses bad json", "/v1/responses", `{bad}`, 400,
			`{"error":{"message":"invalid character 'b' looking for beginning of object key string",` +
				`"type":"invalid_request_error","param":null,"code":null}}`},
		{"embedding model", "/api/generate", `{"model":"nomic-embed-text","prompt":"hi"}`, 400,
			`{"error":"\"nomic-embed-text\" does not support generate"}`},
		{"bad keep_alive", "/api/generate", `{"model":"llama3:8b","keep_alive":"soon"}`, 400,
			`{"error":"time: invalid duration \"soon\""}`},
		{"bad option", "/api/generate", `{"model":"llama3:8b","prompt":"hi","options":{"seed":"x"}}`, 400, ""},
		{"bad embed input", "/api/embed", `{"model":"llama3:8b","input":[1,2]}`, 400,
			`{"error":"invalid input type"}`},
		{"v1 bad json", "/v1/chat/completions", `{`, 400, ""},
		{"v1 no messages", "/v1/chat/completions", `{"model":"llama3:8b","messages":[]}`, 400, ""},
		{"show missing", "/api/show", `{"model":"x"}`, 404, `{"error":"model 'x' not found"}`},
		{"create without source", "/api/create", `{"model":"x"}`, 400,
			`{"error":"neither 'from' or 'files' was specified"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := n.post(t, tt.path, tt.body)
			if status != tt.status {
				t.Errorf("status = %d, want %d; body %s", status, tt.status, body)
			}
			if tt.want != "" && string(body) != tt.want {
				t.Errorf("body = %s, want %s", body, tt.want)
			}
		})
	}
}

func TestServerAsHandler(t *testing.T) {
	srv := ollamasim.New(ollamasim.Config{Models: defaultModels})
	ts := httptest.NewServer(srv)
	defer ts.Close()
	defer srv.Close()
	client := ts.Client()
	defer client.CloseIdleConnections()

	resp, err := client.Post(ts.URL+"/api/generate", "application/json",
		strings.NewReader(`{"model":"llama3:8b","prompt":"hi","stream":false}`))
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status = %d, want 200", resp.StatusCode)
	}
}

func TestStartTwiceFails(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	if r, err := n.srv.Start("127.0.0.1:0"); err == nil {
		r.Close()
		t.Error("second Start succeeded")
	}
}

func TestCloseEndsWaitingRequests(t *testing.T) {
	cfg := longAnswers
	cfg.Parallel = 1
	n := startNode(t, cfg)
	n.launch(t, "/api/generate", longGenerate)
	n.waitFor(t, "one running", func(s ollamasim.Stats) bool { return s.Active == 1 })
	_, queued := n.launch(t, "/api/generate", longGenerate)
	n.waitFor(t, "one waiting", func(s ollamasim.Stats) bool { return s.Waiting == 1 })

	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if r := await(t, queued); r.err == nil && r.status == http.StatusOK {
		t.Errorf("queued request succeeded after Close: %s", r.body)
	}
	if got := n.srv.InFlight(); got != 0 {
		t.Errorf("InFlight = %d after Close, want 0", got)
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := ollamasim.Config{
		Parallel:  -1,
		MinTokens: 50,
		MaxTokens: 10,
		Models:    []ollamasim.ModelSpec{{Name: "a"}, {Name: "A:latest"}, {Name: ""}},
		Faults:    ollamasim.Faults{ErrorRate: 3},
	}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("Validate accepted an invalid config")
	}
	for _, want := range []string{"parallel", "minimum 50 exceeds maximum 10", "listed twice", "name is empty", "error rate"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %q does not mention %q", err, want)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("New accepted an invalid config")
		}
	}()
	ollamasim.New(cfg)
}

func TestParseModels(t *testing.T) {
	specs, err := ollamasim.ParseModels("llama3:8b=4.7, nomic-embed-text ,qwen2.5")
	if err != nil {
		t.Fatalf("ParseModels: %v", err)
	}
	if len(specs) != 3 {
		t.Fatalf("ParseModels returned %d models, want 3", len(specs))
	}
	if specs[0].Name != "llama3:8b" || specs[0].SizeBytes != 4_700_000_000 || specs[0].Embedding {
		t.Errorf("first model = %+v", specs[0])
	}
	if specs[1].Name != "nomic-embed-text" || !specs[1].Embedding {
		t.Errorf("second model = %+v, want an embedding model", specs[1])
	}
	for _, bad := range []string{"m=big", "m=-1"} {
		if _, err := ollamasim.ParseModels(bad); err == nil {
			t.Errorf("ParseModels(%q) succeeded", bad)
		}
	}
}

func BenchmarkGenerate(b *testing.B) {
	srv := ollamasim.New(ollamasim.Config{Models: defaultModels})
	running, err := srv.Start("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer running.Close()
	transport := &http.Transport{}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport}
	body := `{"model":"llama3:8b","prompt":"hi","options":{"num_predict":20}}`

	b.ResetTimer()
	for b.Loop() {
		resp, err := client.Post(running.URL()+"/api/generate", "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

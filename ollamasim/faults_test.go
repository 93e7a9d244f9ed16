package ollamasim_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ollama/ollama/api"

	"github.com/llmproxy/llmproxy/ollamasim"
)

func setFaults(t *testing.T, n *node, f ollamasim.Faults) {
	t.Helper()
	if err := n.srv.SetFaults(f); err != nil {
		t.Fatalf("SetFaults: %v", err)
	}
}

func TestFaultRefuse(t *testing.T) {
	cfg := longAnswers
	n := startNode(t, cfg)
	ctx := context.Background()
	open := n.openStream(t, "/api/generate", longGenerate)
	open.next(t)

	setFaults(t, n, ollamasim.Faults{Refuse: true})
	if _, err := open.rest(); err == nil {
		t.Error("a stream open when refusing started ended cleanly, want it cut")
	}
	err := n.client.Heartbeat(ctx)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Heartbeat while refusing: error %v, want connection refused", err)
	}

	setFaults(t, n, ollamasim.Faults{})
	if err := n.client.Heartbeat(ctx); err != nil {
		t.Errorf("Heartbeat after healing: %v", err)
	}
}

func TestFaultRefuseClearsAfter(t *testing.T) {
	n := startNode(t, ollamasim.Config{Faults: ollamasim.Faults{Refuse: true, ClearAfter: 30 * time.Millisecond}})
	n.waitFor(t, "faults cleared", func(ollamasim.Stats) bool { return !n.srv.Faults().Refuse })
	if err := n.client.Heartbeat(context.Background()); err != nil {
		t.Errorf("Heartbeat after ClearAfter: %v", err)
	}
}

func TestFaultRefuseOnBareHandler(t *testing.T) {
	srv := ollamasim.New(ollamasim.Config{Models: defaultModels, Faults: ollamasim.Faults{Refuse: true}})
	ts := httptest.NewServer(srv)
	defer ts.Close()
	defer srv.Close()
	client := ts.Client()
	defer client.CloseIdleConnections()

	resp, err := client.Get(ts.URL + "/api/tags")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("GET while refusing: status %d, want the connection closed", resp.StatusCode)
	}
	if err := srv.SetFaults(ollamasim.Faults{}); err != nil {
		t.Fatal(err)
	}
	resp, err = client.Get(ts.URL + "/api/tags")
	if err != nil {
		t.Fatalf("GET after healing: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET after healing: status %d", resp.StatusCode)
	}
}

func TestFaultHang(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	setFaults(t, n, ollamasim.Faults{Hang: true})

	_, done := n.launch(t, "/api/show", `{"model":"llama3:8b"}`)
	n.waitFor(t, "request inside", func(s ollamasim.Stats) bool { return s.InFlight == 1 })
	select {
	case r := <-done:
		t.Fatalf("answered while hanging: %+v", r)
	default:
	}
	setFaults(t, n, ollamasim.Faults{})
	if r := await(t, done); r.status != http.StatusOK {
		t.Errorf("after healing: status %d, body %s", r.status, r.body)
	}

	setFaults(t, n, ollamasim.Faults{Hang: true})
	cancel, _ := n.launch(t, "/api/show", `{"model":"llama3:8b"}`)
	n.waitFor(t, "request inside", func(s ollamasim.Stats) bool { return s.InFlight == 1 })
	cancel()
	n.waitFor(t, "hanging request cancelled", func(s ollamasim.Stats) bool {
		return s.Cancelled == 1 && s.InFlight == 0
	})
}

func TestFaultErrors(t *testing.T) {
	generate := `{"model":"llama3:8b","prompt":"hi","stream":false}`
	chat := `{"model":"llama3:8b","messages":[{"role":"user","content":"hi"}]}`
	tests := []struct {
		name   string
		faults ollamasim.Faults
		path   string
		body   string
		status int
		want   string
	}{
		{"500 on /api", ollamasim.Faults{ErrorRate: 1}, "/api/generate", generate,
			500, `{"error":"simulated failure"}`},
		{"500 on /v1", ollamasim.Faults{ErrorRate: 1}, "/v1/chat/completions", chat,
			500, `{"error":{"message":"simulated failure","type":"api_error","param":null,"code":null}}` + "\n"},
		{"custom status", ollamasim.Faults{ErrorRate: 1, ErrorStatus: 502, ErrorMessage: "upstream"},
			"/api/embed", `{"model":"nomic-embed-text","input":"x"}`, 502, `{"error":"upstream"}`},
		{"busy", ollamasim.Faults{Busy: true}, "/api/generate", generate,
			503, `{"error":"server busy, please try again.  maximum pending requests exceeded"}`},
		{"listing unaffected", ollamasim.Faults{ErrorRate: 1, Busy: true}, "/api/show",
			`{"model":"llama3:8b"}`, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := startNode(t, ollamasim.Config{})
			setFaults(t, n, tt.faults)
			status, body := n.post(t, tt.path, tt.body)
			if status != tt.status {
				t.Errorf("status = %d, want %d", status, tt.status)
			}
			if tt.want != "" && string(body) != tt.want {
				t.Errorf("body = %s, want %s", body, tt.want)
			}
		})
	}
}

func TestFaultErrorRateIsDeterministic(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	run := func() string {
		setFaults(t, n, ollamasim.Faults{ErrorRate: 0.5, Seed: 7})
		var pattern strings.Builder
		for range 40 {
			status, _ := n.post(t, "/api/embed", `{"model":"nomic-embed-text","input":"x"}`)
			if status == http.StatusInternalServerError {
				pattern.WriteByte('x')
			} else {
				pattern.WriteByte('.')
			}
		}
		return pattern.String()
	}

	first, second := run(), run()
	if first != second {
		t.Errorf("same seed, different failures:\n%s\n%s", first, second)
	}
	if failures := strings.Count(first, "x"); failures < 8 || failures > 32 {
		t.Errorf("%d of 40 requests failed at rate 0.5: %s", failures, first)
	}
}

func TestFaultCutStream(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	setFaults(t, n, ollamasim.Faults{CutAfterChunks: 3})

	s := n.openStream(t, "/api/generate", `{"model":"llama3:8b","prompt":"hi"}`)
	lines, err := s.rest()
	if len(lines) != 3 || err == nil {
		t.Errorf("NDJSON stream: %d lines, error %v; want 3 lines and an error", len(lines), err)
	}

	// Ollama's Go client (v0.17.4) ignores the read error that ends a cut
	// stream, so the cut shows as a stream without its final line.
	var lastChat api.ChatResponse
	calls := 0
	err = n.client.Chat(context.Background(), &api.ChatRequest{
		Model:    "llama3:8b",
		Messages: []api.Message{{Role: "user", Content: "hi"}},
	}, func(r api.ChatResponse) error { calls++; lastChat = r; return nil })
	if calls != 3 || lastChat.Done {
		t.Errorf("Chat: %d lines, last done %v, error %v; want 3 lines without the final one",
			calls, lastChat.Done, err)
	}

	s = n.openStream(t, "/v1/chat/completions",
		`{"model":"llama3:8b","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	lines, err = s.rest()
	if events := strings.Count(strings.Join(lines, "\n"), "data: "); events != 3 || err == nil {
		t.Errorf("SSE stream: %d events, error %v; want 3 events and an error", events, err)
	}
	if got := n.srv.Cancelled(); got != 0 {
		t.Errorf("Cancelled = %d, want cut streams not counted", got)
	}
}

func TestFaultDelays(t *testing.T) {
	n := startNode(t, ollamasim.Config{})

	setFaults(t, n, ollamasim.Faults{FirstByteDelay: 80 * time.Millisecond})
	start := time.Now()
	n.generate(t, "/api/generate", `{"model":"llama3:8b","prompt":"hi","stream":false,"options":{"num_predict":1}}`)
	if elapsed := time.Since(start); elapsed < 80*time.Millisecond {
		t.Errorf("answer after %v, want at least the first-byte delay", elapsed)
	}

	setFaults(t, n, ollamasim.Faults{TokenDelay: 10 * time.Millisecond})
	r := n.generate(t, "/api/generate", `{"model":"llama3:8b","prompt":"hi","stream":false,"options":{"num_predict":5}}`)
	if got := time.Duration(r.EvalDuration); got < 50*time.Millisecond {
		t.Errorf("eval_duration %v for 5 tokens, want at least 5 token delays", got)
	}
}

func TestFaultsClearAfter(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	setFaults(t, n, ollamasim.Faults{Busy: true, ClearAfter: 20 * time.Millisecond})
	n.waitFor(t, "faults cleared", func(ollamasim.Stats) bool { return n.srv.Faults() == ollamasim.Faults{} })

	status, _ := n.post(t, "/api/generate", `{"model":"llama3:8b","prompt":"hi","stream":false}`)
	if status != http.StatusOK {
		t.Errorf("status after ClearAfter = %d, want 200", status)
	}
}

func TestControlRoutes(t *testing.T) {
	n := startNode(t, ollamasim.Config{})

	status, body := n.post(t, "/_sim/faults", `{"error_rate":0.25,"token_delay":"5ms","seed":3}`)
	if status != http.StatusOK {
		t.Fatalf("POST /_sim/faults: status %d, body %s", status, body)
	}
	want := ollamasim.Faults{ErrorRate: 0.25, TokenDelay: 5 * time.Millisecond, Seed: 3}
	if got := n.srv.Faults(); got != want {
		t.Errorf("Faults = %+v, want %+v", got, want)
	}
	var echoed ollamasim.Faults
	if err := json.Unmarshal(body, &echoed); err != nil || echoed != want {
		t.Errorf("POST answer %s decodes to %+v (%v)", body, echoed, err)
	}
	_, body = n.get(t, "/_sim/faults")
	if err := json.Unmarshal(body, &echoed); err != nil || echoed != want {
		t.Errorf("GET answer %s decodes to %+v (%v)", body, echoed, err)
	}

	for _, bad := range []string{`{"error_rate":2}`, `{"errror_rate":0.5}`, `{bad`, `{"token_delay":"soon"}`} {
		if status, body := n.post(t, "/_sim/faults", bad); status != http.StatusBadRequest {
			t.Errorf("POST %s: status %d, body %s; want 400", bad, status, body)
		}
	}

	resp := n.do(t, context.Background(), http.MethodDelete, "/_sim/faults", "")
	if resp.StatusCode != http.StatusOK || n.srv.Faults() != (ollamasim.Faults{}) {
		t.Errorf("DELETE /_sim/faults: status %d, faults %+v", resp.StatusCode, n.srv.Faults())
	}

	n.get(t, "/api/tags")
	_, body = n.get(t, "/_sim/stats")
	var stats ollamasim.Stats
	if err := json.Unmarshal(body, &stats); err != nil {
		t.Fatalf("decode /_sim/stats %s: %v", body, err)
	}
	if stats.Requests["/api/tags"] != 1 || len(stats.Requests) != 1 {
		t.Errorf("stats requests = %v, want only /api/tags once", stats.Requests)
	}
}

func TestControlRefuseAndHealOverHTTP(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	control := httptest.NewServer(n.srv.ControlHandler())
	defer control.Close()
	controlClient := control.Client()
	defer controlClient.CloseIdleConnections()

	status, body := n.post(t, "/_sim/faults", `{"refuse":true}`)
	if status != http.StatusOK {
		t.Fatalf("POST refuse: status %d, body %s", status, body)
	}
	n.waitFor(t, "refusing", func(ollamasim.Stats) bool { return n.srv.Faults().Refuse })
	if err := n.client.Heartbeat(context.Background()); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Heartbeat while refusing: error %v, want connection refused", err)
	}

	resp, err := controlClient.Post(control.URL+"/_sim/faults", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatalf("POST heal on the control listener: %v", err)
	}
	resp.Body.Close()
	if err := n.client.Heartbeat(context.Background()); err != nil {
		t.Errorf("Heartbeat after healing: %v", err)
	}
}

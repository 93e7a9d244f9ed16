package proxy_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

func TestMetricsAfterTraffic(t *testing.T) {
	a := testenv.Sim(t, "m,embed-e", ollamasim.Config{})
	cfg := testenv.Config(t, a)
	p := testenv.Proxy(t, cfg)
	readBody(t, post(t, p.URL()+"/api/chat", `{"model":"m","messages":[{"role":"user","content":"x"}]}`))
	readBody(t, post(t, p.URL()+"/api/embed", `{"model":"embed-e","input":"x"}`))
	readBody(t, post(t, p.URL()+"/api/embed", `{"model":"embed-e","input":"x"}`))
	readBody(t, post(t, p.URL()+"/api/generate", `{"model":"m","prompt":"x"}`, "X-Priority", "batch"))
	readBody(t, post(t, p.URL()+"/api/generate", `{"model":"nope","prompt":"x"}`))

	resp, err := http.Get(p.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	for _, name := range []string{
		"llmproxy_requests_total", "llmproxy_request_duration_seconds",
		"llmproxy_time_to_first_token_seconds", "llmproxy_tokens_per_second",
		"llmproxy_node_loaded_models", "llmproxy_node_loaded_vram_bytes",
		"llmproxy_node_up", "llmproxy_node_breaker_state", "llmproxy_node_inflight",
		"llmproxy_queue_depth", "llmproxy_queue_wait_seconds", "llmproxy_model_loads_total",
		"llmproxy_tokens_total", "llmproxy_cache_requests_total", "llmproxy_cache_bytes",
		"llmproxy_stream_relays_total",
	} {
		if !bytes.Contains(body, []byte("\n"+name)) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if !bytes.Contains(body, []byte(`model="other"`)) {
		t.Error("an unknown model was not folded into model=\"other\"")
	}
	if bytes.Contains(body, []byte(`model="nope:latest"`)) {
		t.Error("an unknown model name became a label value")
	}
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "llmproxy_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}

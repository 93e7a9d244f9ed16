package proxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// failures sums a failure reason of the node failure counter over nodes.
func failures(tr *trio, reason string) float64 {
	total := 0.0
	for _, n := range tr.cfg.Nodes {
		total += testutil.ToFloat64(tr.proxy.Metrics().NodeFailures.WithLabelValues(n.Name, reason))
	}
	return total
}

func generateRequests(tr *trio) int64 {
	var total int64
	for _, s := range tr.sims {
		total += s.Server().Requests("/api/generate")
	}
	return total
}

// slowHeads tunes a trio so that nodes responding later than 300 ms time
// out, while their health probes, delayed as well, still pass.
func slowHeads(c *config.Config) {
	c.Upstream.FirstByte = 300 * time.Millisecond
	c.Health.Timeout = 5 * time.Second
}

// slowTrio starts a trio tuned by slowHeads whose nodes send every
// response head after 3 s. With preload, model m is loaded on each node
// first.
func slowTrio(t *testing.T, preload bool) *trio {
	t.Helper()
	tr := newTrio(t, ollamasim.Config{}, slowHeads)
	if preload {
		tr.preload(t)
	}
	for _, s := range tr.sims {
		if err := s.Server().SetFaults(ollamasim.Faults{FirstByteDelay: 3 * time.Second}); err != nil {
			t.Fatal(err)
		}
	}
	return tr
}

// gatewayTimeout reads resp and fails the test unless its status is 504.
func gatewayTimeout(t *testing.T, resp *http.Response) string {
	t.Helper()
	body := string(readBody(t, resp))
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504; body %s", resp.StatusCode, body)
	}
	return body
}

func TestFirstByteTimeoutIs504(t *testing.T) {
	tr := slowTrio(t, true)

	// A stream's head comes with its first token, so its timeout counts
	// against the node without a probe.
	resp := post(t, tr.proxy.URL()+"/api/generate", `{"model":"m","prompt":"hi"}`)
	body := gatewayTimeout(t, resp)
	if !strings.Contains(body, `"error":`) || !strings.Contains(body, "first-byte timeout") {
		t.Errorf("body %s is not an Ollama error naming the first-byte timeout", body)
	}
	// The model is loaded, so each try timed out on another node.
	if got := failures(tr, "timeout"); got < 2 {
		t.Errorf("%v node failures counted as timeout, want one per try", got)
	}
	if got := failures(tr, "reset"); got != 0 {
		t.Errorf("%v timeouts counted as resets", got)
	}
}

func TestFirstByteTimeoutDuringLoadNotRetried(t *testing.T) {
	// No preload: the model is cold on every node, so a slow head is a
	// model load, which another node would only repeat.
	tr := slowTrio(t, false)

	resp := post(t, tr.proxy.URL()+"/api/generate", `{"model":"m","prompt":"hi","stream":false}`)
	gatewayTimeout(t, resp)
	if got := generateRequests(tr); got != 1 {
		t.Errorf("the nodes received %d generate requests, want 1 (no retry during a load)", got)
	}
}

// probedMux returns a mux that passes the health probes and lists model
// "m" with nothing loaded, for fake nodes to add their routes to.
func probedMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/version", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"version":"0.25.0"}`)
	})
	mux.HandleFunc("GET /api/tags", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"models":[{"name":"m:latest","model":"m:latest",`+
			`"size":1,"digest":"d","details":{"format":"gguf"}}]}`)
	})
	mux.HandleFunc("GET /api/ps", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"models":[]}`)
	})
	return mux
}

// scriptedNode starts a node that passes the health checks, lists model
// "m" and serves every POST with post.
func scriptedNode(t *testing.T, post http.HandlerFunc) string {
	t.Helper()
	mux := probedMux()
	mux.HandleFunc("POST /", post)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// stuckReader starts a node that never reads the body of a POST and never
// responds to it.
func stuckReader(t *testing.T) string {
	t.Helper()
	// The server notices a closed connection only once the body is read,
	// so the handlers wait for the test to end. Cleanups run last in
	// first, so release comes before the server's Close.
	release := make(chan struct{})
	url := scriptedNode(t, func(w http.ResponseWriter, r *http.Request) {
		<-release
	})
	t.Cleanup(func() { close(release) })
	return url
}

func TestColdPreloadNotRetried(t *testing.T) {
	tr := slowTrio(t, false)

	// A generate with no prompt loads the model and nothing else.
	resp := post(t, tr.proxy.URL()+"/api/generate", `{"model":"m"}`)
	gatewayTimeout(t, resp)
	if got := generateRequests(tr); got != 1 {
		t.Errorf("the nodes received %d preloads, want 1 (no retry during a load)", got)
	}
}

func TestUnreadBodyTimesOut(t *testing.T) {
	cfg := testenv.Config(t)
	cfg.Nodes = append(cfg.Nodes, config.DefaultNode(stuckReader(t)))
	cfg.Nodes[0].Name = "n0"
	cfg.Upstream.FirstByte = 300 * time.Millisecond
	proxy := testenv.Proxy(t, cfg)

	// 24 MiB is more than loopback's send and receive buffers take, so
	// writing it waits for the node to read.
	prompt := strings.Repeat("a", 24<<20)
	client := &http.Client{Timeout: 20 * time.Second}
	resp, err := client.Post(proxy.URL()+"/api/generate", "application/json",
		strings.NewReader(`{"model":"m","stream":false,"prompt":"`+prompt+`"}`))
	if err != nil {
		t.Fatalf("no response within %v: %v", client.Timeout, err)
	}
	body := string(readBody(t, resp))
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504; body %s", resp.StatusCode, body)
	}
	if !strings.Contains(body, "did not take the whole request body") {
		t.Errorf("body %s does not say that the node did not take the body", body)
	}
	if got := testutil.ToFloat64(proxy.Metrics().NodeFailures.WithLabelValues("n0", "timeout")); got != 1 {
		t.Errorf("%v node failures counted as timeout, want 1", got)
	}
}

func TestRestartedNodeGetsNewConnections(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	addr := sim.Addr()
	cfg := testenv.Config(t, sim)
	cfg.Nodes[0].MaxConcurrent = 8
	cfg.Health.Interval = time.Hour
	proxy := testenv.Proxy(t, cfg)
	m := proxy.Metrics()

	// Eight requests at once leave eight idle connections in the pool.
	codes := generateMany(t, proxy.URL(), 16, 8)
	if codes[200] != 16 {
		t.Fatalf("codes before the restart %v", codes)
	}

	// The node restarts on the same address, which closes every pooled
	// connection from its side.
	if err := sim.Close(); err != nil {
		t.Fatal(err)
	}
	restarted, err := ollamasim.New(ollamasim.Config{
		Models: mustModels(t, "m"), Logger: testenv.Logger(),
	}).Start(addr)
	if err != nil {
		t.Fatalf("restart the node on %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = restarted.Close() })

	// Requests larger than the proxy's 8 KiB write buffer fail on a
	// closed connection while still being written, small ones only when
	// the response is read. Both kinds must get through.
	large := `{"model":"m","stream":false,"prompt":"` + strings.Repeat("b", 40<<10) + `"}`
	for i, body := range []string{large, large, `{"model":"m","prompt":"hi","stream":false}`, large} {
		resp := post(t, proxy.URL()+"/api/generate", body)
		if got := readBody(t, resp); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d after the restart: status %d, body %s", i, resp.StatusCode, got)
		}
	}
	if got := testutil.ToFloat64(m.NodeFailures.WithLabelValues("n0", "reset")); got != 0 {
		t.Errorf("%v stale pooled connections counted as node failures", got)
	}
}

func mustModels(t *testing.T, spec string) []ollamasim.ModelSpec {
	t.Helper()
	models, err := ollamasim.ParseModels(spec)
	if err != nil {
		t.Fatal(err)
	}
	return models
}

func TestSlowRequestGets408(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, sim)
	cfg.ReadTimeout = 300 * time.Millisecond
	proxy := testenv.Proxy(t, cfg)
	addr := strings.TrimPrefix(proxy.URL(), "http://")

	cases := []struct {
		name, sent, shape string
	}{
		{"half a head", "POST /api/generate HTTP/1.1\r\nHost: " + addr + "\r\nContent-Ty", `{"error":"`},
		{"half a body", "POST /api/generate HTTP/1.1\r\nHost: " + addr +
			"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":", `{"error":"`},
		{"half an OpenAI head", "POST /v1/chat/completions HTTP/1.1\r\nHost: " + addr + "\r\nContent-Ty",
			`{"error":{"message":"`},
		{"half an OpenAI body", "POST /v1/chat/completions HTTP/1.1\r\nHost: " + addr +
			"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":", `{"error":{"message":"`},
		{"half an Anthropic body", "POST /v1/messages HTTP/1.1\r\nHost: " + addr +
			"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":", `{"type":"error"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, tc.sent); err != nil {
				t.Fatal(err)
			}
			// The client stalls. The proxy responds and closes well before
			// this deadline.
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("no response to a stalled request: %v", err)
			}
			body := string(readBody(t, resp))
			if resp.StatusCode != http.StatusRequestTimeout {
				t.Fatalf("status %d, want 408; body %s", resp.StatusCode, body)
			}
			if !strings.HasPrefix(body, tc.shape) || !strings.Contains(body, "read_timeout") {
				t.Errorf("body %s lacks the error shape %s or the setting's name", body, tc.shape)
			}
		})
	}
}

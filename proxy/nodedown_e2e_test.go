package proxy_test

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// downTestFirstByte is upstream.first_byte in the tests of a node that
// goes down. It is far above downTestLimit, so a request that completes
// within downTestLimit did not wait for it.
const (
	downTestFirstByte = 30 * time.Second
	downTestLimit     = 15 * time.Second
)

// downNodeProxy starts a proxy, logging at debug level, in front of a
// simulated node n0 with model m and the freezing node n1 with models,
// which freezes when the first /api/chat reaches it. Probes mark a node
// down after two failures of 300ms each.
func downNodeProxy(t *testing.T, models string) (*freezingNode, *app.App, *testenv.LogBuffer) {
	t.Helper()
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	frozen := newFreezingNode(t, models, ollamasim.Config{})
	cfg := testenv.Config(t, sim)
	node := config.DefaultNode(frozen.srv.URL)
	node.Name = "n1"
	cfg.Nodes = append(cfg.Nodes, node)
	cfg.Health.Timeout = 300 * time.Millisecond
	cfg.Health.UnhealthyThreshold = 2
	cfg.Upstream.FirstByte = downTestFirstByte
	cfg.Balancer.Policy = config.PolicyRoundRobin
	p, logs := testenv.JSONProxy(t, cfg, slog.LevelDebug)
	testenv.WaitFor(t, 5*time.Second, "both nodes' model lists fetched", func() bool {
		return p.Balancer().ModelsKnown()
	})
	frozen.freezeOn("/api/chat", 0)
	return frozen, p, logs
}

// downRecord is the part of a log record that the tests of a node that
// goes down check: the access log line ("request") and the retry line.
type downRecord struct {
	Msg       string `json:"msg"`
	RequestID string `json:"request_id"`
	Node      string `json:"node"`
	Status    int    `json:"status"`
	Retries   int    `json:"retries"`
	Reason    string `json:"reason"`
	Error     string `json:"error"`
}

// chatResult is one client's outcome of a chat through the proxy.
type chatResult struct {
	status     int
	retryAfter string
	requestID  string
	body       []byte
	err        error
}

// chatConcurrently sends n copies of the chat body at once and waits for
// all of them.
func chatConcurrently(url, body string, n int) []chatResult {
	out := make([]chatResult, n)
	var wg sync.WaitGroup
	for i := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := frozenClient.Post(url+"/api/chat", "application/json", strings.NewReader(body))
			if err != nil {
				out[i].err = err
				return
			}
			defer resp.Body.Close()
			out[i].status = resp.StatusCode
			out[i].retryAfter = resp.Header.Get("Retry-After")
			out[i].requestID = resp.Header.Get("X-Request-Id")
			out[i].body, out[i].err = io.ReadAll(resp.Body)
		}()
	}
	wg.Wait()
	return out
}

func TestNodeDownRetriesWaitingRequests(t *testing.T) {
	cases := []struct {
		name   string
		stream bool
	}{
		{"not streamed", false},
		{"streamed", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, p, logs := downNodeProxy(t, "m")
			body := `{"model":"m","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":3}}`
			if !c.stream {
				body = `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false,` +
					`"options":{"num_predict":3}}`
			}

			start := time.Now()
			results := chatConcurrently(p.URL(), body, 4)
			elapsed := time.Since(start)

			for i, r := range results {
				if r.err != nil {
					t.Fatalf("chat %d: %v", i, r.err)
				}
				if r.status != http.StatusOK {
					t.Errorf("chat %d: status %d, want 200 (body %s)", i, r.status, r.body)
				}
				if !strings.Contains(string(r.body), `"done":true`) {
					t.Errorf("chat %d: body %s, want a complete response", i, r.body)
				}
			}
			if elapsed > downTestLimit {
				t.Errorf("chats took %s, want them retried well before upstream.first_byte (%s)",
					elapsed, downTestFirstByte)
			}
			if p.Balancer().Node("n1").Up() {
				t.Error("n1 is still up after it froze")
			}

			// Round robin put at least one chat on n1 first. Each of those
			// shows as a retry on n0, and n1's attempt as node_down.
			retried := 0
			testenv.WaitFor(t, 5*time.Second, "access log lines of the four chats", func() bool {
				n := 0
				for _, r := range testenv.Records[downRecord](t, logs) {
					if r.Msg == "request" {
						n++
					}
				}
				return n == len(results)
			})
			for _, r := range testenv.Records[downRecord](t, logs) {
				if r.Msg != "request" {
					continue
				}
				if r.Node != "n0" {
					t.Errorf("request %s logged node %q, want n0", r.RequestID, r.Node)
				}
				if r.Status != http.StatusOK {
					t.Errorf("request %s logged status %d, want 200", r.RequestID, r.Status)
				}
				retried += r.Retries
			}
			if retried == 0 {
				t.Fatal("no chat was retried, so none waited on n1")
			}
			retryLines := 0
			for _, r := range testenv.Records[downRecord](t, logs) {
				if r.Msg == "retrying on another node" {
					retryLines++
					if r.Node != "n1" || r.Reason != "node_down" {
						t.Errorf("retry logged node %q reason %q, want n1 and node_down", r.Node, r.Reason)
					}
				}
			}
			if retryLines != retried {
				t.Errorf("%d retry log lines, want %d, one per retry in the access log", retryLines, retried)
			}

			m := p.Metrics()
			if got := testutil.ToFloat64(m.Retries.WithLabelValues("n1", "node_down")); got != float64(retried) {
				t.Errorf("llmproxy_retries_total{node=n1,reason=node_down} = %v, want %d", got, retried)
			}
			if got := testutil.ToFloat64(m.UncountedErrors.WithLabelValues("n1", "node_down")); got != float64(retried) {
				t.Errorf("llmproxy_uncounted_node_errors_total{node=n1,reason=node_down} = %v, want %d",
					got, retried)
			}
			// The probes took n1 down, and the requests they ended count
			// no failure of their own.
			for _, reason := range []string{"timeout", "reset", "connect", "midstream"} {
				if got := failureCount(p, "n1", reason); got != 0 {
					t.Errorf("%v %s failures counted against n1, want 0", got, reason)
				}
			}
		})
	}
}

func TestNodeDownOnlyNodeGets503(t *testing.T) {
	cases := []struct {
		name   string
		stream bool
	}{
		{"not streamed", false},
		{"streamed", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Only n1 has model solo.
			_, p, logs := downNodeProxy(t, "m,solo")
			body := `{"model":"solo","messages":[{"role":"user","content":"hi"}]}`
			if !c.stream {
				body = `{"model":"solo","messages":[{"role":"user","content":"hi"}],"stream":false}`
			}

			start := time.Now()
			r := chatConcurrently(p.URL(), body, 1)[0]
			elapsed := time.Since(start)

			if r.err != nil {
				t.Fatalf("chat: %v", r.err)
			}
			if r.status != http.StatusServiceUnavailable {
				t.Errorf("status %d, want 503 (body %s)", r.status, r.body)
			}
			if r.retryAfter != "5" {
				t.Errorf("Retry-After %q, want 5", r.retryAfter)
			}
			msg := errorMessage(t, r.body)
			if !strings.Contains(msg, "node n1: node marked down by health checks") {
				t.Errorf("error %q, want it to name n1 as marked down", msg)
			}
			if elapsed > downTestLimit {
				t.Errorf("chat took %s, want it ended well before upstream.first_byte (%s)",
					elapsed, downTestFirstByte)
			}

			testenv.WaitFor(t, 5*time.Second, "access log line of the chat", func() bool {
				for _, rec := range testenv.Records[downRecord](t, logs) {
					if rec.Msg == "request" && rec.RequestID == r.requestID {
						if rec.Status != http.StatusServiceUnavailable {
							t.Errorf("access log status %d, want 503", rec.Status)
						}
						if !strings.Contains(rec.Error, "marked down") {
							t.Errorf("access log error %q, want it to say n1 was marked down", rec.Error)
						}
						return true
					}
				}
				return false
			})
			if got := failureCount(p, "n1", "timeout"); got != 0 {
				t.Errorf("%v timeouts counted against n1, want 0", got)
			}
		})
	}
}

// probeStallNode is a simulated node whose GET /api/version, the active
// probe, hangs while stall is set. Its other routes keep working, as on
// a node too busy to respond to probes in time.
type probeStallNode struct {
	srv   *httptest.Server
	sim   *ollamasim.Server
	stall atomic.Bool
	// release is closed when the test ends, to end the hanging probes.
	release chan struct{}
}

func newProbeStallNode(t *testing.T, models string, cfg ollamasim.Config) *probeStallNode {
	t.Helper()
	n := &probeStallNode{sim: innerSim(t, models, cfg), release: make(chan struct{})}
	n.srv = httptest.NewServer(n)
	t.Cleanup(n.srv.Close)
	t.Cleanup(func() { close(n.release) })
	return n
}

func (n *probeStallNode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/api/version" && n.stall.Load() {
		select {
		case <-r.Context().Done():
		case <-n.release:
		}
		return
	}
	n.sim.ServeHTTP(w, r)
}

func TestNodeDownKeepsStartedStream(t *testing.T) {
	node := newProbeStallNode(t, "m", ollamasim.Config{TokensPerSec: 10, MinTokens: 40, MaxTokens: 40})
	cfg := testenv.Config(t)
	nc := config.DefaultNode(node.srv.URL)
	nc.Name = "n0"
	cfg.Nodes = []config.Node{nc}
	cfg.Health.Timeout = 300 * time.Millisecond
	cfg.Health.UnhealthyThreshold = 2
	cfg.Upstream.FirstByte = downTestFirstByte
	p := testenv.Proxy(t, cfg)
	testenv.WaitFor(t, 5*time.Second, "n0's model list fetched", func() bool {
		return p.Balancer().ModelsKnown()
	})

	// 40 tokens at 10 per second outlast the two failed probes.
	resp, err := frozenClient.Post(p.URL()+"/api/chat", "application/json",
		strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}],`+
			`"options":{"num_predict":40}}`))
	if err != nil {
		t.Fatalf("streamed chat: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("streamed chat: status %d, want 200", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatalf("first line of the stream: %v", err)
	}

	node.stall.Store(true)
	testenv.WaitFor(t, 10*time.Second, "probes to mark n0 down", func() bool {
		return !p.Balancer().Node("n0").Up()
	})
	downAt := time.Now()

	var last string
	lines := 1
	for {
		line, err := br.ReadString('\n')
		if strings.TrimSpace(line) != "" {
			last = line
			lines++
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("stream after n0 went down, %d lines in: %v", lines, err)
		}
	}
	var final struct {
		Done      bool      `json:"done"`
		Error     string    `json:"error"`
		CreatedAt time.Time `json:"created_at"`
	}
	if err := json.Unmarshal([]byte(last), &final); err != nil {
		t.Fatalf("last line %q: %v", last, err)
	}
	if !final.Done || final.Error != "" {
		t.Errorf("last line %s, want the node's final line", last)
	}
	if lines < 40 {
		t.Errorf("stream has %d lines, want at least 40", lines)
	}
	// Lines sent before n0 went down may wait in buffers, so the node's
	// own timestamp shows that the stream went on past the down mark.
	if !final.CreatedAt.After(downAt) {
		t.Errorf("final line created at %s, before n0 went down at %s: the stream was not running then",
			final.CreatedAt.Format(time.RFC3339Nano), downAt.Format(time.RFC3339Nano))
	}
}

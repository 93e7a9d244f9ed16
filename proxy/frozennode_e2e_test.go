package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// freezingNode is a simulated node that stops responding on every
// connection, as a node whose process was stopped with SIGSTOP, once it is
// frozen. A request that arrives while it is frozen gets nothing, and a
// response being written stops at its next write.
type freezingNode struct {
	srv  *httptest.Server
	sim  *ollamasim.Server
	mu   sync.Mutex
	cold chan struct{} // closed once the node is frozen
	thaw chan struct{} // closed when the test ends, to release the handlers
	// trigger is the path whose request freezes the node once the
	// response has had afterWrites writes, "" for none.
	trigger     string
	afterWrites int
}

// innerSim returns a simulator with models, not listening, for a test
// node that wraps its handler.
func innerSim(t *testing.T, models string, cfg ollamasim.Config) *ollamasim.Server {
	t.Helper()
	specs, err := ollamasim.ParseModels(models)
	if err != nil {
		t.Fatalf("parse sim models %q: %v", models, err)
	}
	cfg.Models = append(cfg.Models, specs...)
	cfg.Logger = testenv.Logger()
	return ollamasim.New(cfg)
}

// newFreezingNode starts a freezingNode with models on 127.0.0.1.
func newFreezingNode(t *testing.T, models string, cfg ollamasim.Config) *freezingNode {
	t.Helper()
	n := &freezingNode{sim: innerSim(t, models, cfg), cold: make(chan struct{}), thaw: make(chan struct{})}
	n.srv = httptest.NewServer(n)
	t.Cleanup(n.srv.Close)
	// Cleanups run last first, so the handlers are released before the
	// server waits for them.
	t.Cleanup(func() { close(n.thaw) })
	return n
}

// freezeOn makes the node freeze once a response to path has had writes
// writes. With writes 0 the node freezes when the request arrives.
func (n *freezingNode) freezeOn(path string, writes int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.trigger, n.afterWrites = path, writes
}

func (n *freezingNode) freeze() {
	n.mu.Lock()
	defer n.mu.Unlock()
	select {
	case <-n.cold:
	default:
		close(n.cold)
	}
}

func (n *freezingNode) frozen() bool {
	select {
	case <-n.cold:
		return true
	default:
		return false
	}
}

// stall blocks until the request's client leaves or the test ends.
func (n *freezingNode) stall(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-n.thaw:
	}
}

func (n *freezingNode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n.mu.Lock()
	writes := -1
	if r.URL.Path == n.trigger {
		writes = n.afterWrites
	}
	n.mu.Unlock()
	if writes == 0 {
		n.freeze()
	}
	if n.frozen() {
		n.stall(r)
		return
	}
	n.sim.ServeHTTP(&freezingWriter{ResponseWriter: w, node: n, r: r, left: writes}, r)
}

// freezingWriter passes writes on until the node is frozen, and then
// blocks like the socket of a stopped process.
type freezingWriter struct {
	http.ResponseWriter
	node *freezingNode
	r    *http.Request
	// left is the number of writes before the node freezes, -1 for no
	// limit.
	left int
}

func (w *freezingWriter) Write(p []byte) (int, error) {
	if w.left == 0 {
		w.node.freeze()
	}
	if w.node.frozen() {
		w.node.stall(w.r)
		return 0, io.ErrClosedPipe
	}
	if w.left > 0 {
		w.left--
	}
	return w.ResponseWriter.Write(p)
}

func (w *freezingWriter) Flush() {
	if !w.node.frozen() {
		w.ResponseWriter.(http.Flusher).Flush()
	}
}

// frozenNodeProxy starts a proxy in front of a simulated node n0 with
// model m and the freezing node n1, which has models. Probes mark a node
// down after two failures of 300ms each. tune, when set, changes the
// configuration first.
func frozenNodeProxy(t *testing.T, simCfg ollamasim.Config, models string,
	tune func(*config.Config)) (*freezingNode, *testenv.LogBuffer, string) {
	t.Helper()
	sim := testenv.Sim(t, "m", simCfg)
	frozen := newFreezingNode(t, models, ollamasim.Config{PullTime: 2 * time.Second})
	cfg := testenv.Config(t, sim)
	node := config.DefaultNode(frozen.srv.URL)
	node.Name = "n1"
	cfg.Nodes = append(cfg.Nodes, node)
	cfg.Health.Timeout = 300 * time.Millisecond
	cfg.Health.UnhealthyThreshold = 2
	if tune != nil {
		tune(cfg)
	}
	p, logs := testenv.JSONProxy(t, cfg, slog.LevelInfo)
	testenv.WaitFor(t, 5*time.Second, "both nodes' model lists fetched", func() bool {
		return p.Balancer().ModelsKnown()
	})
	return frozen, logs, p.URL()
}

// frozenClient bounds each request of a test with a frozen node. The
// bound only makes a hang fail the test and is far above the limits that
// the tests configure.
var frozenClient = &http.Client{Timeout: 20 * time.Second}

func postFrozen(t *testing.T, url, body string) (*http.Response, []byte) {
	t.Helper()
	resp, err := frozenClient.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("read body of POST %s: %v", url, err)
	}
	return resp, b
}

func TestFanoutEndsWhenNodeMarkedDown(t *testing.T) {
	cases := []struct {
		route, body string
	}{
		{"/api/delete", `{"model":"m"}`},
		{"/api/copy", `{"source":"m","destination":"m2"}`},
	}
	for _, c := range cases {
		t.Run(strings.TrimPrefix(c.route, "/api/"), func(t *testing.T) {
			// The first-byte bound is far away, so only the node's
			// down state can end its part.
			frozen, _, url := frozenNodeProxy(t, ollamasim.Config{}, "m", func(cfg *config.Config) {
				cfg.Upstream.FirstByte = time.Minute
			})
			frozen.freezeOn(c.route, 0)
			method := http.MethodPost
			if c.route == "/api/delete" {
				method = http.MethodDelete
			}
			req, err := http.NewRequest(method, url+c.route, strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := frozenClient.Do(req)
			if err != nil {
				t.Fatalf("%s with n1 frozen: %v", c.route, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Errorf("status %d, want 503 (body %s)", resp.StatusCode, body)
			}
			if ra := resp.Header.Get("Retry-After"); ra == "" {
				t.Error("503 without Retry-After")
			}
			msg := errorMessage(t, body)
			if !strings.Contains(msg, "node n1: node marked down by health checks") {
				t.Errorf("error %q, want it to name n1 as marked down", msg)
			}
		})
	}
}

func TestDeleteEndsAtFirstByteTimeout(t *testing.T) {
	// The node stays up for the whole test, so only upstream.first_byte
	// can end the delete on it.
	frozen, _, url := frozenNodeProxy(t, ollamasim.Config{}, "m", func(cfg *config.Config) {
		cfg.Upstream.FirstByte = time.Second
		cfg.Health.UnhealthyThreshold = 1000
	})
	frozen.freezeOn("/api/delete", 0)
	req, err := http.NewRequest(http.MethodDelete, url+"/api/delete", strings.NewReader(`{"model":"m"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := frozenClient.Do(req)
	if err != nil {
		t.Fatalf("delete with n1 frozen: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("status %d, want 500 (body %s)", resp.StatusCode, body)
	}
	msg := errorMessage(t, body)
	if !strings.Contains(msg, "node n1") || !strings.Contains(msg, "first-byte timeout") {
		t.Errorf("error %q, want n1's first-byte timeout", msg)
	}
}

func TestPullNotStreamedEndsWhenNodeMarkedDown(t *testing.T) {
	frozen, logs, url := frozenNodeProxy(t, ollamasim.Config{}, "m", nil)
	frozen.freezeOn("/api/pull", 0)
	resp, body := postFrozen(t, url+"/api/pull", `{"model":"new","stream":false}`)
	// A pull succeeds when at least one node got the model.
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200 (body %s)", resp.StatusCode, body)
	}
	if got := strings.TrimSpace(string(body)); got != `{"status":"success"}` {
		t.Errorf("body %s, want success", got)
	}
	type record struct {
		Msg   string `json:"msg"`
		Node  string `json:"node"`
		Error string `json:"error"`
	}
	testenv.WaitFor(t, 5*time.Second, "warning about n1", func() bool {
		for _, r := range testenv.Records[record](t, logs) {
			if r.Msg == "model operation failed on a node but succeeded on others" && r.Node == "n1" &&
				strings.Contains(r.Error, "marked down") {
				return true
			}
		}
		return false
	})
}

// pullLines sends a streamed pull of model and returns its lines.
func pullLines(t *testing.T, url, model string) []string {
	t.Helper()
	resp, err := frozenClient.Post(url+"/api/pull", "application/json",
		strings.NewReader(`{"model":"`+model+`"}`))
	if err != nil {
		t.Fatalf("pull %s: %v", model, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("pull %s: status %d", model, resp.StatusCode)
	}
	var lines []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read pull %s after %d lines: %v", model, len(lines), err)
	}
	if len(lines) == 0 {
		t.Fatalf("pull %s sent no lines", model)
	}
	return lines
}

func TestPullStreamContinuesWhenNodeMarkedDown(t *testing.T) {
	frozen, _, url := frozenNodeProxy(t, ollamasim.Config{PullTime: 6 * time.Second}, "m", nil)
	// n1 sends three writes of progress, then stops.
	frozen.freezeOn("/api/pull", 3)
	lines := pullLines(t, url, "new")
	if last := lines[len(lines)-1]; last != `{"status":"success"}` {
		t.Errorf("last line %s, want success from n0", last)
	}
	// n0's progress goes on once n1 no longer holds the merge back.
	var completed bool
	for _, l := range lines {
		var p struct {
			Total, Completed int64
		}
		if json.Unmarshal([]byte(l), &p) == nil && p.Total > 0 && p.Completed == p.Total {
			completed = true
		}
	}
	if !completed {
		t.Errorf("no line shows a layer completed: %v", lines)
	}
}

func TestPullStreamErrorNamesDownNode(t *testing.T) {
	// n0 has no registry model, so the pull fails there at once, and n1
	// stops responding mid-pull: the pull fails on every node.
	frozen, _, url := frozenNodeProxy(t, ollamasim.Config{Registry: map[string]ollamasim.ModelSpec{}},
		"m", nil)
	frozen.freezeOn("/api/pull", 3)
	lines := pullLines(t, url, "new")
	var final struct {
		Error string `json:"error"`
	}
	last := lines[len(lines)-1]
	if err := json.Unmarshal([]byte(last), &final); err != nil || final.Error == "" {
		t.Fatalf("last line %s, want an error line", last)
	}
	if !strings.Contains(final.Error, "node n1: node marked down by health checks") {
		t.Errorf("error %q, want it to name n1 as marked down", final.Error)
	}
	if !strings.Contains(final.Error, "node n0: ") {
		t.Errorf("error %q, want it to name n0's failure", final.Error)
	}
}

func TestPullClientLeftLogged499(t *testing.T) {
	// n1 stays up, so its part of the pull ends only with the client.
	frozen, logs, url := frozenNodeProxy(t, ollamasim.Config{}, "m", func(cfg *config.Config) {
		cfg.Health.UnhealthyThreshold = 1000
	})
	frozen.freezeOn("/api/pull", 0)

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/api/pull",
		strings.NewReader(`{"model":"new","stream":false}`))
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := http.DefaultClient.Do(req); err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("pull with n1 frozen got status %d (%s), want no response", resp.StatusCode, body)
	}

	checkPullLogged499(t, logs)
}

// TestStreamedPullClientLeftLogged499 has the client of a streamed pull
// leave while one node's part hangs. The access log records 499, as for a
// streamed generation that its client leaves, and not the 200 of the
// stream's head.
func TestStreamedPullClientLeftLogged499(t *testing.T) {
	frozen, logs, url := frozenNodeProxy(t, ollamasim.Config{}, "m", func(cfg *config.Config) {
		cfg.Health.UnhealthyThreshold = 1000
	})
	frozen.freezeOn("/api/pull", 0)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/api/pull",
		strings.NewReader(`{"model":"new"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("streamed pull: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("streamed pull: status %d, want 200", resp.StatusCode)
	}
	// The first progress line shows that the stream runs, then the client
	// leaves.
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		t.Fatalf("first progress line: %v", err)
	}
	if !strings.Contains(line, `"status"`) {
		t.Fatalf("first line %q, want a progress line", line)
	}
	cancel()
	resp.Body.Close()

	checkPullLogged499(t, logs)
}

// checkPullLogged499 waits for the access log line of a pull and checks
// that it records 499, the status of a client that left.
func checkPullLogged499(t *testing.T, logs *testenv.LogBuffer) {
	t.Helper()
	type record struct {
		Msg    string `json:"msg"`
		Route  string `json:"route"`
		Status int    `json:"status"`
	}
	var got *record
	testenv.WaitFor(t, 10*time.Second, "access log line of the pull", func() bool {
		for _, r := range testenv.Records[record](t, logs) {
			if r.Msg == "request" && r.Route == "/api/pull" {
				got = &r
				return true
			}
		}
		return false
	})
	if got.Status != 499 {
		t.Errorf("access log status %d, want 499 for a client that left", got.Status)
	}
}

func TestTagsServesFrozenNodeLastList(t *testing.T) {
	// n1 stays up, as in the time before probes mark a frozen node down.
	frozen, _, url := frozenNodeProxy(t, ollamasim.Config{}, "frozenmodel", func(cfg *config.Config) {
		cfg.Health.UnhealthyThreshold = 1000
	})
	frozen.freeze()
	for _, path := range []string{"/api/tags", "/v1/models"} {
		resp, err := frozenClient.Get(url + path)
		if err != nil {
			t.Fatalf("GET %s with n1 frozen: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: status %d, want 200 (body %s)", path, resp.StatusCode, body)
		}
		if !strings.Contains(string(body), `"frozenmodel:latest"`) {
			t.Errorf("GET %s: body %s, want n1's last known model frozenmodel", path, body)
		}
		if !strings.Contains(string(body), `"m:latest"`) {
			t.Errorf("GET %s: body %s, want n0's model m", path, body)
		}
	}
}

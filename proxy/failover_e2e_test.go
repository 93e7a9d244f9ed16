package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
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

// trio is three simulated nodes that all have model "m", behind a proxy.
type trio struct {
	sims  []*ollamasim.Running
	proxy *app.App
	cfg   *config.Config
}

func newTrio(t *testing.T, simCfg ollamasim.Config, tune func(*config.Config)) *trio {
	t.Helper()
	tr := &trio{}
	for i := 0; i < 3; i++ {
		tr.sims = append(tr.sims, testenv.Sim(t, "m", simCfg))
	}
	tr.cfg = testenv.Config(t, tr.sims...)
	if tune != nil {
		tune(tr.cfg)
	}
	tr.proxy = testenv.Proxy(t, tr.cfg)
	return tr
}

// preload loads m on every node and waits until the proxy lists it as loaded, so
// that placement treats the nodes as equals.
func (tr *trio) preload(t *testing.T) {
	t.Helper()
	for _, s := range tr.sims {
		readBody(t, post(t, s.URL()+"/api/generate", `{"model":"m"}`))
	}
	testenv.WaitFor(t, 5*time.Second, "m loaded on every node", func() bool {
		return len(tr.proxy.Balancer().Holding("m:latest")) == len(tr.sims)
	})
}

func (tr *trio) byName(name string) *ollamasim.Running {
	for i, s := range tr.sims {
		if tr.cfg.Nodes[i].Name == name {
			return s
		}
	}
	return nil
}

// generateMany sends n non-streaming generates with the given concurrency
// and returns the status codes seen.
func generateMany(t *testing.T, url string, n, concurrency int) map[int]int {
	t.Helper()
	var mu sync.Mutex
	codes := map[int]int{}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				resp, err := http.Post(url+"/api/generate", "application/json",
					strings.NewReader(`{"model":"m","prompt":"hi","stream":false,"options":{"num_predict":3}}`))
				code := -1
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					code = resp.StatusCode
				}
				mu.Lock()
				codes[code]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return codes
}

func TestRefusingNodeLosesNothing(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{}, nil)
	if err := tr.sims[1].Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	codes := generateMany(t, tr.proxy.URL(), 1000, 16)
	if codes[200] != 1000 {
		t.Fatalf("status codes %v, want 1000 × 200", codes)
	}
}

// TestFirstRetryGoesAtOnce sends requests while one node fails every
// request, with a retry backoff of an hour. Each request that tried the
// failing node first is served by another node without that wait.
func TestFirstRetryGoesAtOnce(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{}, func(c *config.Config) {
		c.Health.MaxFails = 0 // keep the failing node in rotation
		c.Breaker.ConsecutiveFailures = 1000
		c.Breaker.MinRequests = 1000
		c.Retry.Backoff, c.Retry.MaxBackoff = time.Hour, time.Hour
	})
	tr.preload(t)
	if err := tr.sims[1].Server().SetFaults(ollamasim.Faults{ErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	// A retry that waited would outlast the client's timeout.
	client := &http.Client{Timeout: 30 * time.Second}
	const n = 12
	for i := range n {
		resp, err := client.Post(tr.proxy.URL()+"/api/generate", "application/json",
			strings.NewReader(`{"model":"m","prompt":"hi","stream":false,"options":{"num_predict":2}}`))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: status %d, want 200", i, resp.StatusCode)
		}
	}
	retries := testutil.ToFloat64(tr.proxy.Metrics().Retries.WithLabelValues("n1", "status_5xx"))
	if retries == 0 {
		t.Fatalf("no request of %d tried the failing node n1", n)
	}
}

func TestFailingNodeOpensBreaker(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{}, func(c *config.Config) {
		c.Health.MaxFails = 0 // isolate the breaker from passive checks
		c.Breaker.FailureRatio = 0.2
		c.Breaker.MinRequests = 10
		c.Breaker.ConsecutiveFailures = 100
		c.Breaker.OpenTimeout = time.Minute
	})
	tr.preload(t)
	bad := tr.sims[2].Server()
	if err := bad.SetFaults(ollamasim.Faults{ErrorRate: 0.3, Seed: 7}); err != nil {
		t.Fatal(err)
	}
	codes := generateMany(t, tr.proxy.URL(), 300, 8)
	if codes[200] != 300 {
		t.Fatalf("status codes %v, want every request served", codes)
	}
	m := tr.proxy.Metrics()
	if got := testutil.ToFloat64(m.NodeBreaker.WithLabelValues("n2")); got != 2 {
		t.Errorf("breaker state of n2 = %v, want 2 (open)", got)
	}
	if testutil.ToFloat64(m.Retries.WithLabelValues("n2", "status_5xx")) == 0 {
		t.Error("no retries counted for n2")
	}
	if testutil.ToFloat64(m.NodeFailures.WithLabelValues("n2", "status_5xx")) == 0 {
		t.Error("no failures counted for n2")
	}
	// Once open, the node gets no more traffic.
	before := bad.Requests("/api/generate")
	generateMany(t, tr.proxy.URL(), 30, 4)
	if after := bad.Requests("/api/generate"); after != before {
		t.Errorf("open breaker let %d requests through", after-before)
	}
}

func TestClientErrorIsPassedOnUnchanged(t *testing.T) {
	msg := `think value "high" is not supported for this model`
	tr := newTrio(t, ollamasim.Config{}, nil)
	for _, s := range tr.sims {
		err := s.Server().SetFaults(ollamasim.Faults{ErrorRate: 1, ErrorStatus: 400, ErrorMessage: msg})
		if err != nil {
			t.Fatal(err)
		}
	}
	resp := post(t, tr.proxy.URL()+"/api/chat",
		`{"model":"m","think":"high","messages":[{"role":"user","content":"x"}]}`)
	body := readBody(t, resp)
	if resp.StatusCode != 400 {
		t.Fatalf("status %d, want 400", resp.StatusCode)
	}
	want, _ := json.Marshal(map[string]string{"error": msg})
	if !bytes.Equal(bytes.TrimSpace(body), want) {
		t.Errorf("body %s, want %s", body, want)
	}
	var total int64
	for _, s := range tr.sims {
		total += s.Server().Requests("/api/chat")
	}
	if total != 1 {
		t.Errorf("nodes saw %d chats, want 1: a 4xx is never retried", total)
	}
	m := tr.proxy.Metrics()
	for _, n := range []string{"n0", "n1", "n2"} {
		if c := testutil.CollectAndCount(m.NodeFailures); c != 0 {
			t.Errorf("node failures counted after a 4xx: %d series (%s)", c, n)
			break
		}
	}
}

func TestNodeKilledMidStream(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{TokensPerSec: 40, MinTokens: 120, MaxTokens: 120, Parallel: 20},
		func(c *config.Config) {
			c.Health.Interval = 100 * time.Millisecond
			c.Health.Timeout = 200 * time.Millisecond
			// Passive checks and the breaker keep the killed node out for
			// this long after its failures, also once probes mark it up.
			c.Health.FailTimeout = 2 * time.Second
			c.Breaker.OpenTimeout = 2 * time.Second
			for i := range c.Nodes {
				c.Nodes[i].MaxConcurrent = 20 // every stream starts at once
			}
		})
	type result struct {
		node      string
		done      bool
		errLine   bool
		lastError string
	}
	tr.preload(t) // spread the streams over the three nodes
	results := make([]result, 20)
	started := make(chan struct{}, 20)
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := post(t, tr.proxy.URL()+"/api/chat",
				`{"model":"m","messages":[{"role":"user","content":"long story"}]}`)
			defer resp.Body.Close()
			results[i].node = resp.Header.Get("X-LLMProxy-Node")
			sc := bufio.NewScanner(resp.Body)
			first := true
			for sc.Scan() {
				if first {
					started <- struct{}{}
					first = false
				}
				var line struct {
					Done  bool
					Error string
				}
				if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
					results[i].lastError = "bad line: " + sc.Text()
					return
				}
				results[i].done = results[i].done || line.Done
				if line.Error != "" {
					results[i].errLine = true
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		<-started
	}
	victim := tr.sims[0]
	killedAt := time.Now()
	if err := victim.Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	cut := 0
	for i, r := range results {
		if r.lastError != "" {
			t.Errorf("stream %d: %s", i, r.lastError)
		}
		if r.node == "n0" {
			cut++
			if !r.errLine || r.done {
				t.Errorf("stream %d on the killed node: error line %v, done %v", i, r.errLine, r.done)
			}
		} else if !r.done || r.errLine {
			t.Errorf("stream %d on %s: done %v, error line %v", i, r.node, r.done, r.errLine)
		}
	}
	if cut == 0 {
		t.Fatal("no stream was on the killed node")
	}
	t.Logf("%d streams cut; all streams ended %s after the kill", cut, time.Since(killedAt))

	// New chats go to the other nodes.
	testenv.WaitFor(t, 5*time.Second, "n0 to go down", func() bool {
		return !tr.proxy.Balancer().Node("n0").Up()
	})
	for i := 0; i < 10; i++ {
		resp := post(t, tr.proxy.URL()+"/api/chat",
			`{"model":"m","stream":false,"options":{"num_predict":2},"messages":[{"role":"user","content":"x"}]}`)
		readBody(t, resp)
		if resp.StatusCode != 200 || resp.Header.Get("X-LLMProxy-Node") == "n0" {
			t.Fatalf("chat after the kill: %d on %s", resp.StatusCode, resp.Header.Get("X-LLMProxy-Node"))
		}
	}

	// The node comes back and gets traffic again, without a restart, once
	// probes mark it up and its take-out or open breaker has ended.
	if err := victim.Server().SetFaults(ollamasim.Faults{}); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	testenv.WaitFor(t, 10*time.Second, "n0 to come back", func() bool {
		return tr.proxy.Balancer().Node("n0").Usable()
	})
	t.Logf("n0 usable %s after healing (interval %s × healthy_threshold %d, fail_timeout %s, open_timeout %s)",
		time.Since(healed), tr.cfg.Health.Interval, tr.cfg.Health.HealthyThreshold,
		tr.cfg.Health.FailTimeout, tr.cfg.Breaker.OpenTimeout)
	before := victim.Server().Requests("/api/chat")
	generateChats(t, tr.proxy.URL(), 12)
	if victim.Server().Requests("/api/chat") == before {
		t.Error("the healed node got no traffic")
	}
}

func generateChats(t *testing.T, url string, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := post(t, url+"/api/chat",
				`{"model":"m","messages":[{"role":"user","content":"x"}],"options":{"num_predict":20}}`)
			readBody(t, resp)
		}()
	}
	wg.Wait()
}

func TestHangingNodeIsIsolated(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{}, func(c *config.Config) {
		c.Health.Interval = 100 * time.Millisecond
		c.Health.Timeout = 200 * time.Millisecond
		c.Upstream.FirstByte = 2 * time.Second
	})
	hung := tr.sims[1].Server()
	if err := hung.SetFaults(ollamasim.Faults{Hang: true}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "the hanging node to be taken out", func() bool {
		return !tr.proxy.Balancer().Node("n1").Usable()
	})
	sent := hung.Requests("/api/generate")
	m := tr.proxy.Metrics()
	timeoutsBefore := testutil.ToFloat64(m.NodeFailures.WithLabelValues("n1", "timeout"))
	codes := generateMany(t, tr.proxy.URL(), 100, 8)
	if codes[200] != 100 {
		t.Fatalf("codes %v", codes)
	}
	if hung.Requests("/api/generate") != sent {
		t.Errorf("the hanging node received %d requests after detection",
			hung.Requests("/api/generate")-sent)
	}
	// Nothing waited for the first-byte timeout of the hanging node.
	if got := testutil.ToFloat64(m.NodeFailures.WithLabelValues("n1", "timeout")); got != timeoutsBefore {
		t.Errorf("%v requests timed out on the hanging node after it was taken out",
			got-timeoutsBefore)
	}
}

func TestDrainAndUndrain(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{TokensPerSec: 20}, nil)
	// A stream in flight on n0 finishes during the drain.
	resp := post(t, tr.proxy.URL()+"/api/chat",
		`{"model":"m","messages":[{"role":"user","content":"x"}],"options":{"num_predict":15}}`)
	node := resp.Header.Get("X-LLMProxy-Node")
	admin := func(action string) {
		r := post(t, tr.proxy.URL()+"/admin/nodes/"+node+"/"+action, ``)
		readBody(t, r)
		if r.StatusCode != 200 {
			t.Fatalf("%s: status %d", action, r.StatusCode)
		}
	}
	admin("drain")
	body := readBody(t, resp)
	if !bytes.Contains(body, []byte(`"done":true`)) {
		t.Errorf("in-flight stream did not finish: %s", body)
	}
	sim := tr.byName(node).Server()
	before := sim.Requests("/api/chat")
	generateChats(t, tr.proxy.URL(), 9)
	if sim.Requests("/api/chat") != before {
		t.Errorf("drained node got %d new chats", sim.Requests("/api/chat")-before)
	}
	r, err := http.Get(tr.proxy.URL() + "/admin/nodes")
	if err != nil {
		t.Fatal(err)
	}
	var status struct {
		Nodes []struct{ Name, State, Breaker string }
	}
	if err := json.Unmarshal(readBody(t, r), &status); err != nil {
		t.Fatal(err)
	}
	for _, n := range status.Nodes {
		if n.Name == node && n.State != "draining" {
			t.Errorf("node %s state %q, want draining", n.Name, n.State)
		}
	}
	admin("undrain")
	generateChats(t, tr.proxy.URL(), 9)
	if sim.Requests("/api/chat") == before {
		t.Error("undrained node got no traffic")
	}
}

// TestNodeActionReadsPathAsSent names a node with encoded slashes and dot
// segments. The path is decoded as sent, without removing dot segments,
// so the rest names no action and no node drains, not even the one that
// a cleaned path would name. An encoded letter still names its node.
func TestNodeActionReadsPathAsSent(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{}, nil)
	cases := []struct {
		path    string
		status  int
		drained string // node expected to drain, "" for none
		message string
	}{
		{"/admin/nodes/n0%2F..%2Fn1/drain", http.StatusNotFound, "", `unknown node action \"../n1/drain\"`},
		{"/admin/nodes/n0%2F%2E%2E%2Fn2/drain", http.StatusNotFound, "", `unknown node action \"../n2/drain\"`},
		{"/admin/nodes/%6E1/drain", http.StatusOK, "n1", ""},
		{"/admin/nodes/n2%zz/drain", http.StatusBadRequest, "", "invalid path"},
	}
	for _, c := range cases {
		// Sent raw, since Go's client does not send an invalid escape.
		conn, err := net.Dial("tcp", tr.proxy.Addr())
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n\r\n", c.path, tr.proxy.Addr())
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%s: %v", c.path, err)
		}
		body := string(readBody(t, resp))
		conn.Close()
		if resp.StatusCode != c.status {
			t.Errorf("%s: status %d, want %d; body %s", c.path, resp.StatusCode, c.status, body)
		}
		if !strings.Contains(body, c.message) {
			t.Errorf("%s: body %s, want %q", c.path, body, c.message)
		}
		for _, name := range []string{"n0", "n1", "n2"} {
			if got := tr.proxy.Balancer().Node(name).Draining(); got != (name == c.drained) {
				t.Errorf("%s: node %s draining %v", c.path, name, got)
			}
		}
		if c.drained != "" {
			tr.proxy.Balancer().Node(c.drained).SetDraining(false)
		}
	}
}

func TestPassiveChecksTakeNodeOut(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{}, func(c *config.Config) {
		c.Health.MaxFails = 3
		c.Health.FailTimeout = time.Minute
	})
	tr.preload(t)
	bad := tr.sims[0].Server()
	if err := bad.SetFaults(ollamasim.Faults{ErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	before := bad.Requests("/api/generate")
	codes := generateMany(t, tr.proxy.URL(), 60, 1)
	if codes[200] != 60 {
		t.Fatalf("codes %v", codes)
	}
	if got := bad.Requests("/api/generate") - before; got != 3 {
		t.Errorf("failing node saw %d requests, want 3 (max_fails) before it was taken out", got)
	}
}

func TestEnsureModelsPullsMissing(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{})
	b := testenv.Sim(t, "other", ollamasim.Config{})
	cfg := testenv.Config(t, a, b)
	cfg.Models.Ensure = []string{"m"}
	p := testenv.Proxy(t, cfg)
	testenv.WaitFor(t, 10*time.Second, "n1 to get m", func() bool {
		return p.Balancer().Node("n1").HasModel("m:latest")
	})
	if b.Server().Requests("/api/pull") != 1 {
		t.Errorf("n1 saw %d pulls, want 1", b.Server().Requests("/api/pull"))
	}
	if a.Server().Requests("/api/pull") != 0 {
		t.Error("n0 already had m but was pulled")
	}
}

func TestHealthMetricsExported(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{}, nil)
	generateMany(t, tr.proxy.URL(), 5, 1)
	resp, err := http.Get(tr.proxy.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body := string(readBody(t, resp))
	for _, name := range []string{"llmproxy_node_up{node=\"n0\"} 1", "llmproxy_node_breaker_state",
		"llmproxy_requests_total", "llmproxy_node_inflight"} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// upstream.total bounds the whole request, the streamed body included: a
// stream that outlasts it ends with an error line in its own format, a
// short one is untouched, and a non-streamed response that outlasts it
// gets 504. None of this counts against the node.
func TestUpstreamTotalBoundsWholeRequest(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{TokensPerSec: 20, MinTokens: 60, MaxTokens: 60}, func(c *config.Config) {
		c.Upstream.Total = 600 * time.Millisecond
	})
	tr.preload(t)

	short := readBody(t, post(t, tr.proxy.URL()+"/api/chat",
		`{"model":"m","options":{"num_predict":3},"messages":[{"role":"user","content":"x"}]}`))
	if !bytes.Contains(short, []byte(`"done":true`)) || bytes.Contains(short, []byte(`"error"`)) {
		t.Errorf("a stream shorter than upstream.total: %s", short)
	}

	for _, tc := range []struct{ path, body, errPrefix string }{
		{"/api/chat", `{"model":"m","messages":[{"role":"user","content":"long"}]}`, `{"error":`},
		{"/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"long"}]}`,
			`data: {"error":`},
	} {
		start := time.Now()
		resp := post(t, tr.proxy.URL()+tc.path, tc.body)
		body := readBody(t, resp)
		took := time.Since(start)
		lines := strings.Split(strings.TrimSpace(string(body)), "\n")
		last := lines[len(lines)-1]
		if resp.StatusCode != 200 || len(lines) < 3 || !strings.HasPrefix(last, tc.errPrefix) ||
			!strings.Contains(last, "upstream.total") {
			t.Errorf("%s: status %d, %d lines, last %q", tc.path, resp.StatusCode, len(lines), last)
		}
		if took > 2*time.Second {
			t.Errorf("%s: the stream took %s, upstream.total is 600ms", tc.path, took)
		}
	}

	resp := post(t, tr.proxy.URL()+"/api/generate", `{"model":"m","prompt":"long","stream":false}`)
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusGatewayTimeout || !bytes.Contains(body, []byte(`"error"`)) {
		t.Errorf("non-streamed response past upstream.total: %d %s", resp.StatusCode, body)
	}
	for _, n := range tr.proxy.Balancer().Nodes() {
		if !n.Usable() {
			t.Errorf("node %s is out after requests hit upstream.total", n.Name)
		}
		if e := n.LastError(); e != "" {
			t.Errorf("node %s has last error %q from the proxy's own limit", n.Name, e)
		}
	}
}

// Requests still in flight when shutdown_timeout runs out end with an
// error their clients can read: an error line on NDJSON and SSE streams,
// 503 for a response not yet started.
func TestShutdownEndsRequestsWithError(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{TokensPerSec: 10, MinTokens: 200, MaxTokens: 200}, nil)
	tr.preload(t)

	type outcome struct {
		status int
		body   string
	}
	requests := []struct{ path, body string }{
		{"/api/chat", `{"model":"m","messages":[{"role":"user","content":"long"}]}`},
		{"/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"long"}]}`},
		{"/api/generate", `{"model":"m","prompt":"long","stream":false}`},
	}
	results := make([]outcome, len(requests))
	var wg sync.WaitGroup
	firstLines := make(chan struct{}, len(requests))
	for i, r := range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := post(t, tr.proxy.URL()+r.path, r.body)
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			first, _ := br.ReadString('\n')
			firstLines <- struct{}{}
			rest, _ := io.ReadAll(br)
			results[i] = outcome{resp.StatusCode, first + string(rest)}
		}()
	}
	testenv.WaitFor(t, 5*time.Second, "three requests in flight", func() bool {
		n := int64(0)
		for _, node := range tr.proxy.Balancer().Nodes() {
			n += node.Inflight()
		}
		return n == 3
	})
	// The two streams have sent their first lines, so the error comes last.
	<-firstLines
	<-firstLines

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = tr.proxy.Shutdown(ctx)
	wg.Wait()

	lastLine := func(body string) string {
		lines := strings.Split(strings.TrimSpace(body), "\n")
		return lines[len(lines)-1]
	}
	if r := results[0]; r.status != 200 || !strings.HasPrefix(lastLine(r.body), `{"error":"llmproxy is shutting down`) {
		t.Errorf("NDJSON stream: status %d, last line %q", r.status, lastLine(r.body))
	}
	if r := results[1]; r.status != 200 || !strings.HasPrefix(lastLine(r.body), `data: {"error":{"message":"llmproxy is shutting down`) {
		t.Errorf("SSE stream: status %d, last line %q", r.status, lastLine(r.body))
	}
	if r := results[1]; !strings.Contains(lastLine(r.body), `"type":"api_error"`) {
		t.Errorf("SSE stream: last line %q, want the type of a non-streamed 503", lastLine(r.body))
	}
	if r := results[2]; r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, "shutting down") {
		t.Errorf("non-streamed generate: status %d, body %s", r.status, r.body)
	}
	for _, n := range tr.proxy.Balancer().Nodes() {
		if n.Inflight() != 0 {
			t.Errorf("node %s has %d requests in flight after the shutdown", n.Name, n.Inflight())
		}
	}
}

// TestShutdownEndsHTTP10Streams checks that Shutdown also waits for a
// stream to an HTTP/1.0 client, whose connection the proxy took over from
// fasthttp, and ends it with the shutdown's error line.
func TestShutdownEndsHTTP10Streams(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 10, MinTokens: 200, MaxTokens: 200})
	p := testenv.Proxy(t, testenv.Config(t, a))
	conn, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	body := `{"model":"m","messages":[{"role":"user","content":"long"}]}`
	fmt.Fprintf(conn, "POST /api/chat HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		len(body), body)
	br := bufio.NewReader(conn)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read the response head: %v", err)
		}
		if line == "\r\n" {
			break
		}
	}
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatalf("read the first stream line: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if n := p.Balancer().Node("n0").Inflight(); n != 0 {
		t.Errorf("Shutdown returned with %d requests in flight on the node", n)
	}
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("read the rest of the stream: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(rest)), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, `{"error":"llmproxy is shutting down`) {
		t.Errorf("last line %q, want the shutdown's error", last)
	}
}

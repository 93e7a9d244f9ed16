package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// coalescedRequests is the number of identical requests that each
// coalescing test sends: one leader and the requests that wait for it.
const coalescedRequests = 5

// reply is what one client received.
type reply struct {
	status int
	header http.Header
	body   []byte
	err    error
}

// sendReply posts body to url and reads the whole response. It returns
// errors in the reply, so that it can run outside the test's goroutine.
func sendReply(ctx context.Context, url, body string) reply {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return reply{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return reply{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: b, err: err}
}

// l1Misses returns the L1 misses that p counted.
func l1Misses(p *app.App) int {
	return int(testutil.ToFloat64(p.Metrics().CacheRequests.WithLabelValues("l1", "miss")))
}

// coalesceBehind posts body to path on p once, with ctx, and once the node
// sim has received that request, coalescedRequests-1 times more. It
// returns when every request has missed L1 and so waits for the first one
// in cache.Do, with a channel that receives the first request's reply and
// one that receives the reply of each other request. The node must hold
// the first request for longer than that takes.
func coalesceBehind(t *testing.T, ctx context.Context, p *app.App, sim *ollamasim.Server,
	path, body string) (leader, waiters <-chan reply) {
	t.Helper()
	first := make(chan reply, 1)
	go func() { first <- sendReply(ctx, p.URL()+path, body) }()
	testenv.WaitFor(t, 10*time.Second, "the node to receive the first request", func() bool {
		return sim.Requests(path) == 1
	})
	others := make(chan reply, coalescedRequests-1)
	for range coalescedRequests - 1 {
		go func() { others <- sendReply(context.Background(), p.URL()+path, body) }()
	}
	testenv.WaitFor(t, 10*time.Second, "every request to miss L1", func() bool {
		return l1Misses(p) == coalescedRequests
	})
	select {
	case r := <-first:
		t.Fatalf("the first request ended (status %d, error %v) before the others waited for it: "+
			"the node's delay is too short for this machine", r.status, r.err)
	default:
	}
	return first, others
}

// collect returns the n replies that ch receives.
func collect(ch <-chan reply, n int) []reply {
	out := make([]reply, n)
	for i := range out {
		out[i] = <-ch
	}
	return out
}

// requestLog is the part of the proxy's request log line that the
// coalescing tests read.
type requestLog struct {
	Msg    string `json:"msg"`
	Status int    `json:"status"`
	Cache  string `json:"cache"`
}

func TestCoalescingSharesNodeError(t *testing.T) {
	const message = "model runner has unexpectedly stopped"
	// The node holds every chat for 2 s, then fails it.
	sim := testenv.Sim(t, "m", ollamasim.Config{Faults: ollamasim.Faults{
		FirstByteDelay: 2 * time.Second, ErrorRate: 1, ErrorMessage: message}})
	p, logs := testenv.JSONProxy(t, testenv.Config(t, sim), slog.LevelInfo)
	body := `{"model":"m","stream":false,"options":{"temperature":0},` +
		`"messages":[{"role":"user","content":"hi"}]}`

	leader, waiters := coalesceBehind(t, context.Background(), p, sim.Server(), "/api/chat", body)
	replies := append(collect(leader, 1), collect(waiters, coalescedRequests-1)...)
	if got := sim.Server().Requests("/api/chat"); got != 1 {
		t.Errorf("the node received %d chats for %d identical requests, want 1", got, coalescedRequests)
	}
	for i, r := range replies {
		if r.err != nil {
			t.Errorf("request %d: %v", i, r.err)
			continue
		}
		if r.status != http.StatusInternalServerError {
			t.Errorf("request %d: status %d, want 500; body %s", i, r.status, r.body)
		}
		if ct := r.header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
			t.Errorf("request %d: Content-Type %q, want Ollama's", i, ct)
		}
		var e struct{ Error string }
		if err := json.Unmarshal(r.body, &e); err != nil || e.Error != message {
			t.Errorf("request %d: body %s, want Ollama's error %q", i, r.body, message)
		}
		if node := r.header.Get("X-LLMProxy-Node"); node != "n0" {
			t.Errorf("request %d: X-LLMProxy-Node %q, want n0", i, node)
		}
		if res := r.header.Get("X-LLMProxy-Cache"); res != "miss" {
			t.Errorf("request %d: X-LLMProxy-Cache %q, want miss", i, res)
		}
	}

	coalesced := 0
	for _, rec := range testenv.Records[requestLog](t, logs) {
		if rec.Msg == "request" && rec.Cache == "coalesced" && rec.Status == http.StatusInternalServerError {
			coalesced++
		}
	}
	if coalesced != coalescedRequests-1 {
		t.Errorf("log lines of coalesced requests with status 500 = %d, want %d",
			coalesced, coalescedRequests-1)
	}
}

func TestCoalescingSharesFirstByteTimeout(t *testing.T) {
	// The node would respond after a minute, and passes the probe that
	// follows the first-byte timeout.
	sim := testenv.Sim(t, "m", ollamasim.Config{Faults: ollamasim.Faults{FirstByteDelay: time.Minute}})
	cfg := testenv.Config(t, sim)
	cfg.Upstream.FirstByte = 2 * time.Second
	p := testenv.Proxy(t, cfg)
	body := `{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}`

	leader, waiters := coalesceBehind(t, context.Background(), p, sim.Server(), "/v1/chat/completions", body)
	replies := append(collect(leader, 1), collect(waiters, coalescedRequests-1)...)
	if got := sim.Server().Requests("/v1/chat/completions"); got != 1 {
		t.Errorf("the node received %d chat completions for %d identical requests, want 1",
			got, coalescedRequests)
	}
	for i, r := range replies {
		if r.err != nil {
			t.Errorf("request %d: %v", i, r.err)
			continue
		}
		if r.status != http.StatusGatewayTimeout {
			t.Errorf("request %d: status %d, want 504; body %s", i, r.status, r.body)
		}
		if ct := r.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("request %d: Content-Type %q, want application/json", i, ct)
		}
		var e struct {
			Error struct{ Message, Type string }
		}
		if err := json.Unmarshal(r.body, &e); err != nil || e.Error.Type != "api_error" {
			t.Errorf("request %d: body %s, want an OpenAI error object of type api_error", i, r.body)
		}
		if !strings.Contains(e.Error.Message, "first-byte timeout") ||
			!strings.Contains(e.Error.Message, "the node is up") {
			t.Errorf("request %d: message %q, want the first-byte timeout on a node that is up",
				i, e.Error.Message)
		}
	}
}

func TestCoalescingOutlivesLeaderLeaving(t *testing.T) {
	// The node holds every embedding request for 2 s, then serves it.
	sim := testenv.Sim(t, "embed-e", ollamasim.Config{Faults: ollamasim.Faults{FirstByteDelay: 2 * time.Second}})
	p := testenv.Proxy(t, testenv.Config(t, sim))
	body := `{"model":"embed-e","input":["same"]}`

	ctx, leave := context.WithCancel(context.Background())
	defer leave()
	leader, waiters := coalesceBehind(t, ctx, p, sim.Server(), "/api/embed", body)
	leave()
	if r := <-leader; r.err == nil {
		t.Fatalf("the first request, whose client left, got status %d", r.status)
	}
	replies := collect(waiters, coalescedRequests-1)
	// One waiter sends the request again, and the others wait for it.
	if got := sim.Server().Requests("/api/embed"); got != 2 {
		t.Errorf("the node received %d embedding requests, want 2: the first one, "+
			"whose client left, and one for every request that waited", got)
	}
	var want []byte
	for i, r := range replies {
		if r.err != nil {
			t.Errorf("request %d: %v", i, r.err)
			continue
		}
		var e struct{ Embeddings json.RawMessage }
		if err := json.Unmarshal(r.body, &e); r.status != http.StatusOK || err != nil || len(e.Embeddings) < 4 {
			t.Errorf("request %d: status %d, body %s, want the embeddings", i, r.status, r.body)
			continue
		}
		if want == nil {
			want = e.Embeddings
		} else if !bytes.Equal(e.Embeddings, want) {
			t.Errorf("request %d: embeddings %s, want %s as the other requests got", i, e.Embeddings, want)
		}
	}
}

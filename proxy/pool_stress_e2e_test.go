package proxy_test

// Stress tests of the pooled per-request objects (exchanges, client watches
// and request records). They run real proxies and simulated nodes, and mix
// complete requests with clients that leave at random moments and with
// requests cut by upstream.total. They check that no request gets another
// request's cancellation, status or token counts, and that every node slot
// is released afterwards.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// accessRecord is the part of an access log line that the tests check.
type accessRecord struct {
	Msg              string `json:"msg"`
	RequestID        string `json:"request_id"`
	Status           int    `json:"status"`
	Node             string `json:"node"`
	CompletionTokens int64  `json:"completion_tokens"`
	Error            string `json:"error"`
}

// accessRecords returns the access log records in logs by request ID.
func accessRecords(t *testing.T, logs *testenv.LogBuffer) map[string][]accessRecord {
	t.Helper()
	out := map[string][]accessRecord{}
	for _, r := range testenv.Records[accessRecord](t, logs) {
		if r.Msg == "request" {
			out[r.RequestID] = append(out[r.RequestID], r)
		}
	}
	return out
}

// startLoggedProxy starts a proxy like testenv.Proxy does, but keeps its
// log, from Info up, as JSON in the returned buffer.
func startLoggedProxy(t *testing.T, cfg *config.Config) (*app.App, *testenv.LogBuffer) {
	t.Helper()
	return testenv.JSONProxy(t, cfg, slog.LevelInfo)
}

// stressClient returns a keep-alive HTTP client, so that later requests
// reuse the proxy connections of earlier ones.
func stressClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// stressCall is one request of a stress test. Each call generates exactly
// tokens tokens, because the simulated nodes never stop on their own before
// num_predict (or max_tokens) is reached.
type stressCall struct {
	id     string
	openAI bool // /v1/chat/completions, otherwise /api/chat
	stream bool
	model  string
	tokens int
	// unload makes the node unload the model after the request, so that
	// the next request for it waits for a cold load.
	unload bool
}

func (c stressCall) path() string {
	if c.openAI {
		return "/v1/chat/completions"
	}
	return "/api/chat"
}

func (c stressCall) body() string {
	msg := fmt.Sprintf(`[{"role":"user","content":"request %s"}]`, c.id)
	if c.openAI {
		extra := ""
		if c.stream {
			extra = `,"stream_options":{"include_usage":true}`
		}
		return fmt.Sprintf(`{"model":%q,"messages":%s,"stream":%t,"max_tokens":%d%s}`,
			c.model, msg, c.stream, c.tokens, extra)
	}
	keepAlive := ""
	if c.unload {
		keepAlive = `,"keep_alive":0`
	}
	return fmt.Sprintf(`{"model":%q,"messages":%s,"stream":%t,"options":{"num_predict":%d}%s}`,
		c.model, msg, c.stream, c.tokens, keepAlive)
}

// stressResult is the response to a stressCall, as the client received it.
type stressResult struct {
	status int
	header http.Header
	body   []byte
}

// do sends c to the proxy at base and reads the whole response.
func (c stressCall) do(ctx context.Context, client *http.Client, base string) (stressResult, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", base+c.path(), strings.NewReader(c.body()))
	if err != nil {
		return stressResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", c.id)
	resp, err := client.Do(req)
	if err != nil {
		return stressResult{}, fmt.Errorf("%s: %w", c.id, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return stressResult{}, fmt.Errorf("%s: read body: %w", c.id, err)
	}
	return stressResult{status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// checkComplete reports what is wrong with a response that should be a
// complete, well-formed response to c.
func (c stressCall) checkComplete(r stressResult) error {
	if r.status != http.StatusOK {
		return fmt.Errorf("%s: status %d, want 200; body %q", c.id, r.status, r.body)
	}
	if got := r.header.Get("X-Request-Id"); got != c.id {
		return fmt.Errorf("%s: X-Request-Id %q, want the request's own", c.id, got)
	}
	if r.header.Get("X-LLMProxy-Node") == "" {
		return fmt.Errorf("%s: no X-LLMProxy-Node header", c.id)
	}
	var err error
	switch {
	case c.openAI && c.stream:
		err = checkSSEChat(r.body, c.tokens)
	case c.openAI:
		err = checkOpenAIChat(r.body, c.tokens)
	case c.stream:
		err = checkNDJSONChat(r.body, c.tokens)
	default:
		err = checkOllamaChat(r.body, c.tokens)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", c.id, err)
	}
	return nil
}

// ollamaChatLine is the part of an Ollama chat object the tests check.
type ollamaChatLine struct {
	Error      string `json:"error"`
	Done       bool   `json:"done"`
	DoneReason string `json:"done_reason"`
	EvalCount  int    `json:"eval_count"`
	Message    struct {
		Content string `json:"content"`
	} `json:"message"`
}

// checkNDJSONChat checks a streamed /api/chat response of tokens tokens: one
// line per token and a final done line with eval_count tokens.
func checkNDJSONChat(body []byte, tokens int) error {
	lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
	if len(lines) != tokens+1 {
		return fmt.Errorf("%d lines, want %d tokens and a done line: %q", len(lines), tokens, body)
	}
	for i, raw := range lines {
		var l ollamaChatLine
		if err := json.Unmarshal([]byte(raw), &l); err != nil {
			return fmt.Errorf("line %d %q is not JSON: %v", i, raw, err)
		}
		if l.Error != "" {
			return fmt.Errorf("line %d is an error: %q", i, raw)
		}
		last := i == len(lines)-1
		if l.Done != last {
			return fmt.Errorf("line %d of %d has done %t: %q", i, len(lines), l.Done, raw)
		}
		if last && (l.EvalCount != tokens || l.DoneReason != "length") {
			return fmt.Errorf("done line %q, want eval_count %d and done_reason length", raw, tokens)
		}
	}
	return nil
}

// checkOllamaChat checks a non-streamed /api/chat response.
func checkOllamaChat(body []byte, tokens int) error {
	var l ollamaChatLine
	if err := json.Unmarshal(body, &l); err != nil {
		return fmt.Errorf("body %q is not JSON: %v", body, err)
	}
	if !l.Done || l.EvalCount != tokens || l.Message.Content == "" {
		return fmt.Errorf("body %q, want done, eval_count %d and content", body, tokens)
	}
	return nil
}

// openAIChatObject is the part of an OpenAI chat completion or chunk the
// tests check.
type openAIChatObject struct {
	Choices []struct {
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
	Error *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// checkSSEChat checks a streamed /v1/chat/completions response of tokens
// tokens with include_usage: one event per token, the finish event, the
// usage event and [DONE].
func checkSSEChat(body []byte, tokens int) error {
	events := strings.Split(strings.TrimSuffix(string(body), "\n\n"), "\n\n")
	if len(events) != tokens+3 {
		return fmt.Errorf("%d events, want %d tokens, finish, usage and [DONE]: %q",
			len(events), tokens, body)
	}
	for i, ev := range events {
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok {
			return fmt.Errorf("event %d %q has no data field", i, ev)
		}
		if i == len(events)-1 {
			if data != "[DONE]" {
				return fmt.Errorf("last event %q, want [DONE]", ev)
			}
			continue
		}
		var o openAIChatObject
		if err := json.Unmarshal([]byte(data), &o); err != nil {
			return fmt.Errorf("event %d %q is not JSON: %v", i, ev, err)
		}
		if o.Error != nil {
			return fmt.Errorf("event %d is an error: %q", i, ev)
		}
		switch {
		case i < tokens:
			if len(o.Choices) != 1 || o.Choices[0].FinishReason != nil {
				return fmt.Errorf("token event %d %q is not a plain chunk", i, ev)
			}
		case i == tokens:
			if len(o.Choices) != 1 || o.Choices[0].FinishReason == nil ||
				*o.Choices[0].FinishReason != "length" {
				return fmt.Errorf("event %d %q, want finish_reason length", i, ev)
			}
		default:
			if o.Usage == nil || o.Usage.CompletionTokens != tokens {
				return fmt.Errorf("usage event %q, want completion_tokens %d", ev, tokens)
			}
		}
	}
	return nil
}

// checkOpenAIChat checks a non-streamed /v1/chat/completions response.
func checkOpenAIChat(body []byte, tokens int) error {
	var o openAIChatObject
	if err := json.Unmarshal(body, &o); err != nil {
		return fmt.Errorf("body %q is not JSON: %v", body, err)
	}
	if o.Usage == nil || o.Usage.CompletionTokens != tokens {
		return fmt.Errorf("body %q, want usage.completion_tokens %d", body, tokens)
	}
	if len(o.Choices) != 1 || o.Choices[0].FinishReason == nil || *o.Choices[0].FinishReason != "length" {
		return fmt.Errorf("body %q, want one choice with finish_reason length", body)
	}
	return nil
}

// abandon sends c over a raw connection and closes the connection without
// reading the whole response: after delay when afterLines is 0, and
// otherwise once afterLines newlines of the response body have arrived.
// The request always reaches the proxy, so it always gets an access log
// record.
func (c stressCall) abandon(addr string, delay time.Duration, afterLines int) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	body := c.body()
	_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
		"X-Request-Id: %s\r\nContent-Length: %d\r\n\r\n%s", c.path(), addr, c.id, len(body), body)
	if err != nil {
		return fmt.Errorf("%s: send: %w", c.id, err)
	}

	if afterLines == 0 {
		time.Sleep(delay)
		return nil
	}

	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(conn)
	inBody, seen := false, 0
	for seen < afterLines {
		line, err := br.ReadString('\n')
		if err != nil {
			// The response ended first: nothing is left to abandon.
			return nil
		}
		if !inBody {
			inBody = line == "\r\n"
			continue
		}
		seen++
	}
	return nil
}

// waitSlotsReleased waits until no node of a has a request in flight and
// no request waits in its queue, and fails the test with the counts left
// otherwise.
func waitSlotsReleased(t *testing.T, a *app.App) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var busy []string
		for _, n := range a.Balancer().Nodes() {
			if in := n.Inflight(); in != 0 {
				busy = append(busy, fmt.Sprintf("%s in flight %d", n.Name, in))
			}
		}
		for class, depth := range a.Balancer().Depth() {
			if depth != 0 {
				busy = append(busy, fmt.Sprintf("%s queue depth %d", class, depth))
			}
		}
		if len(busy) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("slots not released 10s after the last request: %s", strings.Join(busy, ", "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitLogged waits until every request ID in ids has an access log record,
// and returns the records.
func waitLogged(t *testing.T, log *testenv.LogBuffer, ids []string) map[string][]accessRecord {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		recs := accessRecords(t, log)
		var missing []string
		for _, id := range ids {
			if len(recs[id]) == 0 {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			return recs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests have no access log record 10s after they ended, such as %v",
				len(missing), missing[:min(len(missing), 5)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stressSims starts n simulated nodes that have the models "m" and "cold".
// Every completion runs to num_predict, because the nodes' own completions are
// longer than any test requests.
func stressSims(t *testing.T, n int, cfg ollamasim.Config) []*ollamasim.Running {
	t.Helper()
	cfg.MinTokens, cfg.MaxTokens = 1000, 1000
	var sims []*ollamasim.Running
	for range n {
		sims = append(sims, testenv.Sim(t, "m,cold", cfg))
	}
	return sims
}

// TestPoolStressMixedClients runs many concurrent clients against one proxy
// with few slots per node: complete NDJSON, SSE and non-streamed requests,
// retries after busy responses, and clients that leave before the first
// byte, during a cold load, while queued and mid-stream. Every complete
// request must get its own well-formed response and access log record, and
// every slot must be free at the end.
func TestPoolStressMixedClients(t *testing.T) {
	sims := stressSims(t, 3, ollamasim.Config{
		Parallel:     2,
		LoadTime:     150 * time.Millisecond,
		TokensPerSec: 500,
	})
	// One node responds to 40% of inference requests with Ollama's busy 503,
	// which the proxy retries on another node.
	busy := ollamasim.Faults{ErrorRate: 0.4, ErrorStatus: 503,
		ErrorMessage: "server busy, please try again.  maximum pending requests exceeded", Seed: 7}
	if err := sims[2].Server().SetFaults(busy); err != nil {
		t.Fatal(err)
	}
	cfg := testenv.Config(t, sims...)
	for i := range cfg.Nodes {
		cfg.Nodes[i].MaxConcurrent = 2
	}
	proxy, log := startLoggedProxy(t, cfg)
	client := stressClient(t)

	const workers, rounds = 24, 14
	var seq atomic.Int64
	var mu sync.Mutex
	complete := map[string]stressCall{}
	abandoned := map[string]stressCall{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			for i := range rounds {
				n := seq.Add(1)
				c := stressCall{
					id:     fmt.Sprintf("w%d-r%d", w, i),
					openAI: rng.IntN(2) == 0,
					stream: rng.IntN(4) != 0,
					model:  "m",
					tokens: 2 + int(n%50),
				}
				if rng.IntN(3) == 0 {
					c.model, c.unload = "cold", !c.openAI
				}
				kind := rng.IntN(10)
				if kind >= 4 {
					mu.Lock()
					complete[c.id] = c
					mu.Unlock()
					r, err := c.do(context.Background(), client, proxy.URL())
					if err == nil {
						err = c.checkComplete(r)
					}
					if err != nil {
						t.Error(err)
					}
					continue
				}
				c.id = "abandon-" + c.id
				mu.Lock()
				abandoned[c.id] = c
				mu.Unlock()
				var err error
				switch kind {
				case 0: // before the first byte, possibly before the watch starts
					err = c.abandon(proxy.Addr(), time.Duration(rng.IntN(5))*time.Millisecond, 0)
				case 1, 2: // during a cold load, while queued or during generation
					err = c.abandon(proxy.Addr(), time.Duration(10+rng.IntN(200))*time.Millisecond, 0)
				default: // mid-stream
					c.stream, c.tokens = true, 20+int(n%30)
					mu.Lock()
					abandoned[c.id] = c
					mu.Unlock()
					err = c.abandon(proxy.Addr(), 0, 1+rng.IntN(10))
				}
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()

	waitSlotsReleased(t, proxy)
	var ids []string
	for id := range complete {
		ids = append(ids, id)
	}
	for id := range abandoned {
		ids = append(ids, id)
	}
	recs := waitLogged(t, log, ids)
	for id, c := range complete {
		if len(recs[id]) != 1 {
			t.Errorf("%s: %d access log records, want 1: %+v", id, len(recs[id]), recs[id])
			continue
		}
		r := recs[id][0]
		if r.Status != 200 || r.Error != "" || int(r.CompletionTokens) != c.tokens || r.Node == "" {
			t.Errorf("%s: access log %+v, want status 200, no error, %d completion tokens and a node",
				id, r, c.tokens)
		}
	}
	statuses := map[int]int{}
	for id, c := range abandoned {
		for _, r := range recs[id] {
			statuses[r.Status]++
		}
		if len(recs[id]) != 1 {
			t.Errorf("%s: %d access log records, want 1: %+v", id, len(recs[id]), recs[id])
			continue
		}
		r := recs[id][0]
		if r.Status != 200 && r.Status != 499 {
			t.Errorf("%s: access log status %d, want 499 (or 200 if it completed first): %+v",
				id, r.Status, r)
		}
		// A stream left early is charged about one token per chunk sent,
		// at most its own count and the final chunks of an SSE stream.
		if r.CompletionTokens < 0 || int(r.CompletionTokens) > c.tokens+2 {
			t.Errorf("%s: access log has %d completion tokens, want 0 to its own %d",
				id, r.CompletionTokens, c.tokens)
		}
	}
	t.Logf("%d complete requests; abandoned requests by logged status: %v", len(complete), statuses)
	for _, n := range proxy.Balancer().Nodes() {
		if !n.Usable() {
			t.Errorf("node %s is not usable after the run: clients leaving or busy answers counted against it",
				n.Name)
		}
	}
}

// TestPoolStressTotalNextToUnlimited runs two proxies in one process, so
// that they share the object pools, in front of the same slow nodes: one
// with a short upstream.total, one with none. Long requests on the first
// must be cut by upstream.total with an error in the stream's own format,
// while the short requests on it and every request on the second proxy,
// which outlast the first proxy's limit, complete in full.
func TestPoolStressTotalNextToUnlimited(t *testing.T) {
	const total = 2 * time.Second
	sims := stressSims(t, 2, ollamasim.Config{Parallel: 64, TokensPerSec: 40})
	limitedCfg := testenv.Config(t, sims...)
	limitedCfg.Upstream.Total = total
	unlimitedCfg := testenv.Config(t, sims...)
	for _, c := range []*config.Config{limitedCfg, unlimitedCfg} {
		for i := range c.Nodes {
			c.Nodes[i].MaxConcurrent = 64
		}
	}
	limited, limitedLog := startLoggedProxy(t, limitedCfg)
	unlimited, unlimitedLog := startLoggedProxy(t, unlimitedCfg)
	client := stressClient(t)

	type job struct {
		call  stressCall
		proxy *app.App
		// cut is set for requests that outlast upstream.total.
		cut bool
		// abandonAfter, when positive, closes the connection this long after
		// the request was sent.
		abandonAfter time.Duration
	}
	var jobs []job
	for wave := range 2 {
		for i := range 8 {
			id := func(kind string) string { return fmt.Sprintf("%s-%d-%d", kind, wave, i) }
			openAI := i%2 == 0
			jobs = append(jobs,
				// At 40 tokens per second, 400 tokens take 10s, well past total.
				job{call: stressCall{id: id("cut"), openAI: openAI, stream: true, model: "m", tokens: 400},
					proxy: limited, cut: true},
				job{call: stressCall{id: id("cut-whole"), openAI: openAI, model: "m", tokens: 400},
					proxy: limited, cut: true},
				job{call: stressCall{id: id("short"), openAI: openAI, stream: i%4 != 1, model: "m", tokens: 2 + i},
					proxy: limited},
				// 100 tokens take 2.5s, longer than the limited proxy's total.
				job{call: stressCall{id: id("long"), openAI: openAI, stream: i%4 != 1, model: "m", tokens: 100 + i},
					proxy: unlimited},
				job{call: stressCall{id: id("abandon-limited"), stream: true, model: "m", tokens: 300},
					proxy: limited, abandonAfter: time.Duration(100+200*i) * time.Millisecond},
				job{call: stressCall{id: id("abandon-unlimited"), openAI: openAI, stream: true, model: "m", tokens: 300},
					proxy: unlimited, abandonAfter: time.Duration(100+300*i) * time.Millisecond},
			)
		}
	}

	run := func(j job) error {
		if j.abandonAfter > 0 {
			return j.call.abandon(j.proxy.Addr(), j.abandonAfter, 0)
		}
		r, err := j.call.do(context.Background(), client, j.proxy.URL())
		if err != nil {
			return err
		}
		if !j.cut {
			return j.call.checkComplete(r)
		}
		return checkCutByTotal(j.call, r)
	}
	for wave := range 2 {
		var wg sync.WaitGroup
		for _, j := range jobs[wave*len(jobs)/2 : (wave+1)*len(jobs)/2] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := run(j); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}

	waitSlotsReleased(t, limited)
	waitSlotsReleased(t, unlimited)
	logs := map[*app.App]*testenv.LogBuffer{limited: limitedLog, unlimited: unlimitedLog}
	for _, j := range jobs {
		recs := waitLogged(t, logs[j.proxy], []string{j.call.id})[j.call.id]
		if len(recs) != 1 {
			t.Errorf("%s: %d access log records, want 1: %+v", j.call.id, len(recs), recs)
			continue
		}
		r := recs[0]
		switch {
		case j.abandonAfter > 0:
			// TestPoolStressLeftStreamsNotNodeFailures checks how a client
			// that leaves a stream is logged.
			// It is charged the chunks it was sent.
			if strings.Contains(r.Error, "upstream.total") || !chargedAtMost(r.CompletionTokens, j.call.tokens) {
				t.Errorf("%s: access log %+v, want no upstream.total error and at most %d tokens",
					j.call.id, r, j.call.tokens)
			}
		case j.cut:
			if !strings.Contains(r.Error, "upstream.total") || !chargedAtMost(r.CompletionTokens, j.call.tokens) {
				t.Errorf("%s: access log %+v, want an upstream.total error and at most %d tokens",
					j.call.id, r, j.call.tokens)
			}
		default:
			if r.Status != 200 || r.Error != "" || int(r.CompletionTokens) != j.call.tokens {
				t.Errorf("%s: access log %+v, want status 200, no error and %d completion tokens",
					j.call.id, r, j.call.tokens)
			}
		}
	}
	for _, a := range []*app.App{limited, unlimited} {
		for _, n := range a.Balancer().Nodes() {
			if !n.Usable() {
				t.Errorf("node %s is not usable: upstream.total or clients leaving counted against it", n.Name)
			}
		}
	}
}

// checkCutByTotal checks the response to a request that outlasted
// upstream.total: a 504 when nothing had been sent yet, or else a stream
// that ends with an error in its own format and has no final object.
func checkCutByTotal(c stressCall, r stressResult) error {
	if got := r.header.Get("X-Request-Id"); got != c.id {
		return fmt.Errorf("%s: X-Request-Id %q, want the request's own", c.id, got)
	}
	if !c.stream || r.status == http.StatusGatewayTimeout {
		if r.status != http.StatusGatewayTimeout {
			return fmt.Errorf("%s: status %d, want 504; body %q", c.id, r.status, r.body)
		}
		return nil
	}
	if r.status != http.StatusOK {
		return fmt.Errorf("%s: status %d, want 200 with a cut stream; body %q", c.id, r.status, r.body)
	}
	body := strings.TrimRight(string(r.body), "\n")
	last := body[strings.LastIndex(body, "\n")+1:]
	if c.openAI {
		data, ok := strings.CutPrefix(last, "data: ")
		var o openAIChatObject
		if !ok || json.Unmarshal([]byte(data), &o) != nil || o.Error == nil ||
			!strings.Contains(o.Error.Message, "upstream.total") {
			return fmt.Errorf("%s: last event %q, want an error naming upstream.total", c.id, last)
		}
		if strings.Contains(body, `"usage"`) || strings.Contains(body, "[DONE]") {
			return fmt.Errorf("%s: a cut stream has a usage event or [DONE]: %q", c.id, body)
		}
		return nil
	}
	var l ollamaChatLine
	if json.Unmarshal([]byte(last), &l) != nil || !strings.Contains(l.Error, "upstream.total") {
		return fmt.Errorf("%s: last line %q, want an error naming upstream.total", c.id, last)
	}
	if strings.Contains(body, `"done":true`) {
		return fmt.Errorf("%s: a cut stream has a done line: %q", c.id, body)
	}
	return nil
}

// slowBodyHeader marks the requests that slowBodyNode responds to itself.
const slowBodyHeader = "X-Test-Slow-Body"

// slowBodyNode starts a simulated node with the model "m" that responds to
// requests carrying slowBodyHeader with a non-streamed chat response whose
// second half comes pause after the first. Other requests reach the
// simulator.
func slowBodyNode(t *testing.T, pause time.Duration) string {
	t.Helper()
	specs, err := ollamasim.ParseModels("m")
	if err != nil {
		t.Fatal(err)
	}
	sim := ollamasim.New(ollamasim.Config{Models: specs, Logger: testenv.Logger()})
	body := []byte(`{"model":"m","created_at":"2025-01-01T00:00:00Z",` +
		`"message":{"role":"assistant","content":"one two three"},` +
		`"done":true,"done_reason":"stop","eval_count":3}`)

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(slowBodyHeader) == "" {
			sim.ServeHTTP(w, r)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body[:len(body)/2])
		_ = http.NewResponseController(w).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-time.After(pause):
		}
		_, _ = w.Write(body[len(body)/2:])
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		_ = sim.Close()
	})
	return "http://" + ln.Addr().String()
}

// TestPoolStressTotalCutsNonStreamedBody sends non-streamed requests whose
// response body outlasts upstream.total. The proxy must report the proxy's
// own limit, as it does for streams, and must not count the cut against
// the node, so that healthy nodes stay in rotation.
func TestPoolStressTotalCutsNonStreamedBody(t *testing.T) {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Nodes = nil
	for i := range 2 {
		node := config.DefaultNode(slowBodyNode(t, 5*time.Second))
		node.Name = fmt.Sprintf("n%d", i)
		cfg.Nodes = append(cfg.Nodes, node)
	}
	cfg.Health.Interval = 200 * time.Millisecond
	cfg.Discovery.Interval = 200 * time.Millisecond
	cfg.RateLimit.PerAddress, cfg.RateLimit.Burst = 0, 0
	cfg.Upstream.Total = 500 * time.Millisecond
	proxy, log := startLoggedProxy(t, &cfg)

	// The passive check takes a node out after health.max_fails failures
	// while another node is usable, so one more cut than that shows whether
	// cuts count against the node.
	cuts := cfg.Health.MaxFails + 1
	for i := range cuts {
		id := fmt.Sprintf("slow-body-%d", i)
		resp := post(t, proxy.URL()+"/api/chat",
			`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false}`,
			slowBodyHeader, "1", "X-Request-Id", id)
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusGatewayTimeout {
			t.Errorf("%s: status %d, want 504; body %q", id, resp.StatusCode, body)
		}
		if !strings.Contains(string(body), "upstream.total") {
			t.Errorf("%s: body %q, want an error naming upstream.total", id, body)
		}
		if strings.Contains(string(body), "context deadline exceeded") {
			t.Errorf("%s: body %q quotes Go's context error", id, body)
		}
	}
	recs := accessRecords(t, log)
	for i := range cuts {
		id := fmt.Sprintf("slow-body-%d", i)
		for _, r := range recs[id] {
			if !strings.Contains(r.Error, "upstream.total") {
				t.Errorf("%s: access log error %q, want one naming upstream.total", id, r.Error)
			}
		}
	}
	for _, n := range proxy.Balancer().Nodes() {
		if got := nodeFailures(t, proxy, n.Name); got != "" {
			t.Errorf("cuts by upstream.total counted against node %s: %s", n.Name, got)
		}
		if !n.Usable() {
			t.Errorf("node %s was taken out of rotation by cuts of upstream.total", n.Name)
		}
	}

	c := stressCall{id: "after-cuts", model: "m", tokens: 3}
	r, err := c.do(context.Background(), stressClient(t), proxy.URL())
	if err == nil {
		err = c.checkComplete(r)
	}
	if err != nil {
		t.Errorf("request after the cuts: %v", err)
	}
	waitSlotsReleased(t, proxy)
}

// nodeFailures returns the lines of the proxy's /metrics that count
// failures against node, or "" when there are none.
func nodeFailures(t *testing.T, a *app.App, node string) string {
	t.Helper()
	resp, err := http.Get(a.URL() + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	body := readBody(t, resp)
	var found []string
	for line := range strings.SplitSeq(string(body), "\n") {
		if strings.HasPrefix(line, "llmproxy_node_failures_total{") &&
			strings.Contains(line, `node="`+node+`"`) && !strings.HasSuffix(line, " 0") {
			found = append(found, line)
		}
	}
	return strings.Join(found, "; ")
}

// TestPoolStressLeftStreamsNotNodeFailures has many clients close the
// connection at set moments of slow streams without reading them. Each must be logged as a client that closed the connection
// (499), or as complete when the whole stream had been sent, and none may
// count as a failure of the node that was streaming.
func TestPoolStressLeftStreamsNotNodeFailures(t *testing.T) {
	// At 40 tokens per second a stream of 100 tokens lasts 2.5s, so the
	// relay mostly waits on the node when the client leaves.
	sims := stressSims(t, 2, ollamasim.Config{Parallel: 32, TokensPerSec: 40})
	cfg := testenv.Config(t, sims...)
	for i := range cfg.Nodes {
		cfg.Nodes[i].MaxConcurrent = 32
	}
	proxy, log := startLoggedProxy(t, cfg)

	const workers, rounds = 32, 12
	calls := map[string]stressCall{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				c := stressCall{id: fmt.Sprintf("left-%d-%d", w, i), openAI: (w+i)%2 == 0,
					stream: true, model: "m", tokens: 100}
				mu.Lock()
				calls[c.id] = c
				mu.Unlock()
				delay := time.Duration(30+(w*rounds+i)*37%400) * time.Millisecond
				if err := c.abandon(proxy.Addr(), delay, 0); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()

	waitSlotsReleased(t, proxy)
	var ids []string
	for id := range calls {
		ids = append(ids, id)
	}
	recs := waitLogged(t, log, ids)
	for id, c := range calls {
		for _, r := range recs[id] {
			left := r.Status == 499 && r.Error == "client closed the connection"
			complete := r.Status == 200 && r.Error == "" && int(r.CompletionTokens) == c.tokens
			if !left && !complete {
				t.Errorf("%s: access log %+v, want status 499 for a client that left", id, r)
			}
		}
	}
	for _, n := range proxy.Balancer().Nodes() {
		if got := nodeFailures(t, proxy, n.Name); got != "" {
			t.Errorf("clients leaving streams counted against node %s: %s", n.Name, got)
		}
	}
}

// chargedAtMost reports whether a request cut short was charged between 0
// and its full count of tokens, allowing the final chunks of an SSE stream.
// A full count of 0 means the count is not known.
func chargedAtMost(charged int64, full int) bool {
	return charged >= 0 && (full <= 0 || charged <= int64(full)+2)
}

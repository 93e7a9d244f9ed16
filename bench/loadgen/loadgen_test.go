package loadgen

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/ollamasim"
)

const testModel = "llama3:8b"

// startNode starts a simulated node on loopback that streams at
// tokensPerSec and stops it when the test ends.
func startNode(t *testing.T, tokensPerSec float64, faults ollamasim.Faults) string {
	t.Helper()
	srv := ollamasim.New(ollamasim.Config{
		Models:       []ollamasim.ModelSpec{{Name: testModel}},
		Parallel:     16,
		TokensPerSec: tokensPerSec,
		Faults:       faults,
	})
	running, err := srv.Start("127.0.0.1:0")
	if err != nil {
		t.Fatalf("start node: %v", err)
	}
	t.Cleanup(func() {
		if err := running.Close(); err != nil {
			t.Errorf("close node: %v", err)
		}
	})
	return running.URL()
}

var generate = Request{
	Path: "/api/generate",
	Body: []byte(`{"model":"` + testModel + `","prompt":"hi","stream":false,"options":{"num_predict":2}}`),
}

func newClient(t *testing.T, url string) *Client {
	t.Helper()
	c, err := NewClient([]string{url}, 8)
	if err != nil {
		t.Fatalf("new client: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestRunClosedCountsAnswers(t *testing.T) {
	c := newClient(t, startNode(t, 0, ollamasim.Faults{}))
	res := RunClosed(context.Background(), c, ClosedLoop{Conns: 4, Duration: 300 * time.Millisecond, Request: generate})
	if res.Errors != 0 {
		t.Fatalf("errors = %d, first: %s", res.Errors, res.FirstError)
	}
	if res.Requests == 0 {
		t.Fatal("no request answered")
	}
	if res.Latency.Count != int(res.Requests) {
		t.Errorf("latency samples = %d, want one per answer (%d)", res.Latency.Count, res.Requests)
	}
}

func TestRunClosedCountsErrors(t *testing.T) {
	c := newClient(t, startNode(t, 0, ollamasim.Faults{ErrorRate: 1}))
	res := RunClosed(context.Background(), c, ClosedLoop{Conns: 2, Duration: 100 * time.Millisecond, Request: generate})
	if res.Requests != 0 {
		t.Errorf("requests = %d, want 0 when every request fails", res.Requests)
	}
	if res.Errors == 0 {
		t.Fatal("no error counted")
	}
	if !strings.Contains(res.FirstError, "status 500") {
		t.Errorf("first error = %q, want status 500", res.FirstError)
	}
}

func TestRunOpenSendsEveryRequestDue(t *testing.T) {
	c := newClient(t, startNode(t, 0, ollamasim.Faults{}))
	res := RunOpen(context.Background(), c, OpenLoop{
		Rate: 200, Duration: 500 * time.Millisecond, Workers: 8, Request: generate,
	})
	if res.Errors != 0 {
		t.Fatalf("errors = %d, first: %s", res.Errors, res.FirstError)
	}
	if res.Requests != 100 {
		t.Errorf("requests = %d, want 200/s * 0.5s = 100", res.Requests)
	}
}

func streamLoad(url string, format Format) StreamLoad {
	load := StreamLoad{
		URLs: []string{url}, Format: NDJSON, Path: "/api/chat",
		Body:    []byte(`{"model":"` + testModel + `","messages":[{"role":"user","content":"hi"}]}`),
		Streams: 4, Ramp: 50 * time.Millisecond, Duration: 500 * time.Millisecond,
	}
	if format == SSE {
		load.Format, load.Path = SSE, "/v1/chat/completions"
		load.Body = []byte(`{"model":"` + testModel + `","stream":true,` +
			`"messages":[{"role":"user","content":"hi"}]}`)
	}
	return load
}

func TestRunStreamsNDJSON(t *testing.T) {
	url := startNode(t, 400, ollamasim.Faults{})
	res := RunStreams(context.Background(), streamLoad(url, NDJSON))
	if res.Errors != 0 {
		t.Fatalf("errors = %d, first: %s", res.Errors, res.FirstError)
	}
	if res.Streams == 0 {
		t.Fatal("no stream completed")
	}
	if res.TTFB.Count == 0 {
		t.Error("no TTFB sample")
	}
	if res.ChunkLatency.Count == 0 {
		t.Error("no chunk latency sample from created_at")
	}
	if res.ChunkLatency.P50 < 0 || res.ChunkLatency.P50 > 100*time.Millisecond {
		t.Errorf("chunk latency p50 = %v, want between 0 and 100ms on loopback", res.ChunkLatency.P50)
	}
	// 400 tokens per second is a chunk every 2.5 ms.
	if res.Gap.P50 < time.Millisecond || res.Gap.P50 > 20*time.Millisecond {
		t.Errorf("gap p50 = %v, want about 2.5ms", res.Gap.P50)
	}
}

func TestRunStreamsSSE(t *testing.T) {
	url := startNode(t, 400, ollamasim.Faults{})
	res := RunStreams(context.Background(), streamLoad(url, SSE))
	if res.Errors != 0 {
		t.Fatalf("errors = %d, first: %s", res.Errors, res.FirstError)
	}
	if res.Streams == 0 {
		t.Fatal("no stream completed")
	}
	if res.ChunkLatency.Count != 0 {
		t.Errorf("chunk latency samples = %d, want none for SSE without sent_at",
			res.ChunkLatency.Count)
	}
	if res.Gap.Count == 0 {
		t.Error("no gap sample")
	}
}

func TestRunStreamsCountsCutStreams(t *testing.T) {
	url := startNode(t, 400, ollamasim.Faults{CutAfterChunks: 3})
	res := RunStreams(context.Background(), streamLoad(url, NDJSON))
	if res.Streams != 0 {
		t.Errorf("streams done = %d, want 0 when every stream is cut", res.Streams)
	}
	if res.Errors == 0 {
		t.Fatal("no error counted for cut streams")
	}
}

func TestPercentile(t *testing.T) {
	sorted := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	tests := []struct {
		q    float64
		want time.Duration
	}{
		{0.5, 5},
		{0.9, 9},
		{0.99, 10},
		{1, 10},
		{0.01, 1},
	}
	for _, tt := range tests {
		if got := Percentile(sorted, tt.q); got != tt.want {
			t.Errorf("Percentile(1..10, %v) = %v, want %v", tt.q, got, tt.want)
		}
	}
	if got := Percentile(nil, 0.5); got != 0 {
		t.Errorf("Percentile(empty) = %v, want 0", got)
	}
}

func TestTimeField(t *testing.T) {
	want := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	tests := []struct {
		name string
		key  []byte
		line string
		ok   bool
	}{
		{"chat line", createdAtKey, `{"model":"m","created_at":"2026-01-02T03:04:05.123456789Z","message":{}}`, true},
		{"stamped event", sentAtKey, `{"sent_at":"2026-01-02T03:04:05.123456789Z","id":"chatcmpl-1"}`, true},
		{"event without stamp", sentAtKey, `{"id":"chatcmpl-1","created":1767323045}`, false},
		{"no field", createdAtKey, `{"model":"m","done":true}`, false},
		{"unterminated", createdAtKey, `{"created_at":"2026-01-02T03:04`, false},
		{"not a time", createdAtKey, `{"created_at":"yesterday"}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := timeField([]byte(tt.line), tt.key)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if ok && !got.Equal(want) {
				t.Errorf("time = %v, want %v", got, want)
			}
		})
	}
}

func TestRunTraceReusesPromptCache(t *testing.T) {
	url := startNode(t, 400, ollamasim.Faults{})
	long := strings.Repeat("river stone garden lantern ", 20)
	results := RunTrace(context.Background(), Trace{
		BaseURL: url,
		Conversations: []Conversation{{
			Model:  testModel,
			Class:  "batch",
			System: "You are terse.",
			Turns:  []string{long, "and then?", "why?"},
			Think:  []time.Duration{time.Millisecond, time.Millisecond},
		}},
		Deadline: 10 * time.Second,
	})
	if len(results) != 3 {
		t.Fatalf("results = %d, want one per turn (3)", len(results))
	}
	for i, r := range results {
		if r.Err != nil {
			t.Fatalf("turn %d: %v", i+1, r.Err)
		}
		if r.TTFT <= 0 {
			t.Errorf("turn %d: TTFT = %v, want > 0", i+1, r.TTFT)
		}
		if r.Class != "batch" || r.Model != testModel {
			t.Errorf("turn %d: class %q, model %q, want batch and %s", i+1, r.Class, r.Model, testModel)
		}
	}
	// The node's slot holds the first turn, so the second evaluates only
	// its new message.
	if results[1].PromptEvalCount >= results[0].PromptEvalCount {
		t.Errorf("prompt tokens evaluated: turn 2 %d, turn 1 %d, want fewer in turn 2",
			results[1].PromptEvalCount, results[0].PromptEvalCount)
	}
}

func TestRunTraceStopsAtDeadline(t *testing.T) {
	url := startNode(t, 400, ollamasim.Faults{})
	results := RunTrace(context.Background(), Trace{
		BaseURL: url,
		Conversations: []Conversation{{
			Start: time.Hour, Model: testModel, Turns: []string{"hi", "again"},
			Think: []time.Duration{time.Millisecond},
		}},
		Deadline: 50 * time.Millisecond,
	})
	for i, r := range results {
		if !errors.Is(r.Err, ErrDeadline) {
			t.Errorf("turn %d: error = %v, want ErrDeadline", i+1, r.Err)
		}
	}
}

func TestRunTraceSkipsAfterFailure(t *testing.T) {
	url := startNode(t, 400, ollamasim.Faults{ErrorRate: 1})
	results := RunTrace(context.Background(), Trace{
		BaseURL: url,
		Conversations: []Conversation{{
			Model: testModel, Turns: []string{"hi", "again"}, Think: []time.Duration{time.Millisecond},
		}},
		Deadline: 10 * time.Second,
	})
	var status *StatusError
	if !errors.As(results[0].Err, &status) || status.Status != 500 {
		t.Errorf("turn 1: error = %v, want status 500", results[0].Err)
	}
	if !errors.Is(results[1].Err, ErrSkipped) {
		t.Errorf("turn 2: error = %v, want ErrSkipped", results[1].Err)
	}
}

func TestRunOpenCountsErrorKinds(t *testing.T) {
	c := newClient(t, startNode(t, 0, ollamasim.Faults{ErrorRate: 1}))
	res := RunOpen(context.Background(), c, OpenLoop{
		Rate: 100, Duration: 100 * time.Millisecond, Workers: 4, Request: generate,
	})
	if got := res.ErrorKinds["status 500"]; got != res.Errors || got == 0 {
		t.Errorf("error kinds = %v, want all %d errors as status 500", res.ErrorKinds, res.Errors)
	}
}

func TestDoHeaderReturnsHeader(t *testing.T) {
	c := newClient(t, startNode(t, 0, ollamasim.Faults{}))
	got, err := c.DoHeader(generate, "Content-Type")
	if err != nil {
		t.Fatalf("DoHeader: %v", err)
	}
	if !strings.HasPrefix(got, "application/json") {
		t.Errorf("Content-Type = %q, want application/json", got)
	}
}

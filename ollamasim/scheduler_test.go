package ollamasim_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/ollamasim"
)

// result is the end of a request run in the background.
type result struct {
	status int
	body   []byte
	err    error
}

// launch sends a POST in the background and returns a function that
// cancels it and a channel that receives its result.
func (n *node) launch(t *testing.T, path, body string) (context.CancelFunc, <-chan result) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan result, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.URL()+path, strings.NewReader(body))
		if err != nil {
			done <- result{err: err}
			return
		}
		resp, err := n.http.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		done <- result{status: resp.StatusCode, body: data, err: err}
	}()
	return cancel, done
}

// await returns the result of a background request, failing the test if it
// takes more than ten seconds.
func await(t *testing.T, done <-chan result) result {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("request did not finish")
		return result{}
	}
}

// longAnswers makes every completion take about ten seconds, so requests
// hold their slots until the test cancels them.
var longAnswers = ollamasim.Config{TokensPerSec: 100, MinTokens: 1000, MaxTokens: 1000}

const longGenerate = `{"model":"llama3:8b","prompt":"hold the slot"}`

func TestSlotsLimitConcurrency(t *testing.T) {
	cfg := longAnswers
	cfg.Parallel = 2
	n := startNode(t, cfg)

	var cancels []context.CancelFunc
	for range 5 {
		cancel, _ := n.launch(t, "/api/generate", longGenerate)
		cancels = append(cancels, cancel)
	}
	n.waitFor(t, "two running and three waiting", func(s ollamasim.Stats) bool {
		return s.Active == 2 && s.Waiting == 3
	})
	if got := n.srv.InFlight(); got != 5 {
		t.Errorf("InFlight = %d, want 5", got)
	}

	for _, cancel := range cancels {
		cancel()
	}
	n.waitFor(t, "all requests gone", func(s ollamasim.Stats) bool {
		return s.Active == 0 && s.Waiting == 0 && s.InFlight == 0
	})
	if got := n.srv.Cancelled(); got != 5 {
		t.Errorf("Cancelled = %d, want 5", got)
	}
}

func TestQueueFullAnswersBusy(t *testing.T) {
	cfg := longAnswers
	cfg.Parallel = 1
	cfg.MaxQueue = 1
	n := startNode(t, cfg)

	n.launch(t, "/api/generate", longGenerate)
	n.waitFor(t, "one running", func(s ollamasim.Stats) bool { return s.Active == 1 })
	n.launch(t, "/api/generate", longGenerate)
	n.waitFor(t, "one waiting", func(s ollamasim.Stats) bool { return s.Waiting == 1 })

	status, body := n.post(t, "/api/generate", longGenerate)
	want := `{"error":"server busy, please try again.  maximum pending requests exceeded"}`
	if status != http.StatusServiceUnavailable || string(body) != want {
		t.Errorf("third request: status %d, body %s; want 503 %s", status, body, want)
	}
	status, body = n.post(t, "/v1/chat/completions",
		`{"model":"llama3:8b","messages":[{"role":"user","content":"hi"}]}`)
	if status != http.StatusServiceUnavailable || !strings.Contains(string(body), `"type":"api_error"`) {
		t.Errorf("/v1 request: status %d, body %s; want 503 in OpenAI shape", status, body)
	}
	if got := n.srv.Stats().Rejected; got != 2 {
		t.Errorf("Rejected = %d, want 2", got)
	}
}

func TestQueueIsFIFO(t *testing.T) {
	cfg := longAnswers
	cfg.Parallel = 1
	n := startNode(t, cfg)

	cancelFirst, _ := n.launch(t, "/api/generate", longGenerate)
	n.waitFor(t, "one running", func(s ollamasim.Stats) bool { return s.Active == 1 })
	short := `{"model":"llama3:8b","prompt":"%s","stream":false,"options":{"num_predict":2}}`
	_, second := n.launch(t, "/api/generate", fmt.Sprintf(short, "second"))
	n.waitFor(t, "one waiting", func(s ollamasim.Stats) bool { return s.Waiting == 1 })
	_, third := n.launch(t, "/api/generate", fmt.Sprintf(short, "third"))
	n.waitFor(t, "two waiting", func(s ollamasim.Stats) bool { return s.Waiting == 2 })

	cancelFirst()
	secondAt := createdAt(t, await(t, second))
	thirdAt := createdAt(t, await(t, third))
	if !secondAt.Before(thirdAt) {
		t.Errorf("second request finished at %v, after the third at %v", secondAt, thirdAt)
	}
}

func createdAt(t *testing.T, r result) time.Time {
	t.Helper()
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("request: status %d, error %v, body %s", r.status, r.err, r.body)
	}
	var line struct {
		CreatedAt time.Time `json:"created_at"`
	}
	if err := json.Unmarshal(r.body, &line); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
	return line.CreatedAt
}

func TestColdLoadCountedOnce(t *testing.T) {
	const loadTime = 50 * time.Millisecond
	n := startNode(t, ollamasim.Config{LoadTime: loadTime})
	body := `{"model":"llama3:8b","prompt":"hi","stream":false,"options":{"num_predict":2}}`

	var dones []<-chan result
	for range 3 {
		_, done := n.launch(t, "/api/generate", body)
		dones = append(dones, done)
	}
	// The request that starts the load waits all of it; later ones wait
	// for the rest.
	var longest time.Duration
	for i, done := range dones {
		r := await(t, done)
		var line generateResult
		if err := json.Unmarshal(r.body, &line); err != nil || r.status != http.StatusOK {
			t.Fatalf("request %d: status %d, body %s", i, r.status, r.body)
		}
		longest = max(longest, time.Duration(line.LoadDuration))
	}
	if longest < loadTime {
		t.Errorf("longest load_duration %v, want at least the load time %v", longest, loadTime)
	}
	if got := n.srv.Loads("llama3:8b"); got != 1 {
		t.Errorf("Loads = %d after concurrent cold requests, want 1", got)
	}

	warm := n.generate(t, "/api/generate", body)
	if time.Duration(warm.LoadDuration) >= loadTime {
		t.Errorf("warm request: load_duration %v, want less than the load time", time.Duration(warm.LoadDuration))
	}
	if got := n.srv.Loads("LLaMA3:8b"); got != 1 {
		t.Errorf("Loads = %d after a warm request, want 1", got)
	}
}

func TestKeepAliveZeroUnloads(t *testing.T) {
	n := startNode(t, ollamasim.Config{})

	if r := n.generate(t, "/api/generate", `{"model":"llama3:8b"}`); r.DoneReason != "load" {
		t.Errorf("preload done_reason = %q, want load", r.DoneReason)
	}
	if got := n.srv.LoadedModels(); !slices.Equal(got, []string{"llama3:8b"}) {
		t.Fatalf("LoadedModels = %v after preload", got)
	}
	if r := n.generate(t, "/api/generate", `{"model":"llama3:8b","keep_alive":0}`); r.DoneReason != "unload" {
		t.Errorf("unload done_reason = %q, want unload", r.DoneReason)
	}
	if got := n.srv.LoadedModels(); len(got) != 0 {
		t.Errorf("LoadedModels = %v after keep_alive 0", got)
	}
	if _, body := n.get(t, "/api/ps"); string(body) != `{"models":[]}` {
		t.Errorf("/api/ps = %s, want no models", body)
	}

	chat := n.generate(t, "/api/chat", `{"model":"qwen2.5:7b","messages":[],"keep_alive":"0s"}`)
	if chat.DoneReason != "unload" || chat.Message.Role != "assistant" {
		t.Errorf("chat unload = %+v", chat)
	}

	n.generate(t, "/api/generate", `{"model":"llama3:8b","prompt":"hi","stream":false,"keep_alive":0}`)
	n.waitFor(t, "unload after the answer", func(s ollamasim.Stats) bool { return len(s.Loaded) == 0 })
}

func TestPreloadSkipsBusySlots(t *testing.T) {
	cfg := longAnswers
	cfg.Parallel = 1
	n := startNode(t, cfg)
	n.launch(t, "/api/generate", longGenerate)
	n.waitFor(t, "the only slot busy", func(s ollamasim.Stats) bool { return s.Active == 1 })

	if r := n.generate(t, "/api/generate", `{"model":"llama3:8b"}`); r.DoneReason != "load" {
		t.Errorf("preload done_reason = %q, want load", r.DoneReason)
	}
	if got := n.srv.Stats().Waiting; got != 0 {
		t.Errorf("Waiting = %d after the preload, want 0", got)
	}
}

func TestKeepAliveExpires(t *testing.T) {
	tests := []struct {
		name      string
		cfg       ollamasim.Config
		keepAlive string
	}{
		{"config default", ollamasim.Config{KeepAlive: 30 * time.Millisecond}, ""},
		{"duration string", ollamasim.Config{}, `,"keep_alive":"30ms"`},
		{"seconds", ollamasim.Config{}, `,"keep_alive":0.03`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := startNode(t, tt.cfg)
			n.generate(t, "/api/generate", `{"model":"llama3:8b"`+tt.keepAlive+`}`)
			n.waitFor(t, "expiry", func(s ollamasim.Stats) bool { return len(s.Loaded) == 0 })
		})
	}
}

func TestKeepAliveNegativeIsForever(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	n.generate(t, "/api/generate", `{"model":"llama3:8b","keep_alive":-1}`)

	_, body := n.get(t, "/api/ps")
	var ps struct {
		Models []struct {
			ExpiresAt time.Time `json:"expires_at"`
		} `json:"models"`
	}
	if err := json.Unmarshal(body, &ps); err != nil || len(ps.Models) != 1 {
		t.Fatalf("/api/ps = %s (%v)", body, err)
	}
	if year := ps.Models[0].ExpiresAt.Year(); year < 2200 {
		t.Errorf("expires_at year %d, want centuries ahead", year)
	}
}

func TestNumCtxChangeReloads(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	contextLength := func() int {
		_, body := n.get(t, "/api/ps")
		var ps struct {
			Models []struct {
				ContextLength int `json:"context_length"`
			} `json:"models"`
		}
		if err := json.Unmarshal(body, &ps); err != nil || len(ps.Models) != 1 {
			t.Fatalf("/api/ps = %s (%v)", body, err)
		}
		return ps.Models[0].ContextLength
	}

	steps := []struct {
		options     string
		wantContext int
		wantLoads   int64
	}{
		{`{"num_ctx":2048}`, 2048, 1},
		{`{"num_ctx":2048}`, 2048, 1},
		{`{}`, ollamasim.DefaultContextLength, 2},
		{`{"num_ctx":100000}`, 8192, 3}, // clamped to the model's context length
	}
	for i, step := range steps {
		n.generate(t, "/api/generate", `{"model":"llama3:8b","prompt":"hi","stream":false,"options":`+step.options+`}`)
		if got := contextLength(); got != step.wantContext {
			t.Errorf("step %d: context_length %d, want %d", i, got, step.wantContext)
		}
		if got := n.srv.Loads("llama3:8b"); got != step.wantLoads {
			t.Errorf("step %d: Loads %d, want %d", i, got, step.wantLoads)
		}
	}
}

func TestMaxLoadedEvictsLeastRecentlyUsed(t *testing.T) {
	n := startNode(t, ollamasim.Config{MaxLoaded: 2})
	for _, model := range []string{"llama3:8b", "qwen2.5:7b", "llama3:8b", "nomic-embed-text"} {
		n.generate(t, "/api/embed", fmt.Sprintf(`{"model":%q,"input":"x"}`, model))
	}

	loaded := n.srv.LoadedModels()
	slices.Sort(loaded)
	if want := []string{"llama3:8b", "nomic-embed-text:latest"}; !slices.Equal(loaded, want) {
		t.Errorf("LoadedModels = %v, want %v", loaded, want)
	}
	if got := n.srv.Loads("qwen2.5:7b"); got != 1 {
		t.Errorf("Loads of the evicted model = %d, want 1", got)
	}
}

func TestLoadWaitsForIdleModel(t *testing.T) {
	cfg := longAnswers
	cfg.MaxLoaded = 1
	n := startNode(t, cfg)

	cancelFirst, _ := n.launch(t, "/api/generate", longGenerate)
	n.waitFor(t, "first model busy", func(s ollamasim.Stats) bool { return s.Active == 1 })
	_, second := n.launch(t, "/api/generate", `{"model":"qwen2.5:7b","prompt":"hi","stream":false,"options":{"num_predict":2}}`)
	n.waitFor(t, "second model waiting", func(s ollamasim.Stats) bool { return s.Waiting == 1 })
	if got := n.srv.LoadedModels(); !slices.Equal(got, []string{"llama3:8b"}) {
		t.Errorf("LoadedModels = %v while the first model is busy", got)
	}

	cancelFirst()
	if r := await(t, second); r.status != http.StatusOK {
		t.Fatalf("second request: status %d, body %s", r.status, r.body)
	}
	if got := n.srv.LoadedModels(); !slices.Equal(got, []string{"qwen2.5:7b"}) {
		t.Errorf("LoadedModels = %v after the swap", got)
	}
}

func TestPrefixCacheSpeedsPromptEval(t *testing.T) {
	const promptRate = 4000 // tokens per second
	n := startNode(t, ollamasim.Config{PromptTokensPerSec: promptRate, Parallel: 2})
	system := strings.Repeat("You answer questions about rivers and stones. ", 60)
	chat := func(messages ...string) string {
		var parts []string
		roles := []string{"user", "assistant"}
		for i, m := range messages {
			parts = append(parts, fmt.Sprintf(`{"role":%q,"content":%q}`, roles[i%2], m))
		}
		return fmt.Sprintf(`{"model":"llama3:8b","stream":false,"options":{"seed":1},"messages":[{"role":"system","content":%q},%s]}`,
			system, strings.Join(parts, ","))
	}

	first := n.generate(t, "/api/chat", chat("What is a river?"))
	if first.PromptEvalCount < 400 {
		t.Fatalf("first prompt_eval_count = %d, want the whole long prompt", first.PromptEvalCount)
	}
	minimum := time.Duration(float64(first.PromptEvalCount) / promptRate * float64(time.Second))
	if got := time.Duration(first.PromptEvalDuration); got < minimum {
		t.Errorf("first prompt_eval_duration %v, want at least %v", got, minimum)
	}

	// A second conversation shares the system prompt, so it reuses that
	// prefix without taking over the first conversation's slot.
	other := n.generate(t, "/api/chat", chat("What is a stone?"))
	if other.PromptEvalCount >= first.PromptEvalCount/2 {
		t.Errorf("other conversation evaluated %d tokens, want the shared system prompt cached", other.PromptEvalCount)
	}

	follow := n.generate(t, "/api/chat", chat("What is a river?", first.Message.Content, "And a lake?"))
	if follow.PromptEvalCount > 30 {
		t.Errorf("follow-up evaluated %d tokens, want only the new turn", follow.PromptEvalCount)
	}
	if got, limit := time.Duration(follow.PromptEvalDuration), time.Duration(first.PromptEvalDuration)/4; got > limit {
		t.Errorf("follow-up prompt_eval_duration %v, want under %v", got, limit)
	}
}

func TestPrefixCacheWithGenerateContext(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	first := n.generate(t, "/api/generate", `{"model":"llama3:8b","prompt":"Tell me about rivers","stream":false}`)
	contextJSON, err := json.Marshal(first.Context)
	if err != nil {
		t.Fatal(err)
	}
	next := n.generate(t, "/api/generate",
		`{"model":"llama3:8b","prompt":"More","stream":false,"context":`+string(contextJSON)+`}`)
	if next.PromptEvalCount > 15 {
		t.Errorf("prompt_eval_count = %d with the previous context, want only the new prompt", next.PromptEvalCount)
	}
	if len(next.Context) != len(first.Context)+next.PromptEvalCount+next.EvalCount {
		t.Errorf("context grew from %d to %d tokens, want the new prompt and answer added",
			len(first.Context), len(next.Context))
	}
}

func TestCancellationFreesSlot(t *testing.T) {
	cfg := longAnswers
	cfg.Parallel = 1
	n := startNode(t, cfg)

	s := n.openStream(t, "/api/generate", longGenerate)
	s.next(t)
	s.cancel()
	n.waitFor(t, "cancelled and slot free", func(st ollamasim.Stats) bool {
		return st.Cancelled == 1 && st.Active == 0
	})

	r := n.generate(t, "/api/generate", `{"model":"llama3:8b","prompt":"hi","stream":false,"options":{"num_predict":2}}`)
	if r.EvalCount != 2 {
		t.Errorf("request after the cancellation: eval_count %d, want 2", r.EvalCount)
	}
}

func TestCancellationWhileQueued(t *testing.T) {
	cfg := longAnswers
	cfg.Parallel = 1
	n := startNode(t, cfg)

	cancelFirst, _ := n.launch(t, "/api/generate", longGenerate)
	n.waitFor(t, "one running", func(s ollamasim.Stats) bool { return s.Active == 1 })
	cancelQueued, _ := n.launch(t, "/api/generate", longGenerate)
	n.waitFor(t, "one waiting", func(s ollamasim.Stats) bool { return s.Waiting == 1 })

	cancelQueued()
	n.waitFor(t, "queued request gone", func(s ollamasim.Stats) bool {
		return s.Waiting == 0 && s.Cancelled == 1 && s.Active == 1
	})
	cancelFirst()
	n.waitFor(t, "slot free", func(s ollamasim.Stats) bool { return s.Active == 0 && s.Cancelled == 2 })
}

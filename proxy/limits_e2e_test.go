package proxy_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	"github.com/prometheus/client_golang/prometheus/testutil"
	openai "github.com/sashabaranov/go-openai"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/internal/testredis"
	"github.com/llmproxy/llmproxy/ollamasim"
	"github.com/llmproxy/llmproxy/ratelimit"
)

// quickGenerate is a short non-streaming generation, cheap enough to send
// at well over a hundred requests per second.
const quickGenerate = `{"model":"m","prompt":"hi","stream":false,"options":{"num_predict":2}}`

// secretOf returns the API key the tests send for the key named name.
func secretOf(name string) string { return "sk-test-" + name }

// limitKey returns a key named name with no limits, configured by the
// SHA-256 of secretOf(name).
func limitKey(name string) config.Key {
	sum := sha256.Sum256([]byte(secretOf(name)))
	return config.Key{Name: name, SHA256: hex.EncodeToString(sum[:]), Priority: "standard"}
}

// bearer returns the header pair that presents the key named name.
func bearer(name string) []string {
	return []string{"Authorization", "Bearer " + secretOf(name)}
}

// inEachStore runs test twice: with limits kept in process (subtest
// "local") and shared through a redis-server (subtest "redis").
func inEachStore(t *testing.T, test func(t *testing.T, shared bool)) {
	for _, shared := range []bool{false, true} {
		name := "local"
		if shared {
			name = "redis"
		}
		t.Run(name, func(t *testing.T) { test(t, shared) })
	}
}

// slowStreamProxy starts a proxy with key, in front of a node that
// streams 20 tokens per second and 400 in all, so a stream outlasts the
// test. With shared set, the limits live in a redis-server.
func slowStreamProxy(t *testing.T, shared bool, key config.Key) *app.App {
	t.Helper()
	sim := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 20, MinTokens: 400, MaxTokens: 400})
	cfg := testenv.Config(t, sim)
	cfg.Auth.Keys = []config.Key{key}
	if shared {
		sharedRedisConfig(cfg, testredis.Start(t))
	}
	return testenv.Proxy(t, cfg)
}

// sharedRedisConfig points cfg at r. The timeout is longer than the default
// 50ms, because on a loaded test machine a Redis call that times out falls
// back to per-instance counting, which the tests would report as a bug.
func sharedRedisConfig(cfg *config.Config, r *testredis.Server) {
	cfg.Redis.Addr = r.Addr
	cfg.Redis.Timeout = time.Second
}

// loadClient returns an HTTP client that keeps enough idle connections for
// a load test, closed when the test ends.
func loadClient(t *testing.T) *http.Client {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// loadResult is one request of a load test.
type loadResult struct {
	index    int
	sent     time.Duration // since the load began
	instance int
	status   int
	header   http.Header
	body     string
	err      error
}

// loadRun sends quickGenerate requests with one key at a fixed pace, to
// several proxies in turn, and records every response.
type loadRun struct {
	client   *http.Client
	urls     []string
	header   []string
	interval time.Duration
	max      int // bound on the requests sent

	sent    atomic.Int64
	mu      sync.Mutex // guards results
	results []loadResult
}

// run sends up to l.max requests, one per interval, until stop is closed,
// and returns once every response has arrived.
func (l *loadRun) run(stop <-chan struct{}) {
	tick := time.NewTicker(l.interval)
	defer tick.Stop()
	inflight := make(chan struct{}, 64)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < l.max; i++ {
		select {
		case <-stop:
			wg.Wait()
			return
		case <-tick.C:
		}
		inflight <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-inflight }()
			r := loadResult{index: i, sent: time.Since(start), instance: i % len(l.urls)}
			l.send(&r)
			l.mu.Lock()
			l.results = append(l.results, r)
			l.mu.Unlock()
		}()
		l.sent.Add(1)
	}
	wg.Wait()
}

func (l *loadRun) send(r *loadResult) {
	req, err := http.NewRequest("POST", l.urls[r.instance]+"/api/generate",
		strings.NewReader(quickGenerate))
	if err != nil {
		r.err = err
		return
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(l.header); i += 2 {
		req.Header.Set(l.header[i], l.header[i+1])
	}
	resp, err := l.client.Do(req)
	if err != nil {
		r.err = err
		return
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	r.status, r.header, r.body, r.err = resp.StatusCode, resp.Header, string(b), err
}

// check429 returns the first problem with a 429 response: the headers that
// describe the limit, and an error message that names it.
func check429(status int, h http.Header, body, quota, wording string) error {
	if status != http.StatusTooManyRequests {
		return fmt.Errorf("status %d, want 429", status)
	}
	ra, err := strconv.Atoi(h.Get("Retry-After"))
	if err != nil || ra < 1 {
		return fmt.Errorf("Retry-After %q, want whole seconds of at least 1", h.Get("Retry-After"))
	}
	if got := h.Get("X-RateLimit-Limit"); got != quota {
		return fmt.Errorf("X-RateLimit-Limit %q, want %q", got, quota)
	}
	if _, err := strconv.Atoi(h.Get("X-RateLimit-Remaining")); err != nil {
		return fmt.Errorf("X-RateLimit-Remaining %q, want a number", h.Get("X-RateLimit-Remaining"))
	}
	var e struct{ Error string }
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		return fmt.Errorf("body %q is not {\"error\":...}: %v", body, err)
	}
	if !strings.Contains(e.Error, wording) {
		return fmt.Errorf("error %q does not contain %q", e.Error, wording)
	}
	return nil
}

// checkReset returns an error unless X-RateLimit-Reset contains whole seconds.
func checkReset(h http.Header) error {
	if n, err := strconv.Atoi(h.Get("X-RateLimit-Reset")); err != nil || n < 0 {
		return fmt.Errorf("X-RateLimit-Reset %q, want whole seconds", h.Get("X-RateLimit-Reset"))
	}
	return nil
}

func fallbacks(a *app.App) float64 {
	return testutil.ToFloat64(a.Metrics().RedisFallback.WithLabelValues("ratelimit"))
}

func TestLimitsSharedRate(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{Parallel: 8})
	r := testredis.Start(t)
	key := limitKey("shared")
	key.RequestsPerSec, key.Burst = 20, 20
	var proxies []*app.App
	var urls []string
	for range 3 {
		cfg := testenv.Config(t, sim)
		cfg.Auth.Keys = []config.Key{key}
		sharedRedisConfig(cfg, r)
		p := testenv.Proxy(t, cfg)
		proxies = append(proxies, p)
		urls = append(urls, p.URL())
	}

	// 150 requests per second, 50 to each instance: far above the shared
	// 20 per second, and above the 20 each instance would admit alone.
	const window = 2 * time.Second
	const interval = time.Second / 150
	l := &loadRun{
		client:   loadClient(t),
		urls:     urls,
		header:   bearer("shared"),
		interval: interval,
		max:      int((time.Second + window + 100*time.Millisecond) / interval),
	}
	l.run(nil)

	// The burst is spent in the first second. Over the whole seconds after
	// it the three instances together admit the rate.
	accepted, limited, malformed := 0, 0, 0
	for _, res := range l.results {
		if res.err != nil {
			t.Fatalf("request %d: %v", res.index, res.err)
		}
		switch res.status {
		case http.StatusOK:
			if res.sent >= time.Second && res.sent < time.Second+window {
				accepted++
			}
		case http.StatusTooManyRequests:
			limited++
			err := check429(res.status, res.header, res.body, "20", "request rate")
			if err == nil {
				err = checkReset(res.header)
			}
			if err != nil {
				// Report the first malformed response only.
				if malformed == 0 {
					t.Errorf("request %d to instance %d: %v", res.index, res.instance, err)
				}
				malformed++
			}
		default:
			t.Errorf("request %d to instance %d: status %d, body %s",
				res.index, res.instance, res.status, res.body)
		}
	}
	if limited == 0 || malformed > 0 {
		t.Errorf("%d of %d requests got 429, %d of them malformed; want some, all well formed",
			limited, len(l.results), malformed)
	}
	perSec := float64(accepted) / window.Seconds()
	if perSec < 18 || perSec > 22 {
		var fb []float64
		for _, p := range proxies {
			fb = append(fb, fallbacks(p))
		}
		t.Errorf("three instances admitted %.1f requests/s after the burst, want 20 ± 10%% "+
			"(Redis fallbacks per instance: %v)", perSec, fb)
	}
}

// streamRequest opens a streaming chat for the key named key that
// generates up to numPredict tokens.
func streamRequest(t *testing.T, url, key string, numPredict int) *http.Response {
	t.Helper()
	body := fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":"count"}],`+
		`"options":{"num_predict":%d}}`, numPredict)
	return post(t, url+"/api/chat", body, bearer(key)...)
}

// finalCounts reads an NDJSON stream to its end and returns the token
// counts of its done line.
func finalCounts(t *testing.T, resp *http.Response) (prompt, completion int) {
	t.Helper()
	defer resp.Body.Close()
	var last api.ChatResponse
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
			t.Fatalf("stream line %q: %v", sc.Bytes(), err)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read stream: %v", err)
	}
	if !last.Done {
		t.Fatalf("stream ended without a done line, last %+v", last)
	}
	return last.PromptEvalCount, last.EvalCount
}

// chatPromptTokens is the prompt_eval_count the simulator reports for the
// chat of streamRequest.
const chatPromptTokens = 9

func TestLimitsTokensPerMinute(t *testing.T) {
	inEachStore(t, func(t *testing.T, shared bool) {
		// Each chat uses about 300 tokens, prompt and completion, and
		// reserves 300 through num_predict.
		const completion = 300 - chatPromptTokens
		sim := testenv.Sim(t, "m", ollamasim.Config{
			TokensPerSec: 2000, MinTokens: completion, MaxTokens: completion,
		})
		cfg := testenv.Config(t, sim)
		key := limitKey("tpm")
		key.TokensPerMinute = 1000
		cfg.Auth.Keys = []config.Key{key}
		if shared {
			sharedRedisConfig(cfg, testredis.Start(t))
		}
		p := testenv.Proxy(t, cfg)

		start := time.Now()
		for i := 1; i <= 3; i++ {
			resp := streamRequest(t, p.URL(), "tpm", 300)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("chat %d: status %d, body %s", i, resp.StatusCode, readBody(t, resp))
			}
			prompt, compl := finalCounts(t, resp)
			if prompt+compl < 290 || prompt+compl > 300 {
				t.Fatalf("chat %d used %d+%d tokens, want about 300", i, prompt, compl)
			}
		}

		resp := streamRequest(t, p.URL(), "tpm", 300)
		body := readBody(t, resp)
		elapsed := time.Since(start)
		if err := check429(resp.StatusCode, resp.Header, string(body), "1000",
			"tokens per minute"); err != nil {
			t.Fatalf("fourth chat: %v", err)
		}
		if err := checkReset(resp.Header); err != nil {
			t.Errorf("fourth chat: %v", err)
		}
		// Three chats and the fourth's reservation exceed 1000 until
		// the first chat leaves the minute's window.
		ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		if ra > 60 || float64(ra) < 60-elapsed.Seconds() {
			t.Errorf("Retry-After %d s, %s after the first chat; want the rest of its minute",
				ra, elapsed.Round(time.Millisecond))
		}
		got := testutil.ToFloat64(p.Metrics().RateLimited.WithLabelValues("tpm", "tokens"))
		if got != 1 {
			t.Errorf("ratelimited_total{key=tpm,limit=tokens} = %v, want 1", got)
		}
	})
}

// TestLimitsReservePromptTokens sends chats whose prompts are large and
// whose output limit is small while the first one still runs. Each
// reserves an estimate of its prompt besides its num_predict, so the
// second is rejected, although both output limits fit the minute.
func TestLimitsReservePromptTokens(t *testing.T) {
	inEachStore(t, func(t *testing.T, shared bool) {
		key := limitKey("tpm")
		key.TokensPerMinute = 1000
		p := slowStreamProxy(t, shared, key)

		// 3,204 bytes of text with the role, an estimate of 801 prompt
		// tokens, plus num_predict 100: 901 of the minute's 1000.
		prompt := strings.Repeat("word ", 640)
		body := `{"model":"m","messages":[{"role":"user","content":"` + prompt + `"}],` +
			`"options":{"num_predict":100}}`
		first := post(t, p.URL()+"/api/chat", body, bearer("tpm")...)
		defer first.Body.Close()
		if first.StatusCode != http.StatusOK {
			t.Fatalf("first chat: status %d, body %s", first.StatusCode, readBody(t, first))
		}
		second := post(t, p.URL()+"/api/chat", body, bearer("tpm")...)
		if err := check429(second.StatusCode, second.Header, string(readBody(t, second)), "1000",
			"tokens per minute"); err != nil {
			t.Fatalf("second chat: %v", err)
		}
		if got := second.Header.Get("X-RateLimit-Remaining"); got != "99" {
			t.Errorf("X-RateLimit-Remaining %q, want 99", got)
		}

		// A short prompt still fits the 99 tokens left.
		short := streamRequest(t, p.URL(), "tpm", 50)
		if short.StatusCode != http.StatusOK {
			t.Fatalf("short chat: status %d, body %s", short.StatusCode, readBody(t, short))
		}
		short.Body.Close()
	})
}

func TestLimitsConcurrency(t *testing.T) {
	inEachStore(t, func(t *testing.T, shared bool) {
		key := limitKey("two")
		key.MaxConcurrent = 2
		p := slowStreamProxy(t, shared, key)

		short := streamRequest(t, p.URL(), "two", 10)
		defer short.Body.Close()
		long := streamRequest(t, p.URL(), "two", 400)
		defer long.Body.Close()
		if short.StatusCode != http.StatusOK || long.StatusCode != http.StatusOK {
			t.Fatalf("first two streams: status %d and %d, want 200", short.StatusCode,
				long.StatusCode)
		}

		began := time.Now()
		third := streamRequest(t, p.URL(), "two", 10)
		body := readBody(t, third)
		if waited := time.Since(began); waited > 2*time.Second {
			t.Errorf("third stream got its response after %s, want at once", waited)
		}
		if err := check429(third.StatusCode, third.Header, string(body), "2",
			"concurrent requests"); err != nil {
			t.Fatalf("third stream: %v", err)
		}
		if got := third.Header.Get("Retry-After"); got != "1" {
			t.Errorf("Retry-After %q, want 1", got)
		}

		finalCounts(t, short)
		var next *http.Response
		testenv.WaitFor(t, 5*time.Second, "a stream admitted after one ended", func() bool {
			resp := streamRequest(t, p.URL(), "two", 5)
			if resp.StatusCode == http.StatusOK {
				next = resp
				return true
			}
			if body := readBody(t, resp); resp.StatusCode != http.StatusTooManyRequests {
				t.Fatalf("stream after one ended: status %d, body %s", resp.StatusCode, body)
			}
			return false
		})
		finalCounts(t, next)

		// The long stream is still running: the new stream took the
		// slot of the one that ended, not of one still open.
		line, err := bufio.NewReader(long.Body).ReadBytes('\n')
		var chunk api.ChatResponse
		if err != nil || json.Unmarshal(line, &chunk) != nil || chunk.Done {
			t.Errorf("long stream after the new one: line %q, error %v; want a token line",
				line, err)
		}
	})
}

// phase counts the responses of one part of a load test.
type phase struct {
	ok, limited int
	first, last time.Duration // send times
	rejections  []string      // the first few 429s, described
}

func TestLimitsRedisOutage(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{Parallel: 8})
	r := testredis.Start(t)
	key := limitKey("outage")
	key.RequestsPerSec, key.Burst = 10, 5
	var proxies []*app.App
	var urls []string
	for range 2 {
		cfg := testenv.Config(t, sim)
		cfg.Auth.Keys = []config.Key{key}
		sharedRedisConfig(cfg, r)
		p := testenv.Proxy(t, cfg)
		proxies = append(proxies, p)
		urls = append(urls, p.URL())
	}

	// 16 requests per second, 8 to each instance: above the shared rate
	// of 10, below the 10 each instance allows on its own.
	l := &loadRun{
		client:   loadClient(t),
		urls:     urls,
		header:   bearer("outage"),
		interval: time.Second / 16,
		max:      400,
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.run(stop)
	}()
	stopLoad := sync.OnceFunc(func() {
		close(stop)
		<-done
	})
	defer stopLoad()
	sentAtLeast := func(n int64) func() bool {
		return func() bool { return l.sent.Load() >= n }
	}

	testenv.WaitFor(t, 10*time.Second, "32 requests with Redis up", sentAtLeast(32))
	r.Stop()
	stoppedAt := int(l.sent.Load())
	testenv.WaitFor(t, 10*time.Second, "32 requests with Redis down",
		sentAtLeast(int64(stoppedAt)+32))
	restartAt := int(l.sent.Load())
	r.Restart(t)
	testenv.WaitFor(t, 10*time.Second, "both instances back on Redis", func() bool {
		for _, p := range proxies {
			if testutil.ToFloat64(p.Metrics().RedisUp) != 1 {
				return false
			}
		}
		return true
	})
	sharedAt := int(l.sent.Load())
	testenv.WaitFor(t, 10*time.Second, "32 requests after Redis came back",
		sentAtLeast(int64(sharedAt)+32))
	stopLoad()

	var before, down, after phase
	for _, res := range l.results {
		if res.err != nil {
			t.Fatalf("request %d: %v", res.index, res.err)
		}
		if res.status != http.StatusOK && res.status != http.StatusTooManyRequests {
			t.Errorf("request %d to instance %d: status %d, body %s",
				res.index, res.instance, res.status, res.body)
			continue
		}
		var ph *phase
		switch {
		case res.index < stoppedAt:
			ph = &before
		case res.index >= stoppedAt && res.index < restartAt:
			ph = &down
		case res.index >= sharedAt:
			ph = &after
		default:
			continue // sent while Redis restarted
		}
		if res.status == http.StatusOK {
			ph.ok++
		} else {
			ph.limited++
			if len(ph.rejections) < 3 {
				ph.rejections = append(ph.rejections, fmt.Sprintf("request %d to instance %d "+
					"sent at %s: %s", res.index, res.instance, res.sent.Round(time.Millisecond),
					strings.TrimSpace(res.body)))
			}
		}
		if ph.ok+ph.limited == 1 || res.sent < ph.first {
			ph.first = res.sent
		}
		ph.last = max(ph.last, res.sent)
	}

	if before.limited == 0 {
		t.Errorf("no 429 with Redis up (%d admitted): the load does not exceed the shared rate",
			before.ok)
	}
	// Each instance alone allows its 8 requests per second, so none of
	// them may be rejected while the instances count on their own.
	if down.limited != 0 {
		t.Errorf("%d of %d requests got 429 with Redis down, want none; first: %s",
			down.limited, down.limited+down.ok, strings.Join(down.rejections, "; "))
	}
	// Shared again: at most the burst and the rate over the phase, and
	// some rejections, which per-instance counting would not make.
	span := (after.last - after.first).Seconds()
	if limit := 5 + 10*span + 2; float64(after.ok) > limit || after.limited == 0 {
		t.Errorf("after the restart %d admitted and %d rejected in %.1fs; want at most %.0f "+
			"admitted and some rejected, as with one shared limit",
			after.ok, after.limited, span, limit)
	}
	for i, p := range proxies {
		if fallbacks(p) == 0 {
			t.Errorf("instance %d counted no redis_fallback_total{component=ratelimit}", i)
		}
	}
}

// keyTransport presents an API key on every request, as a client
// configured with one does.
type keyTransport struct {
	header, value string
}

func (k keyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(k.header, k.value)
	return http.DefaultTransport.RoundTrip(r)
}

// ollamaClient returns an Ollama client that sends header: value on every
// request; an empty header sends no key.
func ollamaClient(t *testing.T, base, header, value string) *api.Client {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	hc := http.DefaultClient
	if header != "" {
		hc = &http.Client{Transport: keyTransport{header: header, value: value}}
	}
	return api.NewClient(u, hc)
}

// openAIWithKey returns an OpenAI client that sends key as its bearer
// token.
func openAIWithKey(base, key string) *openai.Client {
	cfg := openai.DefaultConfig(key)
	cfg.BaseURL = base + "/v1"
	return openai.NewClientWithConfig(cfg)
}

func ollamaChat(c *api.Client, model string) (api.ChatResponse, error) {
	var last api.ChatResponse
	stream := false
	err := c.Chat(context.Background(), &api.ChatRequest{
		Model:    model,
		Messages: []api.Message{{Role: "user", Content: "hello"}},
		Stream:   &stream,
	}, func(r api.ChatResponse) error { last = r; return nil })
	return last, err
}

func openAIChat(c *openai.Client, model string) (openai.ChatCompletionResponse, error) {
	return c.CreateChatCompletion(context.Background(), openai.ChatCompletionRequest{
		Model:    model,
		Messages: []openai.ChatCompletionMessage{{Role: "user", Content: "hello"}},
	})
}

// checkOpenAIError returns an error unless err is an OpenAI API error with
// the given status and type.
func checkOpenAIError(err error, status int, typ string) error {
	var apiErr *openai.APIError
	if !errors.As(err, &apiErr) {
		return fmt.Errorf("error %v (%T), want *openai.APIError", err, err)
	}
	if apiErr.HTTPStatusCode != status || apiErr.Type != typ || apiErr.Message == "" {
		return fmt.Errorf("API error status %d, type %q, message %q; want %d, %q and a message",
			apiErr.HTTPStatusCode, apiErr.Type, apiErr.Message, status, typ)
	}
	return nil
}

// checkOllamaErrorBody returns an error unless body is Ollama's
// {"error":"..."}.
func checkOllamaErrorBody(body []byte) error {
	var e map[string]any
	if err := json.Unmarshal(body, &e); err != nil {
		return fmt.Errorf("body %q is not JSON: %v", body, err)
	}
	msg, ok := e["error"].(string)
	if !ok || msg == "" {
		return fmt.Errorf("body %s, want {\"error\":\"...\"}", body)
	}
	for k, v := range e {
		// A 401 repeats the message in "status" for the Ollama Go client.
		if k != "error" && (k != "status" || v != msg) {
			return fmt.Errorf("body %s, want {\"error\":\"...\"} and at most a \"status\" with the same message", body)
		}
	}
	return nil
}

const chatBody = `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false}`

func TestLimitsAuth(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	t.Setenv("LLMPROXY_TEST_KEY_ENVKEY", secretOf("envkey"))
	newProxy := func(required bool, unknownKeys string) *app.App {
		cfg := testenv.Config(t, sim)
		cfg.Auth.Required = required
		cfg.Auth.UnknownKeys = unknownKeys
		cfg.Auth.Keys = []config.Key{
			limitKey("alice"),
			{Name: "envkey", Env: "LLMPROXY_TEST_KEY_ENVKEY", Priority: "standard"},
		}
		return testenv.Proxy(t, cfg)
	}
	required := newProxy(true, config.UnknownKeysAnonymous)
	optional := newProxy(false, config.UnknownKeysAnonymous)
	strict := newProxy(false, config.UnknownKeysReject)

	t.Run("WrongKeyOpenAI", func(t *testing.T) {
		_, err := openAIChat(openAIWithKey(required.URL(), "wrong"), "m")
		if err := checkOpenAIError(err, 401, "authentication_error"); err != nil {
			t.Error(err)
		}
	})
	t.Run("WrongKeyOllama", func(t *testing.T) {
		_, err := ollamaChat(ollamaClient(t, required.URL(), "Authorization", "Bearer wrong"), "m")
		var authErr api.AuthorizationError
		if !errors.As(err, &authErr) || authErr.StatusCode != 401 {
			t.Errorf("error %v (%T), want api.AuthorizationError with status 401", err, err)
		}
		resp := post(t, required.URL()+"/api/chat", chatBody, "Authorization", "Bearer wrong")
		body := readBody(t, resp)
		if resp.StatusCode != 401 {
			t.Errorf("status %d, want 401", resp.StatusCode)
		}
		if err := checkOllamaErrorBody(body); err != nil {
			t.Error(err)
		}
	})
	t.Run("MissingKeyRequired", func(t *testing.T) {
		for _, path := range []string{"/api/chat", "/v1/chat/completions"} {
			resp := post(t, required.URL()+path, chatBody)
			body := readBody(t, resp)
			if resp.StatusCode != 401 || !strings.Contains(string(body), "missing API key") {
				t.Errorf("%s: status %d, body %s; want 401 naming the missing key",
					path, resp.StatusCode, body)
			}
		}
	})
	t.Run("MissingKeyOptional", func(t *testing.T) {
		if _, err := ollamaChat(ollamaClient(t, optional.URL(), "", ""), "m"); err != nil {
			t.Errorf("chat without a key: %v", err)
		}
	})
	t.Run("PlaceholderKeyOptional", func(t *testing.T) {
		// Ollama's documentation has OpenAI client users set the key
		// "ollama", which it ignores.
		if _, err := openAIChat(openAIWithKey(optional.URL(), "ollama"), "m"); err != nil {
			t.Errorf("OpenAI chat with the placeholder key: %v", err)
		}
		c := ollamaClient(t, optional.URL(), "Authorization", "Bearer ollama")
		if _, err := ollamaChat(c, "m"); err != nil {
			t.Errorf("Ollama chat with the placeholder key: %v", err)
		}
	})
	t.Run("WrongKeyRejected", func(t *testing.T) {
		_, err := openAIChat(openAIWithKey(strict.URL(), "wrong"), "m")
		if err := checkOpenAIError(err, 401, "authentication_error"); err != nil {
			t.Error(err)
		}
		if _, err := openAIChat(openAIWithKey(strict.URL(), secretOf("alice")), "m"); err != nil {
			t.Errorf("chat with a known key: %v", err)
		}
	})
	t.Run("XAPIKey", func(t *testing.T) {
		c := ollamaClient(t, required.URL(), "X-API-Key", secretOf("alice"))
		if _, err := ollamaChat(c, "m"); err != nil {
			t.Errorf("chat with X-API-Key: %v", err)
		}
	})
	t.Run("EnvKey", func(t *testing.T) {
		if _, err := openAIChat(openAIWithKey(required.URL(), secretOf("envkey")), "m"); err != nil {
			t.Errorf("chat with the key from the environment: %v", err)
		}
	})
}

// checkNoKeyForwarded returns an error when the last request sim received
// on route carried a key, or when there was none.
func checkNoKeyForwarded(sim *ollamasim.Server, route string) error {
	req, ok := sim.LastRequest(route)
	if !ok {
		return fmt.Errorf("the node received no %s", route)
	}
	for _, h := range []string{"Authorization", "X-API-Key"} {
		if v := req.Header.Get(h); v != "" {
			return fmt.Errorf("the node received %s: %q on %s", h, v, route)
		}
	}
	return nil
}

// onlyMProxy starts a proxy that requires keys, with one key, only-m,
// that may use model m only, in front of a node with models m and other.
func onlyMProxy(t *testing.T) (*app.App, *ollamasim.Server) {
	t.Helper()
	run := testenv.Sim(t, "m,other", ollamasim.Config{})
	cfg := testenv.Config(t, run)
	key := limitKey("only-m")
	key.AllowedModels = []string{"m"}
	cfg.Auth.Required = true
	cfg.Auth.Keys = []config.Key{key}
	return testenv.Proxy(t, cfg), run.Server()
}

func TestLimitsAllowedModels(t *testing.T) {
	p, sim := onlyMProxy(t)
	secret := secretOf("only-m")

	t.Run("Ollama", func(t *testing.T) {
		c := ollamaClient(t, p.URL(), "Authorization", "Bearer "+secret)
		_, err := ollamaChat(c, "other")
		var se api.StatusError
		if !errors.As(err, &se) || se.StatusCode != 403 || se.ErrorMessage == "" {
			t.Errorf("chat with other: error %v (%T), want api.StatusError 403 with a message",
				err, err)
		}
		if n := sim.ModelRequests("other"); n != 0 {
			t.Errorf("the node received %d requests for other, want 0", n)
		}
		if _, err := ollamaChat(c, "m"); err != nil {
			t.Fatalf("chat with m: %v", err)
		}
		if err := checkNoKeyForwarded(sim, "/api/chat"); err != nil {
			t.Error(err)
		}
	})
	t.Run("OllamaXAPIKey", func(t *testing.T) {
		c := ollamaClient(t, p.URL(), "X-API-Key", secret)
		if _, err := ollamaChat(c, "m"); err != nil {
			t.Fatalf("chat with m: %v", err)
		}
		if err := checkNoKeyForwarded(sim, "/api/chat"); err != nil {
			t.Error(err)
		}
	})
	t.Run("OpenAI", func(t *testing.T) {
		c := openAIWithKey(p.URL(), secret)
		_, err := openAIChat(c, "other")
		if err := checkOpenAIError(err, 403, "permission_error"); err != nil {
			t.Error(err)
		}
		if _, err := openAIChat(c, "m"); err != nil {
			t.Fatalf("chat with m: %v", err)
		}
		if err := checkNoKeyForwarded(sim, "/v1/chat/completions"); err != nil {
			t.Error(err)
		}
	})
}

// TestLimitsAllowedModelsOnManagement checks that a key limited to some
// models can pull, push, create, copy or delete no other model.
func TestLimitsAllowedModelsOnManagement(t *testing.T) {
	p, sim := onlyMProxy(t)
	auth := []string{"Authorization", "Bearer " + secretOf("only-m")}

	cases := []struct {
		method, path, body string
	}{
		{"POST", "/api/pull", `{"model":"other","stream":false}`},
		{"POST", "/api/push", `{"model":"other","stream":false}`},
		{"POST", "/api/push", `{"name":"other","stream":false}`},
		{"POST", "/api/create", `{"model":"other","from":"m","stream":false}`},
		{"POST", "/api/create", `{"model":"m","from":"other","stream":false}`},
		{"POST", "/api/create", `{"model":"m","modelfile":"# base\nFROM other\n","stream":false}`},
		{"POST", "/api/create", `{"model":"m","From":"other","stream":false}`},
		{"POST", "/api/copy", `{"Source":"other","destination":"m"}`},
		{"POST", "/api/generate", `{"Model":"other","prompt":"hi","stream":false}`},
		{"POST", "/api/chat", `{"MODEL":"other","messages":[],"stream":false}`},
		{"POST", "/v1/chat/completions", `{"Model":"other","messages":[]}`},
		{"POST", "/api/copy", `{"source":"m","destination":"other"}`},
		{"DELETE", "/api/delete", `{"model":"other"}`},
	}
	for _, tc := range cases {
		t.Run(tc.path+" "+tc.body, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, p.URL()+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set(auth[0], auth[1])
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var msg string
			if strings.HasPrefix(tc.path, "/v1/") {
				msg = openAIErrorMessage(t, resp, http.StatusForbidden)
			} else {
				msg = ollamaErrorMessage(t, resp, http.StatusForbidden)
			}
			if !strings.Contains(msg, `may not use model "other"`) {
				t.Errorf("error %q, want it to name the model", msg)
			}
			if n := sim.Requests(tc.path); n != 0 {
				t.Errorf("the node received %d %s requests, want 0", n, tc.path)
			}
		})
	}
}

// TestKeysInAnyCase sends bodies whose keys differ from the usual ones in
// case. Ollama's JSON decoder matches keys in any case, so the proxy reads
// them as the same fields, and rejects two keys that differ only in case.
func TestKeysInAnyCase(t *testing.T) {
	run := testenv.Sim(t, "m,other", ollamasim.Config{})
	p := testenv.Proxy(t, testenv.Config(t, run))

	resp := post(t, p.URL()+"/api/generate", `{"MODEL":"m","Prompt":"hi","Stream":false}`)
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"model":"m"`) {
		t.Errorf("generate with MODEL: status %d, body %s; want 200 from model m", resp.StatusCode, body)
	}
	for _, body := range []string{
		`{"model":"m","Model":"other","prompt":"hi"}`,
		`{"Model":"m","model":"other","prompt":"hi"}`,
		// U+212A KELVIN SIGN folds to k, as Go's decoder folds it.
		`{"model":"m","prompt":"hi","keep_alive":"5m","Keep_alive":0}`,
	} {
		msg := ollamaErrorMessage(t, post(t, p.URL()+"/api/generate", body), http.StatusBadRequest)
		if !strings.Contains(msg, "duplicate key") {
			t.Errorf("body %s: error %q, want a duplicate key", body, msg)
		}
	}
}

func TestLimitsRejectSkipsQueue(t *testing.T) {
	run := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 20, MinTokens: 400, MaxTokens: 400})
	sim := run.Server()
	cfg := testenv.Config(t, run)
	cfg.Nodes[0].MaxConcurrent = 1
	tight := limitKey("tight")
	// One request per 20 seconds: the second is rejected for the rate.
	tight.RequestsPerSec, tight.Burst = 0.05, 1
	cfg.Auth.Keys = []config.Key{limitKey("holder"), tight}
	p := testenv.Proxy(t, cfg)
	depth := func() int { return p.Balancer().Depth()["standard"] }

	// The holder's stream takes the node's only slot.
	hold := streamRequest(t, p.URL(), "holder", 400)
	defer hold.Body.Close()
	if hold.StatusCode != http.StatusOK {
		t.Fatalf("holding stream: status %d", hold.StatusCode)
	}

	// The tight key's first request is admitted and waits in the queue.
	queued := make(chan int, 1)
	go func() {
		resp, err := http.DefaultClient.Do(newPost(p.URL()+"/api/generate", quickGenerate,
			bearer("tight")...))
		if err != nil {
			queued <- -1
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		queued <- resp.StatusCode
	}()
	testenv.WaitFor(t, 5*time.Second, "the first request in the queue", func() bool {
		return depth() == 1
	})

	// The second is rejected before the queue and the node.
	resp := post(t, p.URL()+"/api/generate", quickGenerate, bearer("tight")...)
	body := readBody(t, resp)
	if err := check429(resp.StatusCode, resp.Header, string(body), "1", "request rate"); err != nil {
		t.Fatalf("second request: %v", err)
	}
	if d := depth(); d != 1 {
		t.Errorf("queue depth %d after the rejection, want 1", d)
	}
	if n := sim.Requests("/api/generate"); n != 0 {
		t.Errorf("the node received %d generates while its slot was taken, want 0", n)
	}

	// Freeing the slot serves the queued request, and only it.
	hold.Body.Close()
	if code := <-queued; code != http.StatusOK {
		t.Fatalf("queued request: status %d, want 200", code)
	}
	if n := sim.Requests("/api/generate"); n != 1 {
		t.Errorf("the node received %d generates, want only the admitted one", n)
	}
	if d := depth(); d != 0 {
		t.Errorf("queue depth %d at the end, want 0", d)
	}
}

func newPost(url, body string, header ...string) *http.Request {
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return req
}

// checkTokens waits until the proxy has counted the completion tokens of
// key, then compares both counters with the node's report.
func checkTokens(t *testing.T, p *app.App, key string, prompt, completion int) {
	t.Helper()
	counter := func(kind string) float64 {
		return testutil.ToFloat64(p.Metrics().Tokens.WithLabelValues(key, "m:latest", kind))
	}
	testenv.WaitFor(t, 5*time.Second, "the tokens of "+key+" counted", func() bool {
		return counter("completion") > 0
	})
	if got := counter("prompt"); got != float64(prompt) {
		t.Errorf("tokens_total{key=%s,kind=prompt} = %v, want %d", key, got, prompt)
	}
	if got := counter("completion"); got != float64(completion) {
		t.Errorf("tokens_total{key=%s,kind=completion} = %v, want %d", key, got, completion)
	}
}

func TestLimitsTokenAccounting(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 500})
	cfg := testenv.Config(t, sim)
	cfg.Auth.Keys = []config.Key{limitKey("gen"), limitKey("chat"), limitKey("openai")}
	p := testenv.Proxy(t, cfg)

	t.Run("Generate", func(t *testing.T) {
		c := ollamaClient(t, p.URL(), "Authorization", "Bearer "+secretOf("gen"))
		var last api.GenerateResponse
		stream := false
		err := c.Generate(context.Background(),
			&api.GenerateRequest{Model: "m", Prompt: "one two three", Stream: &stream},
			func(r api.GenerateResponse) error { last = r; return nil })
		if err != nil || !last.Done || last.EvalCount == 0 {
			t.Fatalf("generate: %+v, %v", last, err)
		}
		checkTokens(t, p, "gen", last.PromptEvalCount, last.EvalCount)
	})
	t.Run("StreamingChat", func(t *testing.T) {
		c := ollamaClient(t, p.URL(), "Authorization", "Bearer "+secretOf("chat"))
		var last api.ChatResponse
		chunks := 0
		err := c.Chat(context.Background(), &api.ChatRequest{
			Model:    "m",
			Messages: []api.Message{{Role: "user", Content: "tell a story"}},
		}, func(r api.ChatResponse) error { chunks++; last = r; return nil })
		if err != nil || !last.Done || chunks < 3 {
			t.Fatalf("chat: %d chunks, last %+v, %v", chunks, last, err)
		}
		checkTokens(t, p, "chat", last.PromptEvalCount, last.EvalCount)
	})
	t.Run("OpenAIStreamUsage", func(t *testing.T) {
		c := openAIWithKey(p.URL(), secretOf("openai"))
		stream, err := c.CreateChatCompletionStream(context.Background(),
			openai.ChatCompletionRequest{
				Model:         "m",
				Messages:      []openai.ChatCompletionMessage{{Role: "user", Content: "hello"}},
				StreamOptions: &openai.StreamOptions{IncludeUsage: true},
			})
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		defer stream.Close()
		var usage *openai.Usage
		for {
			chunk, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("recv: %v", err)
			}
			if chunk.Usage != nil {
				usage = chunk.Usage
			}
		}
		if usage == nil || usage.CompletionTokens == 0 {
			t.Fatalf("stream usage %+v, want the counts", usage)
		}
		checkTokens(t, p, "openai", usage.PromptTokens, usage.CompletionTokens)
	})
}

// decodeUsage reads GET /admin/usage: a list of ratelimit.KeyUsage, bare
// or under "keys".
func decodeUsage(body []byte) ([]ratelimit.KeyUsage, error) {
	var list []ratelimit.KeyUsage
	if err := json.Unmarshal(body, &list); err == nil {
		return list, nil
	}
	var wrapped struct {
		Keys []ratelimit.KeyUsage `json:"keys"`
	}
	if err := json.Unmarshal(body, &wrapped); err != nil || wrapped.Keys == nil {
		return nil, fmt.Errorf("body %s is neither a list of key usages nor {\"keys\":[...]}", body)
	}
	return wrapped.Keys, nil
}

func TestLimitsAdminUsage(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, sim)
	metered := limitKey("metered")
	metered.MonthlyTokens, metered.MonthlyRequests = 100000, 1000
	cfg.Auth.Keys = []config.Key{metered, limitKey("idle")}
	p := testenv.Proxy(t, cfg)

	resp := post(t, p.URL()+"/api/generate", quickGenerate, bearer("metered")...)
	var gen api.GenerateResponse
	if err := json.Unmarshal(readBody(t, resp), &gen); err != nil || resp.StatusCode != 200 {
		t.Fatalf("generate: status %d, %v", resp.StatusCode, err)
	}
	used := int64(gen.PromptEvalCount + gen.EvalCount)

	var usage []ratelimit.KeyUsage
	testenv.WaitFor(t, 5*time.Second, "the generate settled in /admin/usage", func() bool {
		r, err := http.Get(p.URL() + "/admin/usage")
		if err != nil {
			t.Fatalf("GET /admin/usage: %v", err)
		}
		body := readBody(t, r)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("GET /admin/usage: status %d, body %s", r.StatusCode, body)
		}
		if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("content type %q, want application/json", ct)
		}
		usage, err = decodeUsage(body)
		if err != nil {
			t.Fatal(err)
		}
		return len(usage) > 0 && usage[0].InFlight == 0 && usage[0].MonthlyTokens == used
	})

	if len(usage) != 2 || usage[0].Name != "metered" || usage[1].Name != "idle" {
		t.Fatalf("usage %+v, want metered and idle in configuration order", usage)
	}
	month := time.Now().UTC().Format("2006-01")
	m := usage[0]
	if m.Month != month || m.MonthlyRequests != 1 || m.MonthlyTokens != used {
		t.Errorf("metered usage %+v, want month %s, 1 request and %d tokens", m, month, used)
	}
	if m.Limits.MonthlyTokens != 100000 || m.Limits.MonthlyRequests != 1000 {
		t.Errorf("metered limits %+v, want the configured quotas", m.Limits)
	}
	if idle := usage[1]; idle.MonthlyRequests != 0 || idle.MonthlyTokens != 0 {
		t.Errorf("idle usage %+v, want nothing used", idle)
	}
}

// Ollama's /api/embed response has token counts but no done member, and
// its tokens count towards the key's quota as a generation's do.
func TestLimitsCountEmbedTokens(t *testing.T) {
	sim := testenv.Sim(t, "embed-e", ollamasim.Config{})
	cfg := testenv.Config(t, sim)
	metered := limitKey("metered")
	metered.MonthlyTokens = 100000
	cfg.Auth.Keys = []config.Key{metered}
	p := testenv.Proxy(t, cfg)

	resp := post(t, p.URL()+"/api/embed", `{"model":"embed-e","input":["aaa bbb ccc ddd","eee"]}`,
		append(bearer("metered"), "Cache-Control", "no-store, no-cache")...)
	var embed struct {
		PromptEvalCount int64 `json:"prompt_eval_count"`
	}
	if err := json.Unmarshal(readBody(t, resp), &embed); err != nil || resp.StatusCode != 200 {
		t.Fatalf("embed: status %d, %v", resp.StatusCode, err)
	}
	if embed.PromptEvalCount == 0 {
		t.Fatal("the node reported no prompt tokens")
	}
	testenv.WaitFor(t, 5*time.Second, "the embed tokens in /admin/usage", func() bool {
		r, err := http.Get(p.URL() + "/admin/usage")
		if err != nil {
			t.Fatalf("GET /admin/usage: %v", err)
		}
		usage, err := decodeUsage(readBody(t, r))
		if err != nil {
			t.Fatal(err)
		}
		return len(usage) == 1 && usage[0].InFlight == 0 && usage[0].MonthlyTokens == embed.PromptEvalCount
	})
}

// A client that closes a stream before its final line, which alone
// carries the node's token counts, is still charged for what it received.
func TestLimitsChargeCutStream(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 50, MinTokens: 200, MaxTokens: 200})
	cfg := testenv.Config(t, sim)
	metered := limitKey("metered")
	metered.MonthlyTokens = 100000
	cfg.Auth.Keys = []config.Key{metered}
	p := testenv.Proxy(t, cfg)

	resp := post(t, p.URL()+"/api/chat", `{"model":"m","messages":[{"role":"user","content":"long"}]}`,
		bearer("metered")...)
	sc := bufio.NewScanner(resp.Body)
	lines := 0
	for lines < 10 && sc.Scan() {
		lines++
	}
	resp.Body.Close() // leave mid-stream
	if lines < 10 {
		t.Fatalf("read %d lines before leaving, want 10", lines)
	}

	var usage []ratelimit.KeyUsage
	testenv.WaitFor(t, 5*time.Second, "the cut stream settled in /admin/usage", func() bool {
		r, err := http.Get(p.URL() + "/admin/usage")
		if err != nil {
			t.Fatalf("GET /admin/usage: %v", err)
		}
		usage, err = decodeUsage(readBody(t, r))
		if err != nil {
			t.Fatal(err)
		}
		return len(usage) == 1 && usage[0].InFlight == 0
	})
	if got := usage[0].MonthlyTokens; got < int64(lines) {
		t.Errorf("monthly tokens %d after the client received %d chunks, want at least %d", got, lines, lines)
	}
}

// burst sends n quick generates at once without a key, the i-th with the
// headers of header(i), and returns the responses and how long they took.
func burst(p *app.App, n int, header func(i int) []string) ([]loadResult, time.Duration) {
	results := make([]loadResult, n)
	client := &http.Client{Timeout: 30 * time.Second}
	start := time.Now()
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := &results[i]
			res.index = i
			resp, err := client.Do(newPost(p.URL()+"/api/generate", quickGenerate, header(i)...))
			if err != nil {
				res.err = err
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			res.status, res.header, res.body, res.err = resp.StatusCode, resp.Header, string(b), err
		}()
	}
	wg.Wait()
	took := time.Since(start)
	client.CloseIdleConnections()
	return results, took
}

func TestLimitsPerAddress(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{Parallel: 8})
	newProxy := func(trusted []string) *app.App {
		cfg := testenv.Config(t, sim)
		cfg.Nodes[0].MaxConcurrent = 8
		defaults := config.Default()
		cfg.RateLimit.PerAddress = defaults.RateLimit.PerAddress
		cfg.RateLimit.Burst = defaults.RateLimit.Burst
		cfg.RateLimit.TrustedProxies = trusted
		return testenv.Proxy(t, cfg)
	}
	// admitted bounds what 10 per second with a burst of 20 admits over d.
	admitted := func(d time.Duration) (lo, hi int) {
		return 20, 20 + int(10*d.Seconds()) + 1
	}

	t.Run("OneAddress", func(t *testing.T) {
		p := newProxy(nil)
		// The peer is no trusted proxy, so X-Forwarded-For is ignored.
		results, took := burst(p, 30, func(i int) []string {
			return []string{"X-Forwarded-For", "192.0.2." + strconv.Itoa(i+1)}
		})
		ok, limited := 0, 0
		for _, res := range results {
			switch {
			case res.err != nil:
				t.Fatalf("request %d: %v", res.index, res.err)
			case res.status == http.StatusOK:
				ok++
			default:
				limited++
				if err := check429(res.status, res.header, res.body, "20",
					"request rate of this client address"); err != nil {
					t.Errorf("request %d: %v", res.index, err)
				}
			}
		}
		if lo, hi := admitted(took); ok < lo || ok > hi {
			t.Errorf("%d of 30 admitted in %s, want %d to %d", ok, took, lo, hi)
		}
		got := testutil.ToFloat64(p.Metrics().RateLimited.WithLabelValues(
			ratelimit.AnonymousLabel, "requests"))
		if got != float64(limited) {
			t.Errorf("ratelimited_total{key=anonymous,limit=requests} = %v, want %d", got, limited)
		}
	})
	t.Run("TrustedProxy", func(t *testing.T) {
		p := newProxy([]string{"127.0.0.1/32"})
		clients := []string{"192.0.2.10", "192.0.2.20", "198.51.100.7"}
		results, took := burst(p, 25*len(clients), func(i int) []string {
			return []string{"X-Forwarded-For", clients[i%len(clients)]}
		})
		ok := map[string]int{}
		for _, res := range results {
			if res.err != nil {
				t.Fatalf("request %d: %v", res.index, res.err)
			}
			if res.status == http.StatusOK {
				ok[clients[res.index%len(clients)]]++
			} else if res.status != http.StatusTooManyRequests {
				t.Errorf("request %d: status %d, body %s", res.index, res.status, res.body)
			}
		}
		lo, hi := admitted(took)
		for _, c := range clients {
			if ok[c] < lo || ok[c] > hi {
				t.Errorf("client %s: %d of 25 admitted in %s, want %d to %d", c, ok[c], took, lo, hi)
			}
		}
	})
}

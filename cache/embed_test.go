package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/ollama/ollama/api"
	openai "github.com/sashabaranov/go-openai"

	"github.com/llmproxy/llmproxy/internal/testredis"
)

// vectorOf is the embedding the fake upstream gives text: its length and
// its first byte, so that a test can tell which text a vector belongs to.
func vectorOf(text string) []float32 {
	return []float32{float32(len(text)), float32(text[0])}
}

// tokensOf is the prompt token count the fake upstream gives text: one
// token per byte.
func tokensOf(texts ...string) int {
	n := 0
	for _, s := range texts {
		n += len(s)
	}
	return n
}

// embedUpstream responses /api/embed, /api/embeddings and /v1/embeddings
// bodies as Ollama would, and keeps every body it received.
type embedUpstream struct {
	mu     sync.Mutex
	bodies []string
}

func (u *embedUpstream) response(route string, body []byte) ([]byte, error) {
	u.mu.Lock()
	u.bodies = append(u.bodies, string(body))
	u.mu.Unlock()
	var req struct {
		Model  string `json:"model"`
		Input  any    `json:"input"`
		Prompt string `json:"prompt"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, fmt.Errorf("upstream body %s: %w", body, err)
	}

	var texts []string
	switch in := req.Input.(type) {
	case string:
		texts = []string{in}
	case []any:
		for _, s := range in {
			texts = append(texts, s.(string))
		}
	}

	var out any
	switch route {
	case "/api/embeddings":
		out = map[string]any{"embedding": vectorOf(req.Prompt)}
	case "/v1/embeddings":
		data := make([]openai.Embedding, len(texts))
		for i, s := range texts {
			data[i] = openai.Embedding{Object: "embedding", Embedding: vectorOf(s), Index: i}
		}
		out = map[string]any{"object": "list", "data": data, "model": req.Model,
			"usage": map[string]int{"prompt_tokens": tokensOf(texts...), "total_tokens": tokensOf(texts...)}}
	default:
		vecs := make([][]float32, len(texts))
		for i, s := range texts {
			vecs[i] = vectorOf(s)
		}
		out = api.EmbedResponse{Model: req.Model, Embeddings: vecs, TotalDuration: 1000, LoadDuration: 10,
			PromptEvalCount: tokensOf(texts...)}
	}
	return json.Marshal(out)
}

func (u *embedUpstream) received() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.bodies...)
}

// embed runs one embedding request through the cache as the proxy does and
// returns the response sent to the client.
func (tc *testCache) embed(t *testing.T, up *embedUpstream, route, body string) ([]byte, Result) {
	t.Helper()
	out, res, err := tc.serveEmbed(up, route, body)
	if err != nil {
		t.Fatal(err)
	}
	return out, res
}

// serveEmbed is embed for use outside the test's goroutine.
func (tc *testCache) serveEmbed(up *embedUpstream, route, body string) ([]byte, Result, error) {
	ctx := context.Background()
	p := tc.Classify(Request{Route: route, Body: []byte(body)})
	if p.Kind != KindEmbed {
		return nil, "", fmt.Errorf("Classify(%s %s): not cacheable: %s", route, body, p.Reason)
	}
	b := tc.LookupEmbeddings(ctx, p)
	if e := b.Entry(); e != nil {
		out, _ := e.Render(p)
		return out, b.Result(), nil
	}

	answer, err := up.response(route, b.UpstreamBody())
	if err != nil {
		return nil, "", err
	}
	e, err := tc.StoreEmbeddings(ctx, b, answer)
	if err != nil {
		return nil, "", fmt.Errorf("StoreEmbeddings: %w", err)
	}
	out, _ := e.Render(p)
	return out, b.Result(), nil
}

func TestEmbedPartialBatch(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	up := &embedUpstream{}
	tc.embed(t, up, "/api/embed", `{"model":"tiny","input":["b"]}`)

	body := `{"model":"tiny", "truncate":true,"input":[ "a" ,"bb","c"],"keep_alive":"5m"}`
	tc.embed(t, up, "/api/embed", `{"model":"tiny","input":["bb"]}`)
	out, res := tc.embed(t, up, "/api/embed", body)
	if res != ResultPartial {
		t.Errorf("result = %s, want partial", res)
	}
	sent := up.received()
	if len(sent) != 3 {
		t.Fatalf("upstream requests = %d, want 3", len(sent))
	}
	if want := `{"model":"tiny", "truncate":true,"input":["a","c"],"keep_alive":"5m"}`; sent[2] != want {
		t.Errorf("upstream body = %s, want %s", sent[2], want)
	}

	var got api.EmbedResponse
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("response %s: %v", out, err)
	}
	if len(got.Embeddings) != 3 {
		t.Fatalf("embeddings = %d, want 3", len(got.Embeddings))
	}
	for i, text := range []string{"a", "bb", "c"} {
		if fmt.Sprint(got.Embeddings[i]) != fmt.Sprint(vectorOf(text)) {
			t.Errorf("embedding %d = %v, want the vector of %q", i, got.Embeddings[i], text)
		}
	}
	if got.Model != "tiny" {
		t.Errorf("model %q, want tiny", got.Model)
	}
	if want := tokensOf("a", "bb", "c"); got.PromptEvalCount != want {
		t.Errorf("prompt_eval_count %d, want %d: the cached input counts too", got.PromptEvalCount, want)
	}
	if got.TotalDuration != 1000 || got.LoadDuration != 10 {
		t.Errorf("durations %d and %d, want upstream's 1000 and 10", got.TotalDuration, got.LoadDuration)
	}

	out, res = tc.embed(t, up, "/api/embed", `{"model":"tiny:latest","input":["c","a","bb"]}`)
	if res != ResultHitL1 || len(up.received()) != 3 {
		t.Errorf("fully cached batch: result %s, upstream requests %d, want hit-l1 and none", res, len(up.received()))
	}
	var cached map[string]json.RawMessage
	if err := json.Unmarshal(out, &cached); err != nil {
		t.Fatalf("fully cached response %s: %v", out, err)
	}
	if got := string(cached["prompt_eval_count"]); got != fmt.Sprint(tokensOf("c", "a", "bb")) {
		t.Errorf("fully cached response %s: prompt_eval_count %s, want %d", out, got, tokensOf("c", "a", "bb"))
	}
	if got := string(cached["load_duration"]); got != "0" {
		t.Errorf("fully cached response %s: load_duration %q, want 0", out, got)
	}
	var total int64
	if err := json.Unmarshal(cached["total_duration"], &total); err != nil || total <= 0 {
		t.Errorf("fully cached response %s: total_duration %q, want the time of the lookup", out, cached["total_duration"])
	}
}

// TestEmbedUsageOfBatchSplit checks the counts of responses that contain
// each stored batch whole or not at all, for which the split counts add up
// to upstream's.
func TestEmbedUsageOfBatchSplit(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	up := &embedUpstream{}
	tc.embed(t, up, "/api/embed", `{"model":"tiny","input":["aaaa","b","cc"]}`)
	tc.embed(t, up, "/api/embed", `{"model":"tiny","input":["ddd"]}`)
	for _, body := range []string{
		`{"model":"tiny","input":["cc","ddd","aaaa","b"]}`,
		`{"model":"tiny","input":["b","cc","aaaa"]}`,
	} {
		var req struct{ Input []string }
		_ = json.Unmarshal([]byte(body), &req)
		out, res := tc.embed(t, up, "/api/embed", body)
		if res != ResultHitL1 {
			t.Errorf("%s: %s, want hit-l1", body, res)
		}
		var got api.EmbedResponse
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatal(err)
		}
		if want := tokensOf(req.Input...); got.PromptEvalCount != want {
			t.Errorf("%s: prompt_eval_count %d, want %d", body, got.PromptEvalCount, want)
		}
	}

	out, _ := tc.embed(t, up, "/v1/embeddings", `{"model":"tiny","input":["ddd","e"]}`)
	var v1 openai.EmbeddingResponse
	if err := json.Unmarshal(out, &v1); err != nil {
		t.Fatal(err)
	}
	want := tokensOf("ddd", "e")
	if v1.Usage.PromptTokens != want {
		t.Errorf("/v1 partial hit: prompt_tokens %d, want %d", v1.Usage.PromptTokens, want)
	}
	if v1.Usage.TotalTokens != want {
		t.Errorf("/v1 partial hit: total_tokens %d, want %d", v1.Usage.TotalTokens, want)
	}
}

func TestSplitTokens(t *testing.T) {
	for _, tc := range []struct {
		total   int64
		weights []int64
		want    []int64
	}{
		{7, []int64{3}, []int64{7}},
		{0, []int64{3, 4}, []int64{0, 0}},
		{-1, []int64{3, 4}, []int64{0, 0}},
		{10, []int64{1, 1}, []int64{5, 5}},
		{9, []int64{1, 2}, []int64{3, 6}},
		{2, []int64{100, 1}, []int64{1, 1}},
		{1, []int64{1, 100}, []int64{0, 1}},
		{5, []int64{0, 0, 0}, []int64{2, 2, 1}},
		{100, []int64{3, 5, 7}, []int64{21, 33, 46}},
	} {
		got := splitTokens(tc.total, tc.weights)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("splitTokens(%d, %v) = %v, want %v", tc.total, tc.weights, got, tc.want)
		}
	}
}

func TestEmbedDuplicateInputsSentOnce(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	up := &embedUpstream{}
	out, _ := tc.embed(t, up, "/api/embed", `{"model":"tiny","input":["x","y","x"]}`)
	if sent := up.received(); sent[0] != `{"model":"tiny","input":["x","y"]}` {
		t.Errorf("upstream body = %s, want each text once", sent[0])
	}
	var got api.EmbedResponse
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Embeddings) != 3 || fmt.Sprint(got.Embeddings[2]) != fmt.Sprint(vectorOf("x")) {
		t.Errorf("embeddings = %v, want three with the third that of x", got.Embeddings)
	}
}

func TestEmbedWholeMissSendsBodyUnchanged(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	body := `{"model":"tiny","input":"hello",  "options":{"num_ctx":64}}`
	p := tc.plan(t, "/api/embed", body)
	b := tc.LookupEmbeddings(context.Background(), p)
	if b.Partial() || b.Missing() != 1 {
		t.Errorf("Partial %v, Missing %d, want false, 1", b.Partial(), b.Missing())
	}
	if string(b.UpstreamBody()) != body {
		t.Errorf("UpstreamBody = %s, want the request body", b.UpstreamBody())
	}
}

func TestEmbedCountMismatchNotStored(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	ctx := context.Background()
	p := tc.plan(t, "/api/embed", `{"model":"tiny","input":["a","b"]}`)
	b := tc.LookupEmbeddings(ctx, p)
	_, err := tc.StoreEmbeddings(ctx, b, []byte(`{"model":"tiny","embeddings":[[1,2]]}`))
	if !errors.Is(err, ErrInvalidResponse) {
		t.Fatalf("StoreEmbeddings with 1 vector for 2 inputs: %v, want ErrInvalidResponse", err)
	}
	for _, bad := range []string{`{"error":"boom"}`, `{"embeddings":[[]]}`, `{"embeddings":[["x"]]}`, `not json`} {
		if _, err := tc.StoreEmbeddings(ctx, tc.LookupEmbeddings(ctx, tc.plan(t, "/api/embed",
			`{"model":"tiny","input":"a"}`)), []byte(bad)); !errors.Is(err, ErrInvalidResponse) {
			t.Errorf("StoreEmbeddings(%s): %v, want ErrInvalidResponse", bad, err)
		}
	}
	if res := tc.LookupEmbeddings(ctx, p).Result(); res != ResultMiss {
		t.Errorf("lookup after rejected responses: %s, want miss", res)
	}
}

func TestEmbedSharedBetweenAPIAndV1(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	up := &embedUpstream{}
	tc.embed(t, up, "/api/embed", `{"model":"tiny","input":["a","b"]}`)
	out, res := tc.embed(t, up, "/v1/embeddings", `{"model":"tiny","input":["b","a"],"encoding_format":"float"}`)
	if res != ResultHitL1 {
		t.Errorf("/v1 lookup of vectors stored through /api/embed: %s, want hit-l1", res)
	}
	var got openai.EmbeddingResponse
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("response %s: %v", out, err)
	}
	if got.Object != "list" || len(got.Data) != 2 || got.Data[1].Index != 1 ||
		fmt.Sprint(got.Data[0].Embedding) != fmt.Sprint(vectorOf("b")) {
		t.Errorf("response = %s, want a list of b's then a's vector", out)
	}

	// Options change the vectors of /api/embed, so they are in the key.
	if _, res := tc.embed(t, up, "/api/embed", `{"model":"tiny","input":"a","options":{"num_ctx":8}}`); res != ResultMiss {
		t.Errorf("lookup with other options: %s, want miss", res)
	}
	if _, res := tc.embed(t, up, "/api/embed", `{"model":"tiny","input":"a","truncate":false}`); res != ResultMiss {
		t.Errorf("lookup with truncate false: %s, want miss", res)
	}
}

func TestEmbedLegacyRoute(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	up := &embedUpstream{}
	first, _ := tc.embed(t, up, "/api/embeddings", `{"model":"tiny","prompt":"hello"}`)
	second, res := tc.embed(t, up, "/api/embeddings", `{"model":"tiny","prompt":"hello","keep_alive":"1m"}`)
	if res != ResultHitL1 {
		t.Errorf("second lookup: %s, want hit-l1", res)
	}
	if !bytes.Equal(first, second) {
		t.Errorf("cached response %s differs from %s", second, first)
	}
	if _, res := tc.embed(t, up, "/api/embed", `{"model":"tiny","input":"hello"}`); res != ResultMiss {
		t.Errorf("/api/embed after /api/embeddings: %s, want miss: the legacy vectors are not normalized", res)
	}
}

func TestEmbedL2AcrossInstances(t *testing.T) {
	srv := testredis.Start(t)
	a := newTestCache(t, testOptions{redis: srv})
	b := newTestCache(t, testOptions{redis: srv})
	up := &embedUpstream{}
	a.embed(t, up, "/api/embed", `{"model":"tiny","input":["a","b"]}`)
	b.embed(t, up, "/api/embed", `{"model":"tiny","input":["c"]}`)
	if _, res := b.embed(t, up, "/api/embed", `{"model":"tiny","input":["a","c"]}`); res != ResultHitL2 {
		t.Errorf("batch cached in L2 and L1: %s, want hit-l2", res)
	}
	if _, res := b.embed(t, up, "/api/embed", `{"model":"tiny","input":["a","c"]}`); res != ResultHitL1 {
		t.Errorf("same batch again: %s, want hit-l1", res)
	}
	if n := len(up.received()); n != 2 {
		t.Errorf("upstream requests = %d, want 2", n)
	}
	out, _ := b.embed(t, up, "/api/embed", `{"model":"tiny","input":["a","b","c"]}`)
	var got api.EmbedResponse
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if want := tokensOf("a", "b", "c"); got.PromptEvalCount != want {
		t.Errorf("prompt_eval_count from L2 %d, want %d", got.PromptEvalCount, want)
	}
}

func TestEmbedVectorOfOldVersionIsMiss(t *testing.T) {
	srv := testredis.Start(t)
	tc := newTestCache(t, testOptions{redis: srv})
	ctx := context.Background()
	p := tc.plan(t, "/api/embed", `{"model":"tiny","input":["a"]}`)
	// Version 1 vector records have no token count.
	old := `{"v":1,"model":"tiny","vector":[1,97]}`
	if err := tc.l2.rdb.Set(ctx, tc.l2.entryKey(p.embed.items[0].key), old, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if res := tc.LookupEmbeddings(ctx, p).Result(); res != ResultMiss {
		t.Errorf("lookup of a version 1 vector record: %s, want miss", res)
	}
}

// TestEmbedRealClients drives the cache through the Ollama and OpenAI Go
// clients, so that the rendered responses are checked by their decoders.
func TestEmbedRealClients(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	up := &embedUpstream{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		out, res, err := tc.serveEmbed(up, r.URL.Path, string(body))
		if err != nil {
			t.Errorf("serve %s: %v", r.URL.Path, err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("X-LLMProxy-Cache", string(res))
		_, _ = w.Write(out)
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)

	client := api.NewClient(u, http.DefaultClient)
	resp, err := client.Embed(context.Background(), &api.EmbedRequest{Model: "tiny", Input: []string{"a", "b"}})
	if err != nil {
		t.Fatalf("Embed: %v", err)
	}
	if len(resp.Embeddings) != 2 {
		t.Errorf("embeddings = %d, want 2", len(resp.Embeddings))
	}
	legacy, err := client.Embeddings(context.Background(), &api.EmbeddingRequest{Model: "tiny", Prompt: "a"})
	if err != nil || len(legacy.Embedding) != 2 {
		t.Errorf("Embeddings: %v, %v", legacy, err)
	}

	cfg := openai.DefaultConfig("unused")
	cfg.BaseURL = srv.URL + "/v1"
	oc := openai.NewClientWithConfig(cfg)
	v1, err := oc.CreateEmbeddings(context.Background(), openai.EmbeddingRequestStrings{
		Model: "tiny", Input: []string{"b", "a"}, EncodingFormat: openai.EmbeddingEncodingFormatFloat,
	})
	if err != nil {
		t.Fatalf("CreateEmbeddings: %v", err)
	}
	if len(v1.Data) != 2 || fmt.Sprint(v1.Data[0].Embedding) != fmt.Sprint(resp.Embeddings[1]) {
		t.Errorf("v1 data = %+v, want b's vector first", v1.Data)
	}
	if n := len(up.received()); n != 2 {
		t.Errorf("upstream requests = %d, want 2: /v1 is served from /api/embed's vectors", n)
	}
	if !strings.Contains(up.received()[1], `"prompt":"a"`) {
		t.Errorf("second upstream request %s, want the legacy prompt", up.received()[1])
	}
}
